"""``python -m conversion`` is the ``gpt2`` command."""

import sys

from conversion.cli import main

sys.exit(main())
