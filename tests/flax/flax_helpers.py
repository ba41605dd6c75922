"""Shared helpers for the Flax backend tests: tiny odd configs, large weights, compiled calls.

The numpy reference forward is :func:`gpt2_core.reference.lm_logits` (framework-free, every
config flag), used alongside the golden transformers outputs of tests/golden.py.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import gpt2_flax as gf  # noqa: E402
from gpt2_core.init import random_state_dict, tiny_config  # noqa: E402

FLAGS = dict(
    scale_attn_by_inverse_layer_idx=True,
    reorder_and_upcast_attn=True,
    activation_function="relu",
    layer_norm_epsilon=1e-3,
    n_inner=50,
)


def build(head: str, seed: int = 0, **overrides):
    """(config, canonical state dict, model) for ``head`` with std-0.3 weights."""
    cfg = tiny_config(**overrides)
    sd = random_state_dict(cfg, head, seed=seed, std=0.3)
    return cfg, sd, gf.MODEL_CLASSES[head].from_state_dict(cfg, sd)


def maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------- compiled calls
def _call(model, arrays, static):
    return model(**arrays, **dict(static))


_jitted_call = None


def jrun(model, **kwargs):
    """``model(**kwargs)`` through ``nnx.jit`` (one XLA compile instead of one per primitive,
    which is what keeps these tests fast); non-array arguments are static."""
    global _jitted_call
    from flax import nnx

    if _jitted_call is None:
        _jitted_call = nnx.jit(_call, static_argnums=2)
    arrays, static = {}, []
    for k, v in kwargs.items():
        if v is None or isinstance(v, bool | int | float | str):
            static.append((k, v))
        else:
            arrays[k] = v
    return _jitted_call(model, arrays, tuple(sorted(static)))
