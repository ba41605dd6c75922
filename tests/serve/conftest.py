"""Fixtures of the ``gpt2 serve`` tests: a tiny checkpoint with GPT-2's vocabulary and tokenizer
(helpers live in serve_helpers.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A seeded checkpoint directory (safetensors + GPT-2's tokenizer files)."""
    from serve_helpers import CONFIG

    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config
    from gpt2_core.init import random_state_dict
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    d = tmp_path_factory.mktemp("serve") / "tiny-gpt2"
    cfg = GPT2Config(**CONFIG)
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=3, std=0.3), cfg, d, "lm")
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(d)
    return d
