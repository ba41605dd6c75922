"""Canonical state dict <-> Flax NNX variables: a leaf rename plus a declared transpose list.

The canonical dict (see :mod:`gpt2_core.naming`) has transformers' PyTorch names and layouts.
Our NNX module paths are the same names, so the mapping is:

* path: ``('transformer', 'h', 0, 'attn', 'c_attn', 'kernel')`` <-> ``transformer.h.0.attn.c_attn.weight``
  (list indices become the dotted integers);
* leaf: ``kernel`` / ``scale`` (LayerNorm) / ``embedding`` (Embed) <-> ``weight``; ``bias`` <-> ``bias``;
* transposes: **only** the ``nn.Linear`` heads listed in :data:`TRANSPOSED`, which is
  :data:`gpt2_core.naming.LINEAR_HEAD_WEIGHTS` (PyTorch Linear is (out, in), ``nnx.Linear.kernel``
  is (in, out)).

GPT-2's Conv1D weights (``c_attn``, ``c_proj``, ``c_fc``, ``q_attn``) are **not** transposed:
Conv1D stores (in, out), which is ``nnx.Linear``'s kernel layout already.

The Flax (out, in) trap: transformers' ``FlaxConv1D`` stores its kernel (out, in) and
transposes at call time, and its PyTorch->Flax converter transposes every ``weight`` named
``kernel`` -- which only lands right because of that (out, in) storage. Copying that rule into a
Flax model that stores Conv1D kernels (in, out), as this one does, silently transposes c_attn /
c_proj / c_fc (square c_proj matrices even load without a shape error). Reading
``flax_model.msgpack`` files therefore goes through ``gpt2_core.formats.flax_msgpack``, which
undoes transformers' layout into the canonical one; nothing here special-cases it.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import lowmem, naming
from gpt2_core.init import missing_weights

logger = logging.getLogger(__name__)

#: leaf name of an NNX variable -> canonical leaf
LEAF_TO_CANONICAL = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
#: canonical keys whose NNX kernel (in, out) is the transpose of nn.Linear's (out, in)
TRANSPOSED = naming.LINEAR_HEAD_WEIGHTS


def canonical_key(path: tuple) -> str:
    """NNX variable path -> canonical key (``('h', 0, 'ln_1', 'scale')`` -> ``h.0.ln_1.weight``)."""
    *modules, leaf = (str(p) for p in path)
    if leaf not in LEAF_TO_CANONICAL:
        raise KeyError(f"no canonical name for variable {'/'.join(map(str, path))}")
    return ".".join([*modules, LEAF_TO_CANONICAL[leaf]])


def is_transposed(key: str) -> bool:
    """True when ``key``'s NNX variable is the transpose of the canonical array."""
    return key in TRANSPOSED


def _from_canonical_array(key: str, value: Any, shape: tuple, dtype: Any) -> jax.Array:
    arr = np.asarray(value)
    if is_transposed(key):
        arr = arr.T
    if tuple(arr.shape) != tuple(shape):
        raise naming.CheckpointError(f"{key}: expected shape {tuple(shape)}, got {arr.shape}")
    if lowmem.mapped_buffer(arr) is None:
        return jnp.asarray(arr, dtype=dtype)
    # from a memory map (from_pretrained): an aligned copy made block by block, which
    # device_put adopts on CPU, so the file's pages and the array never coexist in full
    host = lowmem.owned_copy(arr, np.dtype(dtype))
    return jax.device_put(host).block_until_ready()


def _params(model: nnx.Module) -> list[tuple[tuple, nnx.Variable]]:
    return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def variable_map(model: nnx.Module) -> dict[str, nnx.Variable]:
    """canonical key -> NNX parameter (tied keys left out: the tied head reads ``wte``)."""
    return {canonical_key(path): var for path, var in _params(model)}


def _check_key_set(model: nnx.Module, vmap: dict[str, Any]) -> None:
    head = naming.head_of_model(model)
    expected = set(naming.expected_shapes(model.config, head))
    expected -= set(naming.tied_keys(model.config, head))
    if set(vmap) != expected:
        raise AssertionError(
            f"{type(model).__name__}: variables and canonical schema differ: "
            f"extra {sorted(set(vmap) - expected)}, missing {sorted(expected - set(vmap))}"
        )


def _to_numpy(var: nnx.Variable) -> np.ndarray:
    return np.asarray(jax.device_get(var.get_value()))


def to_canonical(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's weights as a canonical ``dict[str, np.ndarray]`` (tied head included), in
    :func:`gpt2_core.naming.expected_shapes` order."""
    head = naming.head_of_model(model)
    vmap = variable_map(model)
    _check_key_set(model, vmap)
    shapes = naming.expected_shapes(model.config, head)
    ties = naming.tied_keys(model.config, head)
    out: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if key in ties:
            continue
        arr = _to_numpy(vmap[key])
        if key in TRANSPOSED:
            arr = np.ascontiguousarray(arr.T)
        if arr.shape != shape:
            raise AssertionError(f"{key}: shape {arr.shape}, canonical {shape}")
        out[key] = arr
    for tied, src in ties.items():
        out[tied] = out[src]
    return {k: out[k] for k in shapes}


def _normalize(model: nnx.Module, state_dict: dict, strict: bool) -> tuple[dict, Any]:
    sd, report = naming.normalize_state_dict(
        state_dict, model.config, naming.head_of_model(model), source=type(model).__name__
    )
    if strict:
        report.raise_if_error()
    elif not report.ok:
        logger.warning("loading a state dict: %s", report.summary())
    return sd, report


def materialize(
    abstract: nnx.Module, state_dict: dict, *, strict: bool = True, seed: int = 0
) -> nnx.Module:
    """Turn an abstract model (from ``nnx.eval_shape``) into a concrete one, filled from a
    canonical state dict; no random initialisation pass over the weights.

    Head weights missing from a base-model checkpoint (and, with ``strict=False``, any missing
    weight) get transformers' init from :func:`gpt2_core.init.missing_weights` (seeded by
    ``seed``: the same values as the other backends); dropout RNG streams are seeded from
    ``seed`` too.
    """
    sd, _ = _normalize(abstract, state_dict, strict)
    head = naming.head_of_model(abstract)
    absent = [k for k in naming.expected_shapes(abstract.config, head) if k not in sd]
    new = missing_weights(abstract.config, head, absent, seed=seed)
    graphdef, state = nnx.split(abstract)
    base_key = jax.random.key(seed)
    new_pairs = []
    for i, (path, var) in enumerate(nnx.to_flat_state(state)):
        abstract_value = var.get_value()
        shape, dtype = abstract_value.shape, abstract_value.dtype
        if isinstance(var, nnx.Param):
            key = canonical_key(path)
            value = _from_canonical_array(key, sd[key] if key in sd else new[key], shape, dtype)
        elif isinstance(var, nnx.RngKey):
            value = jax.random.fold_in(base_key, 1_000_003 + i)
        elif isinstance(var, nnx.RngCount):
            value = jnp.zeros(shape, dtype)
        else:
            raise TypeError(f"cannot materialise {type(var).__name__} at {path}")
        new_pairs.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(new_pairs))


def load_canonical(
    model: nnx.Module,
    state_dict: dict,
    *,
    strict: bool = True,
    init_missing: bool = False,
    seed: int = 0,
) -> naming.LoadReport:
    """Copy a canonical state dict into ``model``'s parameters in place.

    Args:
        model: any of the six model classes.
        state_dict: canonical keys, with or without the ``transformer.`` prefix; legacy buffers
            are dropped and tied keys filled (:func:`gpt2_core.naming.normalize_state_dict`).
        strict: raise :class:`gpt2_core.naming.CheckpointError` on missing, unexpected or
            mis-shaped keys; False logs them and leaves those parameters as they are.
        init_missing: give head weights absent from a base-model checkpoint transformers' init
            (:func:`gpt2_core.init.missing_weights`, seeded by ``seed``: the same values in every
            backend); without it they keep their current values.
        seed: seeds ``init_missing``.

    Returns:
        the :class:`gpt2_core.naming.LoadReport`.
    """
    sd, report = _normalize(model, state_dict, strict)
    head = naming.head_of_model(model)
    _check_key_set(model, variable_map(model))
    new = (
        missing_weights(model.config, head, report.newly_initialized, seed=seed)
        if init_missing
        else {}
    )
    updated = []
    for path, var in _params(model):
        key = canonical_key(path)
        arr = sd.get(key, new.get(key))
        if arr is not None:
            current = var.get_value()
            var = var.replace(_from_canonical_array(key, arr, current.shape, current.dtype))
        updated.append((path, var))
    nnx.update(model, nnx.from_flat_state(updated))
    return report
