"""The second half of the doc blocks (see test_doc_snippets.py and ``doc_runner.SHARD_OF``)."""

from __future__ import annotations

import doc_runner as R
import doc_snippets as S
import pytest


@pytest.mark.parametrize("block", list(R.params(1)))
def test_doc_snippet(block: S.Block, doc_env: R.DocEnv):
    R.run_block(block, doc_env)
