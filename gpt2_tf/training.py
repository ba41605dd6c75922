"""Causal-LM fine-tuning of the Keras GPT-2 on TensorFlow: one device or a ``tf.distribute``
strategy (MirroredStrategy on the local GPUs / CPU devices, MultiWorkerMirroredStrategy across
hosts through ``TF_CONFIG``).

The same loop as ``gpt2_torch.training`` and ``gpt2_flax.training`` (data order from
:meth:`gpt2_core.data.PackedDataset.batch`, learning rate from
:func:`gpt2_core.training.learning_rate`, decay on matrices from
:func:`gpt2_core.training.decays`, ``OUT/metrics.jsonl`` through
:class:`gpt2_core.training.MetricsLog`), written the TensorFlow way: one ``tf.function`` per
optimizer update runs ``strategy.run`` over the replicas; each replica takes its slice of the
global batch through every gradient-accumulation micro-step, the replicas all-reduce (mean) the
gradients, clip them by their global norm, and a Keras optimizer applies them to the mirrored
variables.

The optimizer is :class:`TorchAdamW`, a ``keras.optimizers.AdamW`` whose update puts epsilon
where ``torch.optim.AdamW`` and ``optax.adamw`` put it (``m_hat / (sqrt(v_hat) + eps)``; Keras'
own Adam adds eps to the *uncorrected* ``sqrt(v)``, i.e. a step-dependent ``eps / sqrt(1 -
beta2^t)``), so the three frameworks take the same steps.

Mixed precision: build the model with the ``mixed_bfloat16`` Keras policy (float32 variables,
bfloat16 compute); the loss is computed in float32 by the model.

Shapes: A = grad-accumulation micro-steps, B = blocks per micro-step, b = B / replicas,
T = block size.

Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = GPT2LMHeadModel(tiny_config())
    >>> result = train(model, ds, None, TrainConfig(steps=20, batch_size=4, block_size=16),
    ...                "out", strategy=strategy)
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

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
from gpt2_tf.weights import TRANSPOSED, load_canonical, to_canonical, variable_map

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multiworker")
_RNG = "dropout seed state [hash(seed, layer), step]; data order from (seed, step)"


# ----------------------------------------------------------------------------- run directory
# ----------------------------------------------------------------------------- strategy
def make_strategy(name: str = "none") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name``.

    * ``none``: TensorFlow's default strategy (one device).
    * ``mirrored``: MirroredStrategy over every local GPU, else every logical CPU device
      (``tf.config.set_logical_device_configuration`` splits a CPU for testing).
    * ``multiworker``: MultiWorkerMirroredStrategy; the cluster comes from ``TF_CONFIG``.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy multiworker needs TF_CONFIG (the cluster and this "
                "worker's index); see docs/training.md"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


# ----------------------------------------------------------------------------- optimizer
class TorchAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with torch/optax's update and pre-reduced gradients.

    Update (t = iterations + 1; decoupled decay first, as Keras and torch do)::

        p <- p * (1 - lr * wd)                       # only where decay applies
        m <- b1 * m + (1 - b1) * g ;  v <- b2 * v + (1 - b2) * g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    :func:`train` all-reduces and clips the gradients itself (the clip needs the *global*
    norm), so this optimizer does not sum them across replicas again.

    Args:
        learning_rate, weight_decay, beta_1, beta_2, epsilon: as ``keras.optimizers.AdamW``.

    Example:
        >>> opt = TorchAdamW(learning_rate=3e-4, weight_decay=0.1, beta_2=0.95, epsilon=1e-8)
    """

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        g = tf.cast(gradient, dtype)
        t = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(m, m * b1 + g * (1 - b1))
        self.assign(v, v * b2 + g * g * (1 - b2))
        denom = tf.sqrt(v) / tf.sqrt(1 - tf.pow(b2, t)) + tf.cast(self.epsilon, dtype)
        self.assign_sub(variable, (lr / (1 - tf.pow(b1, t))) * (m / denom))

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)  # already all-reduced (mean) by train()


def make_optimizer(model: keras.Model, cfg: TrainConfig) -> TorchAdamW:
    """:class:`TorchAdamW` with weight decay on matrices only, built for ``model``'s variables.

    Create it inside the strategy's scope (so its slots are mirrored like the variables).
    """
    opt = TorchAdamW(
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        beta_1=cfg.beta1,
        beta_2=cfg.beta2,
        epsilon=cfg.eps,
    )
    names = {id(v): k for k, v in variable_map(model).items()}
    opt.exclude_from_weight_decay(
        var_list=[
            v
            for v in model.trainable_variables
            if not decays(names.get(id(v), v.path), len(v.shape))
        ]
    )
    opt.build(model.trainable_variables)
    return opt


def _slots(opt: TorchAdamW, model: keras.Model) -> dict[str, tuple[Any, Any, bool]]:
    """canonical key -> (first moment, second moment, stored transposed) variables."""
    out = {}
    for key, var in variable_map(model).items():
        i = opt._get_variable_index(var)
        out[key] = (opt._momentums[i], opt._velocities[i], key in TRANSPOSED)
    return out


# ----------------------------------------------------------------------------- checkpoints
def _moments(opt: TorchAdamW, model: keras.Model) -> dict[str, np.ndarray]:
    out = {}
    for key, (m, v, transposed) in _slots(opt, model).items():
        for name, var in (("exp_avg", m), ("exp_avg_sq", v)):
            arr = np.asarray(var.numpy())
            out[f"{name}/{key}"] = np.ascontiguousarray(arr.T) if transposed else arr
    return out


def _restore_moments(
    opt: TorchAdamW, model: keras.Model, moments: dict[str, np.ndarray], step: int
) -> None:
    for key, (m, v, transposed) in _slots(opt, model).items():
        for name, var in (("exp_avg", m), ("exp_avg_sq", v)):
            arr = np.asarray(moments[f"{name}/{key}"], dtype=np.float32)
            var.assign(arr.T if transposed else arr)
    opt.iterations.assign(step)


# ----------------------------------------------------------------------------- dropout seeds
def _seed_generators(model: keras.Model) -> list[Any]:
    gens = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        gens.extend(getattr(layer, "_seed_generators", []))
    return gens


def _reseed(gens: list[Any], seed: int, step: int) -> None:
    """Dropout seed state of every layer = (hash(seed, layer), step * 2^16): a function of
    (seed, step) only, so a resumed run draws the masks of the uninterrupted one."""
    for i, g in enumerate(gens):
        s0 = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)
        g.state.assign(np.array([s0, step << 16], dtype=g.state.dtype))


# ----------------------------------------------------------------------------- the loop
def train(
    model: keras.Model,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train_ds`` with AdamW, warm-up + cosine, clipping, accumulation.

    Args:
        model: a :class:`gpt2_tf.GPT2LMHeadModel`, created inside ``strategy.scope()`` when a
            strategy is given (dropout from its config; ``mixed_bfloat16`` policy for bf16).
        train_ds: packed training blocks; batch ``step`` is ``train_ds.batch(step, B * A, seed)``.
        eval_ds: held-out blocks (or None: no evaluation).
        cfg: the settings (steps, batch size, lr, precision, eval/save intervals, ...).
        out_dir: run directory: metrics.jsonl, checkpoint-<step>/, last, final model, loss PNG.
        resume: continue from ``OUT/last`` (weights, AdamW moments, step), equal to an
            uninterrupted run.
        strategy: a ``tf.distribute`` strategy (see :func:`make_strategy`); None: the default.
        progress: show a tqdm bar (chief only).
        on_step: called as ``on_step(step, record)`` after each step.

    Returns:
        a :class:`TrainResult`.

    Raises:
        DataError / ValueError / OSError: bad data, settings or OUT, before any training step.
    """
    strategy = strategy or tf.distribute.get_strategy()
    W = strategy.num_replicas_in_sync
    chief = _is_chief(strategy)
    _validate(model, train_ds, eval_ds, cfg, strategy)
    with strategy.scope():  # seed state of newly enabled dropouts lives with the model
        apply_dropout(model, cfg)
    out = check_out_dir(out_dir, resume) if chief else Path(out_dir)
    start_step, moments, state = 0, None, None
    last = latest_checkpoint(out) if resume else None
    if last is not None:
        state, sd, moments = read_checkpoint(last, cfg)
        start_step = int(state["step"])
        load_canonical(model, sd)
        logger.info("resuming from %s (step %d)", last, start_step)
    elif resume:
        logger.warning("%s has no checkpoint yet: starting from step 0", out)
    with strategy.scope():
        optimizer = make_optimizer(model, cfg)
    if moments is not None:
        _restore_moments(optimizer, model, moments, int(state["adam_step"]))

    A, B, T = cfg.grad_accum, cfg.batch_size, train_ds.block_size
    b = B // W
    variables = model.trainable_variables
    clip = float(cfg.grad_clip)

    def replica_step(xs):  # xs: (A, b, T) on this replica
        grads, loss = None, 0.0
        for a in range(A):  # unrolled: A is small and static
            with tf.GradientTape() as tape:
                micro = model(input_ids=xs[a], labels=xs[a], use_cache=False, training=True).loss
            # dense: the embedding's IndexedSlices would not add, scale or all-reduce as one
            g = [tf.convert_to_tensor(x) for x in tape.gradient(micro, variables)]
            grads = g if grads is None else [x + y for x, y in zip(grads, g)]
            loss = loss + micro
        ctx = tf.distribute.get_replica_context()
        # mean over micro-steps and replicas: every block weighs the same, as on one device
        grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [g / A for g in grads])
        loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss / A)
        norm = tf.linalg.global_norm(grads)
        if clip:
            scale = tf.minimum(1.0, clip / (norm + 1e-6))  # torch's clip_grad_norm_
            grads = [g * scale for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return loss, norm

    @tf.function
    def train_step(dist_xs):
        loss, norm = strategy.run(replica_step, args=(dist_xs,))
        return (
            strategy.reduce(tf.distribute.ReduceOp.MEAN, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.MEAN, norm, axis=None),
        )

    @tf.function
    def eval_loss(x):
        return model(input_ids=x, labels=x, use_cache=False, training=False).loss

    gens = _seed_generators(model)
    log = (
        MetricsLog(out / "metrics.jsonl", resume_from_step=start_step if resume else None)
        if chief
        else None
    )
    result = TrainResult(start_step=start_step, steps=start_step, model=model)
    bar = progress_bar(cfg.steps, start_step, enabled=progress and chief, desc="train (tf)")
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, step)
        optimizer.learning_rate = lr
        _reseed(gens, cfg.seed, step)
        # (A*B, T) -> (A, B, T); replica r gets blocks [r*b, (r+1)*b) of every micro-step
        blocks = train_ds.batch(step, A * B, cfg.seed).reshape(A, B, T).astype(np.int32)
        dist_xs = strategy.experimental_distribute_values_from_function(
            lambda ctx, blocks=blocks: tf.constant(
                blocks[:, ctx.replica_id_in_sync_group * b : (ctx.replica_id_in_sync_group + 1) * b]
            )
        )
        loss, norm = train_step(dist_xs)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss became {loss_value} at step {step + 1}; lower --lr or check the data"
            )
        elapsed = time.perf_counter() - t0
        record = {
            "step": step + 1,
            "loss": loss_value,
            "lr": lr,
            "tokens_per_s": cfg.tokens_per_step / elapsed,
            "grad_norm": float(norm),
        }
        if eval_ds is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ev = _evaluate(eval_loss, eval_ds, cfg)
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
            sd, mom = to_canonical(model), _moments(optimizer, model)
            if chief:
                save_checkpoint(
                    out,
                    step + 1,
                    sd,
                    mom,
                    model.config,
                    cfg,
                    {
                        "framework": "tf",
                        "strategy": type(strategy).__name__,
                        "replicas": W,
                        "seed": cfg.seed,
                    },
                    rng=_RNG,
                )
        if on_step is not None:
            on_step(step + 1, record)
    if bar is not None:
        bar.close()
    if chief:
        save_final_model(out, to_canonical(model), model.config, model.generation_config, log, "tf")
    return result


def apply_dropout(model: keras.Model, cfg: TrainConfig) -> None:
    """Set ``cfg.dropout`` (when given) on the model's config and on every dropout of its
    transformer (embeddings, attention probabilities, residual branches)."""
    if cfg.dropout is not None:
        # a copy: the caller's config object is left alone
        model.config = model.config.copy(**cfg.model_overrides())
        for layer in model.transformer._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = cfg.dropout
                if cfg.dropout > 0 and getattr(layer, "seed_generator", None) is None:
                    # Keras creates a dropout's seed state only when its rate starts > 0, and
                    # locks a built layer's state: add it the way __init__ would have
                    layer._tracker.unlock()
                    layer.seed_generator = keras.random.SeedGenerator(layer.seed)
                    layer._tracker.lock()


def _validate(
    model: keras.Model,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    strategy: tf.distribute.Strategy,
) -> None:
    config = model.config
    if getattr(model, "head", None) != "lm":
        raise TypeError(f"train needs a GPT2LMHeadModel, got {type(model).__name__}")
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
    W = strategy.num_replicas_in_sync
    if cfg.batch_size % W:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {W} replicas")
    first = model.trainable_variables[0]
    first = getattr(first, "value", first)  # keras.Variable -> its tf.Variable
    if W > 1 and not strategy.extended.variable_created_in_scope(first):
        raise ValueError(
            "the model's variables were not created under strategy.scope(); build "
            "or load the model inside `with strategy.scope():`"
        )
    policy = model.dtype_policy.name
    if cfg.precision == "bf16" and policy != "mixed_bfloat16":
        raise ValueError(
            f"precision bf16 needs the model built with dtype='mixed_bfloat16' (it has {policy!r})"
        )
    if cfg.precision == "fp16":
        raise ValueError(
            "fp16 training is not supported by the TF backend here (no loss "
            "scaling in this loop); use --precision bf16"
        )
    if cfg.precision == "fp32" and policy != "float32":
        raise ValueError(f"precision fp32 needs a float32 model (it has policy {policy!r})")


def _evaluate(eval_loss, eval_ds: PackedDataset, cfg: TrainConfig) -> float:
    """Mean held-out loss over up to ``cfg.eval_batches`` batches (on one device)."""
    total, count = 0.0, 0
    for i, batch in enumerate(eval_ds.eval_batches(cfg.batch_size)):
        if i >= cfg.eval_batches:
            break
        total += float(eval_loss(tf.constant(batch.astype(np.int32)))) * len(batch)
        count += len(batch)
    return total / count


__all__ = [
    "STRATEGIES",
    "TorchAdamW",
    "TrainResult",
    "check_out_dir",
    "latest_checkpoint",
    "make_optimizer",
    "make_strategy",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
