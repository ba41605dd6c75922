"""Canonical state dict <-> Flax NNX variables: a leaf rename plus a declared transpose list.

The canonical dict (see :mod:`gpt2_core.naming`) has transformers' PyTorch names and layouts.
Our NNX module paths are the same names, so the mapping is:

* path: ``('transformer', 'h', 0, 'attn', 'c_attn', 'kernel')`` <-> ``transformer.h.0.attn.c_attn.weight``
  (list indices become the dotted integers);
* leaf: ``kernel`` / ``scale`` (LayerNorm) / ``embedding`` (Embed) <-> ``weight``; ``bias`` <-> ``bias``;
* transposes: **only** the ``nn.Linear`` heads listed in :data:`TRANSPOSED` (PyTorch Linear is
  (out, in), ``nnx.Linear.kernel`` is (in, out)).

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

logger = logging.getLogger(__name__)

#: leaf name of an NNX variable -> canonical leaf
LEAF_TO_CANONICAL = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
#: module paths (without ``transformer.``) whose kernels are stored transposed in the canonical dict
TRANSPOSED = ("lm_head", "score", "classifier", "qa_outputs", "multiple_choice_head.summary")


def canonical_key(path: tuple) -> str:
    """NNX variable path -> canonical key (``('h', 0, 'ln_1', 'scale')`` -> ``h.0.ln_1.weight``)."""
    *modules, leaf = (str(p) for p in path)
    if leaf not in LEAF_TO_CANONICAL:
        raise KeyError(f"no canonical name for variable {'/'.join(map(str, path))}")
    return ".".join([*modules, LEAF_TO_CANONICAL[leaf]])


def is_transposed(key: str) -> bool:
    """True when the canonical ``key`` is an (out, in) Linear-head weight."""
    module, leaf = key.rsplit(".", 1)
    return leaf == "weight" and naming.strip_base_prefix(module) in TRANSPOSED


def _to_canonical_array(key: str, value: Any) -> np.ndarray:
    arr = np.asarray(jax.device_get(value))
    return np.ascontiguousarray(arr.T) if is_transposed(key) else arr


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


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's canonical state dict (numpy; tied ``lm_head.weight`` included), in
    ``gpt2_core.naming.expected_shapes`` order."""
    config, head = model.config, model.head
    found = {}
    for path, var in _params(model):
        key = canonical_key(path)
        found[key] = _to_canonical_array(key, var.get_value())
    for tied, src in naming.tied_keys(config, head).items():
        found[tied] = found[src]
    order = list(naming.expected_shapes(config, head))
    if set(order) != set(found):
        raise AssertionError(f"variables do not match the canonical schema: "
                             f"{sorted(set(order) ^ set(found))}")
    return {k: found[k] for k in order}


def _normalize(model: nnx.Module, state_dict: dict, strict: bool) -> tuple[dict, Any]:
    sd, report = naming.normalize_state_dict(state_dict, model.config, model.head)
    if not report.ok:
        if strict:
            report.raise_if_error()
        logger.warning("loading state dict: %s", report.summary())
    return sd, report


def _new_value(key: str, shape: tuple, dtype: Any, std: float, rng: jax.Array) -> jax.Array:
    """Init for a head weight absent from a base-model checkpoint (transformers' init)."""
    if key.endswith(".bias"):
        return jnp.zeros(shape, dtype)
    return (jax.random.normal(rng, shape, jnp.float32) * std).astype(dtype)


def materialize(abstract: nnx.Module, state_dict: dict, *, seed: int = 0,
                strict: bool = True) -> nnx.Module:
    """Turn an abstract model (from ``nnx.eval_shape``) into a concrete one, filled from a
    canonical state dict; no random initialisation pass over the weights.

    Head weights missing from a base-model checkpoint are initialised (and logged by the core
    loader); dropout RNG streams are seeded from ``seed``.
    """
    sd, report = _normalize(abstract, state_dict, strict)
    graphdef, state = nnx.split(abstract)
    base_key = jax.random.key(seed)
    new_pairs = []
    for i, (path, var) in enumerate(nnx.to_flat_state(state)):
        abstract_value = var.get_value()
        shape, dtype = abstract_value.shape, abstract_value.dtype
        if isinstance(var, nnx.Param):
            key = canonical_key(path)
            if key in sd:
                value = _from_canonical_array(key, sd[key], shape, dtype)
            elif key in report.newly_initialized or not strict:
                value = _new_value(key, shape, dtype, abstract.config.initializer_range,
                                   jax.random.fold_in(base_key, i))
            else:  # pragma: no cover - normalize_state_dict reports it first
                raise naming.CheckpointError(f"missing weight {key}")
        elif isinstance(var, nnx.RngKey):
            value = jax.random.fold_in(base_key, 1_000_003 + i)
        elif isinstance(var, nnx.RngCount):
            value = jnp.zeros(shape, dtype)
        else:
            raise TypeError(f"cannot materialise {type(var).__name__} at {path}")
        new_pairs.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(new_pairs))


def load_into(model: nnx.Module, state_dict: dict, *, strict: bool = True):
    """Copy a canonical state dict into ``model``'s parameters in place; returns the report."""
    sd, report = _normalize(model, state_dict, strict)
    updated = []
    for path, var in _params(model):
        key = canonical_key(path)
        if key in sd:
            current = var.get_value()
            var = var.replace(_from_canonical_array(key, sd[key], current.shape, current.dtype))
        updated.append((path, var))
    nnx.update(model, nnx.from_flat_state(updated))
    return report
