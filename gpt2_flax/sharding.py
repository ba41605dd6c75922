"""Sharding for the Flax GPT-2: a frozen config of PartitionSpecs and a helper to place a model.

The flow recommended by Flax 0.12 (``flax.nnx.spmd``): each parameter carries its
``out_sharding`` metadata (a tuple of mesh-axis names, one per dimension);
``nnx.get_partition_spec`` / ``nnx.get_named_sharding`` read it and ``jax.device_put`` places the
state; ``nnx.update`` writes it back. Under ``jit`` XLA's SPMD partitioner then propagates the
layout (batch on the ``data`` axis, weights as annotated) and inserts the collectives.

Presets (mesh axes ``"data"`` and ``"model"``):

* :meth:`ShardingConfig.data_parallel` -- weights replicated, batch split on ``data``.
* :meth:`ShardingConfig.tensor_parallel` -- Megatron-style: ``c_attn`` / ``c_fc`` split by
  columns (their output features), ``c_proj`` by rows, so each block needs one all-reduce per
  sub-layer; embeddings split on the embedding dim (or on vocab with ``shard_vocab=True``).
* :meth:`ShardingConfig.fsdp` -- every matrix split on its first dimension over ``data``
  (ZeRO-3 style; XLA all-gathers before use), batch split on ``data`` too.

Example:
    >>> mesh = jax.make_mesh((2, 2), ("data", "model"))
    >>> model = shard_model(model, mesh, ShardingConfig.tensor_parallel())
    >>> batch = shard_batch(ids, mesh, ShardingConfig.tensor_parallel())
    >>> logits = nnx.jit(lambda m, x: m(x).logits)(model, batch)
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

logger = logging.getLogger(__name__)

#: which ShardingConfig field applies to a parameter, by (module name, leaf)
_ROLES = {
    ("wte", "embedding"): "wte",
    ("wpe", "embedding"): "wpe",
    ("c_attn", "kernel"): "c_attn_kernel",
    ("q_attn", "kernel"): "c_attn_kernel",
    ("c_attn", "bias"): "c_attn_bias",
    ("q_attn", "bias"): "c_attn_bias",
    ("c_fc", "kernel"): "c_fc_kernel",
    ("c_fc", "bias"): "c_fc_bias",
    ("lm_head", "kernel"): "lm_head_kernel",
}


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """PartitionSpecs for GPT-2's parameters and batch; every field defaults to None
    (replicated / unsharded).

    Args:
        wte: (V, C) token embedding. wpe: (P, C) position embedding.
        c_attn_kernel / c_attn_bias: (C, 3C) / (3C,) fused q, k, v (and cross-attention's
            ``c_attn`` / ``q_attn``).
        attn_proj_kernel / attn_proj_bias: (C, C) / (C,) attention output projection.
        c_fc_kernel / c_fc_bias: (C, F) / (F,) MLP input.
        mlp_proj_kernel / mlp_proj_bias: (F, C) / (C,) MLP output.
        layer_norm: (C,) LayerNorm scale and bias.
        lm_head_kernel: (C, V) untied LM head. head_kernel / head_bias: other heads' (C, n).
        batch: spec of the (B, T) inputs (and leading dims of activations).

    Example:
        >>> ShardingConfig(c_fc_kernel=P(None, "model"), mlp_proj_kernel=P("model", None))
    """

    wte: P | None = None
    wpe: P | None = None
    c_attn_kernel: P | None = None
    c_attn_bias: P | None = None
    attn_proj_kernel: P | None = None
    attn_proj_bias: P | None = None
    c_fc_kernel: P | None = None
    c_fc_bias: P | None = None
    mlp_proj_kernel: P | None = None
    mlp_proj_bias: P | None = None
    layer_norm: P | None = None
    lm_head_kernel: P | None = None
    head_kernel: P | None = None
    head_bias: P | None = None
    batch: P | None = None

    # ------------------------------------------------------------------ presets
    @classmethod
    def data_parallel(cls, data_axis: str = "data") -> ShardingConfig:
        """Weights replicated; the batch dimension split over ``data_axis``."""
        return cls(batch=P(data_axis))

    @classmethod
    def tensor_parallel(
        cls, model_axis: str = "model", data_axis: str | None = "data", shard_vocab: bool = False
    ) -> ShardingConfig:
        """Megatron layout on ``model_axis`` (+ data parallel on ``data_axis`` if given)."""
        m = model_axis
        emb = P(m, None) if shard_vocab else P(None, m)
        return cls(
            wte=emb,
            wpe=P(None, m),
            c_attn_kernel=P(None, m),
            c_attn_bias=P(m),  # column-parallel
            attn_proj_kernel=P(m, None),  # row-parallel
            c_fc_kernel=P(None, m),
            c_fc_bias=P(m),
            mlp_proj_kernel=P(m, None),
            lm_head_kernel=P(None, m) if shard_vocab else P(m, None),
            batch=P(data_axis) if data_axis else None,
        )

    @classmethod
    def fsdp(cls, axis: str = "data") -> ShardingConfig:
        """Fully sharded data parallel: matrices split on their first dim, batch on ``axis``."""
        a = P(axis, None)
        return cls(
            wte=P(None, axis),
            wpe=P(None, axis),
            c_attn_kernel=a,
            attn_proj_kernel=a,
            c_fc_kernel=a,
            mlp_proj_kernel=a,
            lm_head_kernel=a,
            head_kernel=a,
            batch=P(axis),
        )

    # ------------------------------------------------------------------ lookup
    def spec_for(self, path: tuple) -> P | None:
        """The PartitionSpec for a parameter path such as ``('transformer', 'h', 0, 'mlp',
        'c_proj', 'kernel')`` (None: replicated)."""
        names = [str(p) for p in path]
        module, leaf = names[-2], names[-1]
        parent = names[-3] if len(names) >= 3 else ""
        if module.startswith("ln_"):
            return self.layer_norm
        if module == "c_proj":
            if parent == "mlp":
                return self.mlp_proj_kernel if leaf == "kernel" else self.mlp_proj_bias
            return self.attn_proj_kernel if leaf == "kernel" else self.attn_proj_bias
        role = _ROLES.get((module, leaf))
        if role is not None:
            return getattr(self, role)
        if module in ("score", "classifier", "qa_outputs", "summary"):
            return self.head_kernel if leaf == "kernel" else self.head_bias
        return None


def annotate(model: nnx.Module, sharding: ShardingConfig) -> None:
    """Attach ``out_sharding`` metadata (from ``sharding``) to every parameter of ``model``."""
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            spec = sharding.spec_for(path)
            var.set_metadata(out_sharding=tuple(spec) if spec is not None else None)


def _check_divisible(state: Any, mesh: Mesh) -> None:
    for path, var in nnx.to_flat_state(state):
        spec = nnx.get_partition_spec(var).get_value() if isinstance(var, nnx.Variable) else None
        if not isinstance(spec, P):
            continue
        shape = var.get_value().shape
        for dim, axes in zip(shape, spec):
            if axes is None:
                continue
            size = 1
            for a in axes if isinstance(axes, tuple) else (axes,):
                size *= mesh.shape[a]
            if dim % size:
                raise ValueError(
                    f"cannot shard {'/'.join(map(str, path))} {tuple(shape)} with "
                    f"{spec}: dimension {dim} is not divisible by {size} devices"
                )


def auto_mesh(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto``: the GSPMD propagation these layouts rely on.

    ``jax.make_mesh`` makes *Explicit* axes by default since JAX 0.7 ("sharding in types"),
    under which every gather and reshape would need an explicit ``out_sharding``.
    """
    auto = jax.sharding.AxisType.Auto
    if all(t == auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(auto,) * len(mesh.axis_names))


def shard_model(model: nnx.Module, mesh: Mesh, sharding: ShardingConfig | None = None):
    """Place ``model``'s variables on ``mesh`` (in place; also returned).

    ``sharding`` (re)annotates the parameters first; without it the model's existing
    ``out_sharding`` metadata is used (from its constructor's ``sharding=``), and anything
    unannotated is replicated. The mesh is used with ``Auto`` axes (see :func:`auto_mesh`);
    place inputs with :func:`shard_batch` on the same mesh.
    """
    mesh = auto_mesh(mesh)
    if sharding is not None:
        annotate(model, sharding)
    state = nnx.state(model)
    _check_divisible(state, mesh)
    shardings = nnx.get_named_sharding(state, mesh)
    nnx.update(model, jax.tree.map(place, state, shardings))
    return model


def place(x: Any, sharding: Any) -> jax.Array:
    """``jax.device_put(x, sharding)``, also for a mesh spanning several processes: there each
    process holds the same full value (seeded init, checkpoint) and supplies the slices of its
    own devices (``device_put`` accepts only addressable devices)."""
    if sharding is None or getattr(sharding, "is_fully_addressable", True):
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        # RNG keys (dropout streams): placed as their key data, then re-wrapped (replicated)
        impl = jax.random.key_impl(x)
        data = np.asarray(jax.random.key_data(x))
        rep = NamedSharding(sharding.mesh, P())
        placed = jax.make_array_from_callback(data.shape, rep, lambda index: data[index])
        return jax.random.wrap_key_data(placed, impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(x: Any, mesh: Mesh, sharding: ShardingConfig | None = None) -> Any:
    """Place inputs (a (B, ...) array or a pytree of them) with ``sharding.batch``."""
    spec = sharding.batch if sharding is not None and sharding.batch is not None else P()
    return jax.device_put(x, NamedSharding(auto_mesh(mesh), spec))


__all__ = ["ShardingConfig", "annotate", "auto_mesh", "shard_batch", "shard_model"]
