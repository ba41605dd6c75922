"""The doc-snippet workspace: built once per test module (each module runs on one xdist worker)."""

import pytest
from doc_runner import DocEnv


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory):
    env = DocEnv(tmp_path_factory.mktemp("doc_snippets"))
    yield env
    env.close()
