"""Test-session set-up shared by every backend's tests.

Environment variables must be set before TensorFlow or JAX is first imported:
* 4 simulated CPU devices for JAX sharding tests (XLA_FLAGS);
* Keras on the TensorFlow backend; quiet TF logs.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# tests import shared helpers (tests/golden.py, tests/harness.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))
