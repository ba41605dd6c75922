"""Shared helpers for the Flax backend tests: tiny odd configs, large weights, a numpy reference.

The numpy reference (:func:`np_lm_logits`) is an independent, loop-free re-statement of GPT-2's
forward pass (transformers' eager semantics, every config flag) used until/alongside the golden
transformers outputs of tests/golden.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import gpt2_flax as gf  # noqa: E402
from gpt2_core.init import random_state_dict, tiny_config  # noqa: E402

FLAGS = dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
             activation_function="relu", layer_norm_epsilon=1e-3, n_inner=50)


def build(head: str, seed: int = 0, **overrides):
    """(config, canonical state dict, model) for ``head`` with std-0.3 weights."""
    cfg = tiny_config(**overrides)
    sd = random_state_dict(cfg, head, seed=seed, std=0.3)
    return cfg, sd, gf.MODEL_CLASSES[head].from_state_dict(cfg, sd)


# ---------------------------------------------------------------------------- numpy reference
_ACT = {
    "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
}


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_lm_logits(cfg, sd, ids, mask=None, position_ids=None):
    """Logits (B, T, V) of GPT2LMHeadModel in float64 numpy (valid rows only are meaningful)."""
    p = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    B, T = ids.shape
    H, D = cfg.n_head, cfg.head_dim
    pos = np.arange(T)[None] if position_ids is None else position_ids
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][pos]
    keep = np.tril(np.ones((T, T), bool))[None, None]
    if mask is not None:
        keep = keep & (mask[:, None, None, :] != 0)
    for i in range(cfg.n_layer):
        g = lambda n, i=i: p[f"transformer.h.{i}.{n}"]  # noqa: E731
        h = _ln(x, g("ln_1.weight"), g("ln_1.bias"), cfg.layer_norm_epsilon)
        qkv = h @ g("attn.c_attn.weight") + g("attn.c_attn.bias")
        q, k, v = (a.reshape(B, T, H, D).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1))
        s = q @ k.transpose(0, 1, 3, 2)
        if cfg.scale_attn_weights:
            s = s / math.sqrt(D)
        if cfg.scale_attn_by_inverse_layer_idx:
            s = s / (i + 1)
        s = np.where(keep, s, -1e30)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
        x = x + o @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        h = _ln(x, g("ln_2.weight"), g("ln_2.bias"), cfg.layer_norm_epsilon)
        h = _ACT[cfg.activation_function](h @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"))
        x = x + h @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    x = _ln(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], cfg.layer_norm_epsilon)
    return x @ p["lm_head.weight"].T


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
