"""Every fenced python / bash / console block of README.md and docs/**/*.md runs as written.

One test per block (``README.md:38``, ``docs/keras.md:42``). The rules a page uses to adapt a
block (``<!-- doctest: ... -->`` comments: set-up preludes, substitutions, continue, slow,
xfail, skip) are in docs/testing.md, "Doc snippets"; the parser and the named preludes are in
doc_snippets.py, the workspace and the runners in doc_runner.py. The blocks are split over this
file and test_doc_snippets_b.py (see ``doc_runner.SHARD_OF``).
"""

from __future__ import annotations

import doc_runner as R
import doc_snippets as S
import pytest


def test_docs_have_blocks():
    """The extractor finds the pages and their blocks (a broken parser would pass vacuously),
    and every page belongs to one of the two test files."""
    pages = {b.path for b in R.BLOCKS}
    assert "README.md" in pages and "docs/training.md" in pages, pages
    assert len(R.BLOCKS) > 30
    assert {R.shard_of(p) for p in pages} == set(range(R.SHARDS))


@pytest.mark.parametrize("block", list(R.params(0)))
def test_doc_snippet(block: S.Block, doc_env: R.DocEnv):
    R.run_block(block, doc_env)
