"""A plain numpy GPT-2 forward pass: a framework-free oracle for the demo and sanity checks.

Not a backend (no cache, no heads but the LM, no dropout): ~60 lines that follow transformers'
eager path literally, so the demo can show logits before any framework is installed and tests
can check a backend against something that shares no code with it.

Shape legend: B = batch, T = time, C = channels (n_embd), H = heads, D = head_dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gpt2_core import naming
from gpt2_core.activations import ACT_FNS
from gpt2_core.config import GPT2Config


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def lm_logits(
    state_dict: Mapping[str, np.ndarray],
    config: GPT2Config,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
) -> np.ndarray:
    """LM logits (B, T, V) in float64 for a canonical LM state dict (any prefix convention)."""
    sd, report = naming.normalize_state_dict(state_dict, config, "lm", allow_new_head=False)
    report.raise_if_error()
    p = {naming.strip_base_prefix(k): np.asarray(v, dtype=np.float64) for k, v in sd.items()}
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    B, T = ids.shape
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(
            f"token ids must be in [0, {config.vocab_size}), got {ids.min()}..{ids.max()}"
        )
    if config.n_positions < T:
        raise ValueError(f"sequence length {T} exceeds n_positions {config.n_positions}")
    pos = np.arange(T)[None] if position_ids is None else np.asarray(position_ids)
    act = ACT_FNS[config.activation_function]
    H, D, eps = config.n_head, config.head_dim, config.layer_norm_epsilon
    x = p["wte.weight"][ids] + p["wpe.weight"][pos]  # (B, T, C)
    neg = np.finfo(np.float64).min
    allowed = np.tril(np.ones((T, T), bool))[None, None]  # (1, 1, T, T) causal
    if attention_mask is not None:
        allowed = allowed & np.asarray(attention_mask, bool).reshape(B, 1, 1, T)
    bias = np.where(allowed, 0.0, neg)  # fully masked rows stay finite: uniform, not NaN
    for i in range(config.n_layer):
        h = f"h.{i}."
        a = _layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        qkv = a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]  # (B, T, 3C)
        q, k, v = (t.reshape(B, T, H, D).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, -1))
        scale = 1.0 / math.sqrt(D) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= i + 1
        s = q @ k.transpose(0, 1, 3, 2) * scale + bias  # (B, H, T, T)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D)
        x = x + o @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"]
        m = _layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        m = act(m @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"])
        x = x + m @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"]
    x = _layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return x @ p["lm_head.weight"].T  # (B, T, V)


def greedy(
    state_dict: Mapping[str, np.ndarray],
    config: GPT2Config,
    input_ids: list[int],
    max_new_tokens: int,
) -> list[int]:
    """Greedy continuation (no cache: O(T^2), fine for a demo)."""
    ids = list(input_ids)
    for _ in range(max_new_tokens):
        ids.append(int(lm_logits(state_dict, config, np.array([ids]))[0, -1].argmax()))
    return ids
