"""Bad input raises a clear error before anything is computed (JAX gathers clamp silently)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import gpt2_flax as gf
from gpt2_core.naming import CheckpointError


def test_missing_inputs_raise(lm):
    # the checks shared by every backend are in tests/test_backends.py
    _, _, model = lm
    with pytest.raises(ValueError, match="either input_ids or inputs_embeds"):
        model()


def test_invalid_ids_under_jit_are_nan_or_raise_when_checked(lm):
    _, _, model = lm
    fwd = jax.jit(lambda ids: model(ids).logits)
    out = fwd(jnp.array([[1, 400]]))  # traced ids: the embedding row is NaN, never clamped
    assert np.isnan(np.asarray(out[0, 1])).all()
    with pytest.raises(checkify.JaxRuntimeError, match="input_ids out of range"):
        gf.checked(fwd)(jnp.array([[1, 400]]))
    assert np.isfinite(np.asarray(gf.checked(fwd)(jnp.array([[1, 2]])))).all()


def test_generate_rejects_bad_requests(lm):
    _, _, model = lm
    with pytest.raises(ValueError, match="outside"):
        model.generate(np.array([[1, 999]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        model.generate(np.ones((1, 30), np.int32), max_new_tokens=5)
    with pytest.raises(ValueError, match="streamer"):
        model.generate(np.ones((2, 3), np.int32), max_new_tokens=2, streamer=object())
    with pytest.raises(TypeError, match="unknown generation argument"):
        model.generate(np.ones((1, 3), np.int32), max_new_token=2)


def test_mismatched_checkpoint_names_the_keys(lm):
    cfg, sd, _ = lm
    bad = dict(sd)
    bad["transformer.h.0.attn.c_attn.weight"] = np.zeros((36, 36), np.float32)
    with pytest.raises(CheckpointError, match=r"h\.0\.attn\.c_attn\.weight"):
        gf.GPT2LMHeadModel.from_state_dict(cfg, bad)
    missing = {k: v for k, v in sd.items() if "ln_f" not in k}
    with pytest.raises(CheckpointError, match="ln_f"):
        gf.GPT2LMHeadModel.from_state_dict(cfg, missing)
