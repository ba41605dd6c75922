"""Causal-LM fine-tuning of the Flax NNX GPT-2: one device, or a ``jax.sharding.Mesh``.

The same loop as ``gpt2_torch.training`` and ``gpt2_tf.training`` (data order from
:meth:`gpt2_core.data.PackedDataset.batch`, learning rate from
:func:`gpt2_core.training.learning_rate`, decay mask from :func:`gpt2_core.training.decays`,
``OUT/metrics.jsonl`` through :class:`gpt2_core.training.MetricsLog`), written the JAX way:
the model is split once (``nnx.split``) into a graph definition and pytrees of parameters and
RNG state, and one ``jax.jit``-compiled function takes a whole optimizer update -- every
gradient-accumulation micro-step, the global-norm clip and the optax AdamW update.

Scaling out is XLA's SPMD partitioner: parameters are placed on a mesh with the Flax backend's
:class:`gpt2_flax.sharding.ShardingConfig` (data parallel, FSDP on the ``data`` axis, or
Megatron tensor parallel on a ``model`` axis), the global batch is sharded on ``data``, and
the compiler inserts the collectives. Multi-host runs call ``jax.distributed.initialize`` first;
every process builds the same global batch from (seed, step) and contributes its devices'
slices, so the result does not depend on how many hosts or devices there are.

Mixed precision (``cfg.precision == "bf16"``): float32 master parameters, cast to bfloat16
inside the loss for the forward and backward pass (the loss itself is float32).

Shapes: A = grad-accumulation micro-steps, B = blocks per micro-step, T = block size.

Example:
    >>> from gpt2_core.data import PackedDataset
    >>> from gpt2_core.training import TrainConfig
    >>> model = GPT2LMHeadModel(tiny_config(), rngs=nnx.Rngs(0))
    >>> ds = PackedDataset(np.random.default_rng(0).integers(0, 257, 4096), block_size=16)
    >>> mesh, sharding = make_mesh("dp", {"data": 4})
    >>> result = train(model, ds, None, TrainConfig(steps=20, batch_size=4, block_size=16),
    ...                "out", mesh=mesh, sharding=sharding)
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gpt2_core import naming
from gpt2_core.data import DataError, PackedDataset
from gpt2_core.training import (
    MetricsLog,
    TrainConfig,
    TrainResult,
    check_out_dir,
    decays,
    latest_checkpoint,
    learning_rate,
    progress_bar,
    read_checkpoint,
    save_checkpoint,
    save_final_model,
)
from gpt2_flax import weights
from gpt2_flax.sharding import ShardingConfig, auto_mesh, place, shard_model

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "dp", "fsdp")
_RNG = "dropout keys fold_in(key(seed), step); data order from (seed, step)"


# ----------------------------------------------------------------------------- run directory
# ----------------------------------------------------------------------------- mesh
def make_mesh(
    strategy: str = "dp", axes: dict[str, int] | None = None
) -> tuple[Mesh | None, ShardingConfig | None]:
    """A ``("data", "model")`` mesh over every device and the matching ShardingConfig.

    Args:
        strategy: "none" (one device, no mesh), "dp" (weights replicated, batch split on
            ``data``) or "fsdp" (weights and batch split on ``data``). A ``model`` axis > 1 adds
            Megatron tensor parallelism (:meth:`ShardingConfig.tensor_parallel`).
        axes: ``{"data": n, "model": m}`` with ``n * m`` = number of devices (default: all
            devices on ``data``).

    Example:
        >>> mesh, sharding = make_mesh("fsdp", {"data": 4})
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none" and not axes:
        return None, None
    n = jax.device_count()
    axes = dict(axes or {"data": n})
    data, model = axes.get("data", 1), axes.get("model", 1)
    if data * model != n:
        raise ValueError(
            f"mesh data={data} x model={model} needs {data * model} devices, but JAX sees {n}"
        )
    mesh = auto_mesh(jax.make_mesh((data, model), ("data", "model")))
    if model > 1:
        if strategy == "fsdp":
            raise ValueError(
                "fsdp with a model axis is not supported: use --strategy dp "
                "with data=N,model=M (tensor parallel) or fsdp with data only"
            )
        return mesh, ShardingConfig.tensor_parallel(model_axis="model", data_axis="data")
    if strategy == "fsdp":
        return mesh, ShardingConfig.fsdp("data")
    return mesh, ShardingConfig.data_parallel("data")


# ----------------------------------------------------------------------------- optimizer
def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale gradients by ``min(1, max_norm / (norm + 1e-6))``: torch's ``clip_grad_norm_``
    (optax's own clip omits the 1e-6, a last-digit difference we avoid for parity)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    params: Any, cfg: TrainConfig, *, mask: Any = None
) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW (decay on matrices only) on the schedule of
    :func:`gpt2_core.training.learning_rate` (a float32 table indexed by the update count).

    Args:
        params: the parameter pytree (for the decay mask), or None when ``mask`` is given.
        cfg: the settings.
        mask: a params-shaped pytree of bools (True: decay); default from ``params``.
    """
    table = np.asarray([learning_rate(cfg, s) for s in range(cfg.steps)], np.float32)
    schedule = lambda count: jnp.asarray(table)[jnp.minimum(count, cfg.steps - 1)]  # noqa: E731
    if mask is None:
        mask = jax.tree_util.tree_map_with_path(lambda path, p: decays(_key(path), p.ndim), params)
    adamw = optax.adamw(
        schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask
    )
    if cfg.grad_clip:
        return optax.chain(clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def _names(path: tuple) -> tuple:
    """A pytree key path -> the NNX variable path (``('transformer', 'h', 0, ...)``)."""
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(k.key)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
        # GetAttrKey('value') of an nnx Variable: not part of the name
    return tuple(out)


def _key(path: tuple) -> str:
    """A parameter's canonical key (``transformer.h.0.attn.c_attn.weight``)."""
    return weights.canonical_key(_names(path))


# ----------------------------------------------------------------------------- host transfers
def _to_host(x: jax.Array) -> np.ndarray:
    """A full numpy copy of a (possibly sharded, possibly multi-host) array."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _canonical(tree: Any, config: Any) -> dict[str, np.ndarray]:
    """A params-shaped pytree -> canonical numpy dict (Linear heads transposed back)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = _key(path)
        arr = _to_host(leaf)
        out[key] = np.ascontiguousarray(arr.T) if weights.is_transposed(key) else arr
    for tied, src in naming.tied_keys(config, "lm").items():
        out[tied] = out[src]
    return out


def _from_canonical(like: Any, values: dict[str, np.ndarray], prefix: str = "") -> Any:
    """Canonical arrays -> a pytree shaped (and sharded) like ``like``."""

    def put(path, leaf):
        key = _key(path)
        arr = np.asarray(values[prefix + key], dtype=np.float32)
        arr = arr.T if weights.is_transposed(key) else arr
        sharding = getattr(leaf, "sharding", None)
        return place(arr.astype(leaf.dtype), sharding)

    return jax.tree_util.tree_map_with_path(put, like)


# ----------------------------------------------------------------------------- checkpoints
def _moments(opt_state: Any, config: Any) -> dict[str, np.ndarray]:
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    nu = optax.tree_utils.tree_get(opt_state, "nu")
    out = {f"exp_avg/{k}": v for k, v in _canonical(mu, config).items()}
    out.update({f"exp_avg_sq/{k}": v for k, v in _canonical(nu, config).items()})
    tied = naming.tied_keys(config, "lm")  # one moment per parameter: the tied head is wte
    return {k: v for k, v in out.items() if k.split("/", 1)[1] not in tied}


def _restore_moments(opt_state: Any, moments: dict[str, np.ndarray], step: int) -> Any:
    mu = optax.tree_utils.tree_get(opt_state, "mu")
    nu = optax.tree_utils.tree_get(opt_state, "nu")
    restored = optax.tree_utils.tree_set(
        opt_state,
        mu=_from_canonical(mu, moments, "exp_avg/"),
        nu=_from_canonical(nu, moments, "exp_avg_sq/"),
        count=jnp.asarray(step, jnp.int32),
    )
    # a fresh buffer per leaf (tree_set put one count array in two places, and the step
    # donates its inputs), with the dtype and placement of the initial state, so that the
    # compiled step is reused rather than retraced
    return jax.tree.map(
        lambda x, like: jax.device_put(jnp.array(x, like.dtype, copy=True), like.sharding),
        restored,
        opt_state,
    )


# ----------------------------------------------------------------------------- the loop
def train(
    model: Any,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    mesh: Mesh | None = None,
    sharding: ShardingConfig | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train_ds`` with AdamW, warm-up + cosine, clipping, accumulation.

    Args:
        model: a :class:`gpt2_flax.GPT2LMHeadModel` (float32 parameters; dropout from its config).
        train_ds: packed training blocks; batch ``step`` is ``train_ds.batch(step, B * A, seed)``.
        eval_ds: held-out blocks (or None: no evaluation).
        cfg: the settings (steps, batch size, lr, precision, eval/save intervals, ...).
        out_dir: run directory: metrics.jsonl, checkpoint-<step>/, last, final model, loss PNG.
        resume: continue from ``OUT/last`` (weights, AdamW moments, step), equal to an
            uninterrupted run.
        mesh, sharding: a mesh and ShardingConfig (see :func:`make_mesh`); None: one device.
        progress: show a tqdm bar (process 0).
        on_step: called as ``on_step(step, record)`` after each step.

    Returns:
        a :class:`TrainResult` (``result.model`` holds the trained parameters).

    Raises:
        DataError / ValueError / OSError: bad data, settings or OUT, before any training step.
    """
    is_main = jax.process_index() == 0
    _validate(model, train_ds, eval_ds, cfg, mesh)
    apply_dropout(model, cfg)
    out = check_out_dir(out_dir, resume) if is_main else Path(out_dir)
    start_step, moments, state = 0, None, None
    last = latest_checkpoint(out) if resume else None
    if last is not None:
        state, sd, moments = read_checkpoint(last, cfg)
        start_step = int(state["step"])
        model.load_state_dict(sd)
        logger.info("resuming from %s (step %d)", last, start_step)
    elif resume:
        logger.warning("%s has no checkpoint yet: starting from step 0", out)
    if mesh is not None:
        shard_model(model, mesh, sharding)

    model.train()  # dropout on (as the config says); the flag is static in the graphdef
    graphdef, params, rngs, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    decay_spec = tuple(
        (_key(path), p.ndim) for path, p in jax.tree_util.tree_flatten_with_path(params)[0]
    )
    tx, init_jit, step_jit, eval_jit = _programs(
        graphdef, jax.tree.structure(params), decay_spec, tuple(sorted(cfg.to_dict().items()))
    )
    opt_state = init_jit(params)  # moments inherit the parameters' shardings
    if moments is not None:
        opt_state = _restore_moments(opt_state, moments, int(state["adam_step"]))

    A, B, T = cfg.grad_accum, cfg.batch_size, train_ds.block_size
    compute_dtype = jnp.bfloat16 if cfg.precision == "bf16" else None
    batch_sharding = None
    if mesh is not None:
        spec = sharding.batch if sharding is not None and sharding.batch is not None else P()
        batch_sharding = NamedSharding(mesh, P(None, *spec))  # (A, B, T): B on data

    log = (
        MetricsLog(out / "metrics.jsonl", resume_from_step=start_step if resume else None)
        if is_main
        else None
    )
    result = TrainResult(start_step=start_step, steps=start_step, model=model)
    bar = progress_bar(cfg.steps, start_step, enabled=progress and is_main, desc="train (flax)")
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        blocks = train_ds.batch(step, A * B, cfg.seed).reshape(A, B, T)  # (A*B, T) -> (A, B, T)
        xs = _global_array(blocks.astype(np.int32), batch_sharding)
        params, opt_state, rngs, loss, grad_norm = step_jit(
            params, opt_state, rngs, rest, xs, jnp.asarray(step, jnp.int32)
        )
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss became {loss_value} at step {step + 1}; lower --lr or check the data"
            )
        elapsed = time.perf_counter() - t0
        record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": learning_rate(cfg, step),
            "tokens_per_s": cfg.tokens_per_step / elapsed,
            "grad_norm": float(grad_norm),
        }
        if eval_ds is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ev = _evaluate(eval_jit, params, rngs, rest, eval_ds, cfg, mesh, compute_dtype)
            record.update(eval_loss=ev, eval_ppl=math.exp(min(ev, 50.0)))
            result.eval_losses[step + 1] = ev
        result.losses.append(loss_value)
        result.steps = step + 1
        if log is not None:
            log.write(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            sd = _canonical(params, model.config)  # every process takes part in the gathers
            mom = _moments(opt_state, model.config)
            if is_main:
                save_checkpoint(
                    out,
                    step + 1,
                    sd,
                    mom,
                    model.config,
                    cfg,
                    {
                        "framework": "flax",
                        "mesh": dict(mesh.shape) if mesh is not None else None,
                        "seed": cfg.seed,
                    },
                    rng=_RNG,
                )
        if on_step is not None:
            on_step(step + 1, record)
    if bar is not None:
        bar.close()
    nnx.update(model, params, rngs)
    sd = _canonical(params, model.config)
    if is_main:
        save_final_model(
            out, sd, model.config, getattr(model, "generation_config", None), log, "flax"
        )
    model.eval()
    return result


@functools.lru_cache(maxsize=8)
def _programs(graphdef: Any, params_treedef: Any, decay_spec: tuple, cfg_items: tuple):
    """(optimizer, jitted init, jitted update step, jitted eval loss) for one model structure
    and one TrainConfig. Cached, so that repeated ``train`` calls in a process (a resumed run,
    a notebook) reuse the compiled programs instead of tracing fresh closures."""
    cfg = TrainConfig(**dict(cfg_items))
    mask = jax.tree.unflatten(params_treedef, [decays(k, nd) for k, nd in decay_spec])
    tx = make_optimizer(None, cfg, mask=mask)
    A = cfg.grad_accum
    compute_dtype = jnp.bfloat16 if cfg.precision == "bf16" else None
    base_key = jax.random.key(cfg.seed)

    def loss_fn(p, rng_state, rest, x):
        if compute_dtype is not None:  # bf16 compute, float32 master weights
            p = jax.tree.map(lambda w: w.astype(compute_dtype), p)
        m = nnx.merge(graphdef, p, rng_state, rest, copy=True)  # fresh Variables in this trace
        loss = m(input_ids=x, labels=x, use_cache=False).loss
        return loss, nnx.state(m, nnx.RngState)

    def step_fn(params, opt_state, rng_state, rest, xs, step):
        # dropout streams restart from fold_in(key(seed), step): resumable at any step
        leaves, treedef = jax.tree.flatten(rng_state)
        step_key = jax.random.fold_in(base_key, step)
        leaves = [
            jax.random.fold_in(step_key, i)
            if jnp.issubdtype(v.dtype, jax.dtypes.prng_key)
            else jnp.zeros_like(v)
            for i, v in enumerate(leaves)
        ]
        rng_state = jax.tree.unflatten(treedef, leaves)
        grads, loss = None, 0.0
        for a in range(A):  # unrolled: A is small and static
            (l, rng_state), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, rng_state, rest, xs[a]
            )
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            loss = loss + l
        grads = jax.tree.map(lambda g: g / A, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, rng_state, loss / A, grad_norm

    def eval_fn(p, r, rest, x):
        m = nnx.merge(graphdef, p, r, rest)
        return m(input_ids=x, labels=x, use_cache=False, deterministic=True).loss

    return (tx, jax.jit(tx.init), jax.jit(step_fn, donate_argnums=(0, 1)), jax.jit(eval_fn))


def apply_dropout(model: Any, cfg: TrainConfig) -> None:
    """Set ``cfg.dropout`` (when given) on the model's config and on every dropout of its
    transformer (embeddings, attention probabilities, residual branches)."""
    if cfg.dropout is not None:
        # a copy: the caller's config object is left alone
        model.config = model.config.copy(**cfg.model_overrides())
        for _, module in nnx.iter_graph(model.transformer):
            if isinstance(module, nnx.Dropout):
                module.rate = cfg.dropout


def _validate(
    model: Any,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    mesh: Mesh | None,
) -> None:
    config = model.config
    if train_ds.block_size > config.n_positions:
        raise DataError(
            f"block size {train_ds.block_size} exceeds the model's n_positions "
            f"({config.n_positions})"
        )
    for name, ds in (("training", train_ds), ("held-out", eval_ds)):
        if ds is not None and len(ds.tokens) and int(ds.tokens.max()) >= config.vocab_size:
            raise DataError(
                f"{name} data holds token id {int(ds.tokens.max())} but the model's "
                f"vocabulary has {config.vocab_size} entries (wrong tokenizer?)"
            )
    if mesh is not None and cfg.batch_size % mesh.shape.get("data", 1):
        raise ValueError(
            f"batch size {cfg.batch_size} is not divisible by the mesh's data "
            f"axis ({mesh.shape['data']} devices)"
        )
    if cfg.precision == "fp16":
        raise ValueError(
            "fp16 training is not supported by the JAX backend (no loss scaling); "
            "use --precision bf16"
        )


def _global_array(blocks: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """The global batch as one (sharded) array: every process holds the same numpy blocks
    (they depend on (seed, step) only) and supplies the slices of its own devices."""
    if sharding is None:
        return jnp.asarray(blocks)
    return jax.make_array_from_callback(blocks.shape, sharding, lambda idx: blocks[idx])


def _evaluate(eval_jit, params, rngs, rest, eval_ds, cfg, mesh, compute_dtype) -> float:
    """Mean held-out loss over up to ``cfg.eval_batches`` batches."""
    if compute_dtype is not None:
        params = jax.tree.map(lambda w: w.astype(compute_dtype), params)
    total, count = 0.0, 0
    for i, batch in enumerate(eval_ds.eval_batches(cfg.batch_size)):
        if i >= cfg.eval_batches:
            break
        x = batch.astype(np.int32)  # (B', T); the last batch may be smaller
        if mesh is not None:
            x = _global_array(x, NamedSharding(mesh, P()))  # replicated: any B' works
        total += float(eval_jit(params, rngs, rest, x)) * len(batch)
        count += len(batch)
    return total / count


__all__ = [
    "STRATEGIES",
    "TrainResult",
    "check_out_dir",
    "clip_by_global_norm",
    "latest_checkpoint",
    "make_mesh",
    "make_optimizer",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
