"""Seeded canonical state dicts in numpy: the same weights for every backend.

Used by the demo (a seeded GPT-2 checkpoint) and by cross-framework tests, where each backend
must receive bit-identical weights. Backends also have their own native initialisers for
training; this one reproduces transformers' ``_init_weights`` when ``std`` is None.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config


def random_state_dict(
    config: GPT2Config,
    head: str = "lm",
    *,
    seed: int = 0,
    std: float | None = None,
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """A canonical state dict for ``head`` drawn from a seeded generator.

    With ``std=None`` it follows transformers' init: weights N(0, initializer_range), every
    ``c_proj.weight`` N(0, initializer_range / sqrt(2 * n_layer)), biases 0, LayerNorm 1 / 0.
    With a ``std`` (tests use 0.2-0.5) matrices get N(0, std) and biases / LayerNorms are
    perturbed too, so that attention is far from uniform and layout bugs cannot hide.
    Tied keys share one array.

    Example:
        >>> cfg = GPT2Config(n_layer=2, n_embd=36, n_head=3, vocab_size=257, n_positions=32)
        >>> sd = random_state_dict(cfg, "lm", seed=1, std=0.3)
        >>> sd["transformer.h.0.attn.c_attn.weight"].shape
        (36, 108)
    """
    head = naming.head_of(head)
    rng = np.random.default_rng(seed)
    ties = naming.tied_keys(config, head)
    out: dict[str, np.ndarray] = {}
    init = config.initializer_range
    proj_std = init / math.sqrt(2 * config.n_layer)
    for key, shape in naming.expected_shapes(config, head).items():
        if key in ties:
            continue
        leaf = key.rsplit(".", 1)[-1]
        is_ln = ".ln_" in f".{key}" and leaf in ("weight", "bias")
        if std is None:
            if is_ln:
                arr = np.ones(shape) if leaf == "weight" else np.zeros(shape)
            elif leaf == "bias":
                arr = np.zeros(shape)
            else:
                s = proj_std if key.endswith("c_proj.weight") else init
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(s)
        else:
            if is_ln and leaf == "weight":
                arr = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            elif leaf == "bias":
                arr = 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        out[key] = np.asarray(arr, dtype=dtype)
    for tied, src in ties.items():
        out[tied] = out[src]
    return out


def missing_weights(
    config: GPT2Config, head: str, keys: list[str] | tuple[str, ...], *, seed: int = 0
) -> dict[str, np.ndarray]:
    """transformers' init for weights a checkpoint lacks (a new head), in canonical layout:
    biases 0, LayerNorm weights 1, other weights N(0, initializer_range), float32.

    Every backend initialises missing weights through this function, so the same ``seed``
    gives the same new head in torch, tf and flax. Each key draws from its own generator
    (seeded by ``seed`` and the key's name), so a key's values do not depend on which other
    keys are missing.

    Example:
        >>> cfg = GPT2Config(n_layer=2, n_embd=36, n_head=3, vocab_size=257, num_labels=4)
        >>> new = missing_weights(cfg, "sequence_classification", ["score.weight"], seed=0)
        >>> new["score.weight"].shape
        (4, 36)
    """
    shapes = naming.expected_shapes(config, head)
    out: dict[str, np.ndarray] = {}
    for key in keys:
        shape, leaf = shapes[key], key.rsplit(".", 1)[-1]
        if leaf == "bias":
            out[key] = np.zeros(shape, np.float32)
        elif ".ln_" in f".{key}":
            out[key] = np.ones(shape, np.float32)
        else:
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            out[key] = rng.standard_normal(shape, dtype=np.float32) * np.float32(
                config.initializer_range
            )
    return out


def tiny_config(**overrides) -> GPT2Config:
    """The odd-sized test config: 2 layers, n_embd 36, 3 heads, vocab 257, 32 positions."""
    base = dict(
        n_layer=2,
        n_embd=36,
        n_head=3,
        vocab_size=257,
        n_positions=32,
        bos_token_id=256,
        eos_token_id=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    base.update(overrides)
    return GPT2Config(**base)
