"""Flax in train mode (dropout drawing keys) through every door docs/jax.md shows: the
functional ``nnx.split`` / ``nnx.merge`` + ``jax.jit`` step and ``gpt2_flax.checked`` (both
raised ``TraceContextError: Cannot mutate RngCount from a different trace level``)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import gpt2_flax  # noqa: E402
from gpt2_core.init import tiny_config  # noqa: E402

DROPOUT = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)


def loss_fn(model, batch):
    return model(input_ids=batch, labels=batch, use_cache=False).loss


def test_functional_split_merge_step_with_dropout():
    model = gpt2_flax.GPT2LMHeadModel(tiny_config(**DROPOUT), rngs=nnx.Rngs(0))
    model.train()
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 8)), jnp.int32)
    graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)

    @jax.jit
    def value_and_grad(params, rng_state, batch):
        def loss(p):
            m = nnx.merge(graphdef, p, rng_state, rest, copy=True)
            return loss_fn(m, batch), nnx.state(m, nnx.RngState)

        (value, rng_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, grads, rng_state

    v1, grads, rng_state = value_and_grad(params, rng_state, batch)
    v2, _, _ = value_and_grad(params, rng_state, batch)
    assert np.isfinite(float(v1)) and float(v1) != float(v2)  # new dropout masks each step
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_checked_works_in_train_mode_and_advances_the_rng():
    model = gpt2_flax.GPT2LMHeadModel(tiny_config(**DROPOUT), rngs=nnx.Rngs(0))
    model.train()
    fwd = gpt2_flax.checked(nnx.jit(lambda m, ids: m(input_ids=ids).logits))
    a, b = fwd(model, jnp.array([[1, 2, 3]])), fwd(model, jnp.array([[1, 2, 3]]))
    assert not np.allclose(np.asarray(a), np.asarray(b))  # the model's RNG state moved on
    with pytest.raises(Exception, match="input_ids out of range"):
        fwd(model, jnp.array([[1, 999999]]))
    model.eval()
    np.testing.assert_array_equal(
        np.asarray(fwd(model, jnp.array([[1, 2]]))), np.asarray(fwd(model, jnp.array([[1, 2]])))
    )
