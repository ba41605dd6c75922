"""Flax test fixtures (helpers live in flax_helpers.py)."""

import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")


@pytest.fixture(scope="module")
def lm():
    """(config, state dict, model): a tiny LM with pad id 0, shared by a test module."""
    from flax_helpers import build

    return build("lm", seed=1, pad_token_id=0)
