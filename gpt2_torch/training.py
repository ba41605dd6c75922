"""Causal-LM fine-tuning of the PyTorch GPT-2: one device, DDP or FSDP2 under ``torchrun``.

The loop is framework-neutral in everything but the tensor code: the data order comes from
:meth:`gpt2_core.data.PackedDataset.batch` (a function of (seed, step) only), the learning rate
from :func:`gpt2_core.training.learning_rate`, weight decay from
:func:`gpt2_core.training.decays`, and the metrics go to ``OUT/metrics.jsonl`` through
:class:`gpt2_core.training.MetricsLog`. ``gpt2_tf.training`` and ``gpt2_flax.training`` are
the same loop in their frameworks, so the three produce the same losses from the same weights.

Distribution is PyTorch's own: ``torch.distributed`` with DistributedDataParallel or FSDP2
(``torch.distributed.fsdp.fully_shard``, each block and then the root), gloo on CPU and NCCL
on GPU. The *global* batch (``cfg.batch_size`` blocks per micro-step) is split across ranks,
so 1 or N processes see the same blocks per step and produce the same losses. Rank 0 writes the
logs and checkpoints.

Checkpoints (``OUT/checkpoint-<step>/``) hold the model in our save format (config.json +
model.safetensors), the AdamW moments under canonical weight names (optimizer.safetensors) and
trainer_state.json (step, settings). ``OUT/last`` names the newest complete one. Dropout masks
are drawn from a generator seeded by (seed, step, rank), so ``resume=True`` continues bit for
bit.

Shapes: A = grad-accumulation micro-steps, B = blocks per micro-step, T = block size.

Example:
    >>> from gpt2_core.data import PackedDataset
    >>> from gpt2_core.training import TrainConfig
    >>> model = GPT2LMHeadModel(tiny_config())
    >>> ds = PackedDataset(np.random.default_rng(0).integers(0, 257, 4096), block_size=16)
    >>> result = train(model, ds, None, TrainConfig(steps=20, batch_size=4, block_size=16), "out")
    >>> result.losses[-1] < result.losses[0]
    True
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

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
from gpt2_torch import weights
from gpt2_torch.modeling import GPT2LMHeadModel

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "ddp", "fsdp")
_RNG = "dropout seeded from (seed, step, rank); data order from (seed, step)"


# ----------------------------------------------------------------------------- run directory
def _step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one (seed, step, rank): independent of how the run got there."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------- distribution
@dataclass
class _Dist:
    strategy: str
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(strategy: str, device: str | torch.device | None) -> _Dist:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if strategy == "none":
        dev = (
            torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
        )
        return _Dist(strategy, device=dev)
    owns = False
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError(
                f"strategy {strategy!r} needs torch.distributed: launch with "
                "torchrun --nproc_per_node N ... (or init the process group)"
            )
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    return _Dist(strategy, dist.get_rank(), dist.get_world_size(), dev, owns)


def _wrap(model: nn.Module, d: _Dist) -> nn.Module:
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if d.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # one FSDP unit per block (its params all-gathered just in time), then the root
        # (embeddings, tied head, ln_f); FSDP2 shards every parameter on dim 0 over the ranks
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    return model


def _sync_context(wrapped: nn.Module, d: _Dist, last_micro: bool):
    """Skip the gradient all-reduce on all but the last accumulation micro-step."""
    if d.strategy == "ddp" and not last_micro:
        return wrapped.no_sync()
    if d.strategy == "fsdp":
        wrapped.set_requires_gradient_sync(last_micro)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- optimizer
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (:func:`gpt2_core.training.decays`)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied lm_head/wte listed once
        if p.requires_grad:
            (decay if decays(name, p.ndim) else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach=False: the per-parameter loop is the reference formulation, and keeps the
    # float rounding of every update independent of how tensors are grouped
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False
    )


def _canonical_name(name: str, model: nn.Module) -> str:
    """Optimizer-state key of a parameter: the canonical weight it is (tied head -> wte)."""
    if name == "lm_head.weight" and model.config.tie_word_embeddings:
        return "transformer.wte.weight"
    return name


# ----------------------------------------------------------------------------- checkpoints
def _full_state(
    wrapped: nn.Module, inner: nn.Module, optimizer: torch.optim.Optimizer, d: _Dist
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(canonical weights, canonical AdamW moments) as numpy on rank 0 (empty elsewhere)."""
    if d.strategy == "none":
        sd = weights.to_canonical(inner)
        names = {id(p): n for n, p in inner.named_parameters()}
        moments = {}
        for p, s in optimizer.state.items():
            key = _canonical_name(names[id(p)], inner)
            moments[f"exp_avg/{key}"] = weights.tensor_to_numpy(s["exp_avg"])
            moments[f"exp_avg_sq/{key}"] = weights.tensor_to_numpy(s["exp_avg_sq"])
        return sd, moments
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    # full (unsharded) tensors on rank 0's CPU; collective calls, so every rank takes part
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(wrapped, options=opts)
    osd = get_optimizer_state_dict(wrapped, optimizer, options=opts)
    if not d.is_main:  # the other ranks get empty dicts
        return {}, {}
    sd = {k: weights.tensor_to_numpy(v) for k, v in msd.items()}
    moments = {}
    for name, s in osd["state"].items():
        key = _canonical_name(name, inner)
        moments[f"exp_avg/{key}"] = weights.tensor_to_numpy(s["exp_avg"])
        moments[f"exp_avg_sq/{key}"] = weights.tensor_to_numpy(s["exp_avg_sq"])
    return sd, moments


def _load_optimizer(
    wrapped: nn.Module,
    inner: nn.Module,
    optimizer: torch.optim.Optimizer,
    moments: dict[str, np.ndarray],
    adam_step: int,
    d: _Dist,
) -> None:
    names = dict(inner.named_parameters())
    if d.strategy == "none":
        for name, p in names.items():
            key = _canonical_name(name, inner)
            optimizer.state[p] = {
                "step": torch.tensor(float(adam_step)),
                "exp_avg": weights.numpy_to_tensor(moments[f"exp_avg/{key}"]).to(p.device),
                "exp_avg_sq": weights.numpy_to_tensor(moments[f"exp_avg_sq/{key}"]).to(p.device),
            }
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    template = get_optimizer_state_dict(wrapped, optimizer, options=opts)
    state = {}
    for group in template["param_groups"]:
        for name in group["params"]:
            key = _canonical_name(name, inner)
            state[name] = {
                "step": torch.tensor(float(adam_step)),
                "exp_avg": weights.numpy_to_tensor(moments[f"exp_avg/{key}"]),
                "exp_avg_sq": weights.numpy_to_tensor(moments[f"exp_avg_sq/{key}"]),
            }
    set_optimizer_state_dict(
        wrapped, optimizer, {"state": state, "param_groups": template["param_groups"]}, options=opts
    )


# ----------------------------------------------------------------------------- evaluation
def _evaluate(
    wrapped: nn.Module, eval_ds: PackedDataset, cfg: TrainConfig, d: _Dist, autocast: Callable
) -> float:
    """Mean held-out loss over up to ``cfg.eval_batches`` batches (every rank, same blocks)."""
    wrapped.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(eval_ds.eval_batches(cfg.batch_size)):
            if i >= cfg.eval_batches:
                break
            x = torch.from_numpy(batch.astype(np.int64)).to(d.device)  # (B, T)
            with autocast():
                loss = wrapped(input_ids=x, labels=x, use_cache=False).loss
            total += float(loss) * len(batch)
            count += len(batch)
    wrapped.train()
    return total / count


# ----------------------------------------------------------------------------- the loop
def train(
    model: GPT2LMHeadModel,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    strategy: str = "none",
    device: str | torch.device | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train_ds`` with AdamW, warm-up + cosine, clipping, accumulation.

    Args:
        model: a :class:`gpt2_torch.GPT2LMHeadModel` (its dropout comes from its config).
        train_ds: packed training blocks; batch ``step`` is ``train_ds.batch(step, B * A, seed)``.
        eval_ds: held-out blocks (or None: no evaluation).
        cfg: the settings (steps, batch size, lr, precision, eval/save intervals, ...).
        out_dir: run directory: metrics.jsonl, checkpoint-<step>/, last, final model, loss PNG.
        resume: continue from ``OUT/last`` (weights, AdamW moments, step); the result equals an
            uninterrupted run.
        strategy: "none", "ddp" or "fsdp" (the last two under torchrun / an initialised
            process group).
        device: where to train (default: the local CUDA device if any, else CPU).
        progress: show a tqdm bar (rank 0).
        on_step: called as ``on_step(step, record)`` after each step (rank 0 and others).

    Returns:
        a :class:`TrainResult`.

    Raises:
        DataError / ValueError / OSError: bad data, settings or OUT, before any training step.
    """
    d = _setup_distributed(strategy, device)
    try:
        return _train(model, train_ds, eval_ds, cfg, out_dir, resume, d, progress, on_step)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _validate(
    model: nn.Module,
    train_ds: PackedDataset,
    eval_ds: PackedDataset | None,
    cfg: TrainConfig,
    d: _Dist,
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
    if cfg.batch_size % d.world:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {d.world} processes")
    if cfg.precision == "fp16" and d.device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device; use --precision bf16 on CPU")


def apply_dropout(model: nn.Module, cfg: TrainConfig) -> None:
    """Set ``cfg.dropout`` (when given) on the model's config and on every dropout of its
    transformer (embeddings, attention probabilities, residual branches)."""
    if cfg.dropout is not None:
        # a copy: the caller's config object is left alone
        model.config = model.config.copy(**cfg.model_overrides())
        for module in model.transformer.modules():
            if isinstance(module, nn.Dropout):
                module.p = cfg.dropout


def _train(model, train_ds, eval_ds, cfg, out_dir, resume, d: _Dist, progress, on_step):
    _validate(model, train_ds, eval_ds, cfg, d)
    apply_dropout(model, cfg)
    out = check_out_dir(out_dir, resume) if d.is_main else Path(out_dir)
    if d.world > 1:
        dist.barrier()  # rank 0 has checked OUT before anyone reads or writes it
    start_step, moments, state = 0, None, None
    last = latest_checkpoint(out) if resume else None
    if last is not None:
        state, sd, moments = read_checkpoint(last, cfg)
        start_step = int(state["step"])
        weights.load_canonical(model, sd)
        logger.info("resuming from %s (step %d)", last, start_step)
    elif resume:
        logger.warning("%s has no checkpoint yet: starting from step 0", out)

    model.to(d.device)
    model.train()
    wrapped = _wrap(model, d)
    optimizer = make_optimizer(model, cfg)
    if moments is not None:
        _load_optimizer(wrapped, model, optimizer, moments, int(state["adam_step"]), d)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=d.device.type, dtype=amp_dtype)

    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    log = (
        MetricsLog(out / "metrics.jsonl", resume_from_step=start_step if resume else None)
        if d.is_main
        else None
    )
    A, B, T = cfg.grad_accum, cfg.batch_size, train_ds.block_size
    b = B // d.world  # blocks per rank per micro-step
    result = TrainResult(start_step=start_step, steps=start_step, model=model)
    bar = progress_bar(cfg.steps, start_step, enabled=progress and d.is_main, desc="train (torch)")
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # (A*B, T) global blocks of this step -> (A, B, T) micro-steps -> this rank's (A, b, T)
        blocks = train_ds.batch(step, A * B, cfg.seed).reshape(A, B, T)
        local = torch.from_numpy(blocks[:, d.rank * b : (d.rank + 1) * b].astype(np.int64))
        torch.manual_seed(_step_seed(cfg.seed, step, d.rank))
        loss_sum = torch.zeros((), device=d.device)
        for a in range(A):
            x = local[a].to(d.device)  # (b, T)
            with _sync_context(wrapped, d, a == A - 1), autocast():
                loss = wrapped(input_ids=x, labels=x, use_cache=False).loss / A
            (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach().float()
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else None
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if d.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            loss_sum /= d.world
        loss_value = float(loss_sum)
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
        }
        if grad_norm is not None:
            gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            record["grad_norm"] = float(gn)
        if eval_ds is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            ev = _evaluate(wrapped, eval_ds, cfg, d, autocast)
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
            sd, mom = _full_state(wrapped, model, optimizer, d)
            if d.is_main:
                save_checkpoint(
                    out,
                    step + 1,
                    sd,
                    mom,
                    model.config,
                    cfg,
                    {
                        "framework": "torch",
                        "strategy": d.strategy,
                        "world_size": d.world,
                        "seed": cfg.seed,
                    },
                    rng=_RNG,
                )
        if on_step is not None:
            on_step(step + 1, record)
    if bar is not None:
        bar.close()
    _finish(wrapped, model, out, d, log)
    return result


def _finish(
    wrapped: nn.Module, model: nn.Module, out: Path, d: _Dist, log: MetricsLog | None
) -> None:
    """The final model in OUT (config.json + model.safetensors) and the loss-curve PNG."""
    if d.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        msd = get_model_state_dict(
            wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        sd = {k: weights.tensor_to_numpy(v) for k, v in msd.items()}
    else:
        sd = weights.to_canonical(model)
    if d.is_main:
        save_final_model(out, sd, model.config, model.generation_config, log, "torch")
    if d.world > 1:
        dist.barrier()


__all__ = [
    "STRATEGIES",
    "TrainResult",
    "check_out_dir",
    "latest_checkpoint",
    "make_optimizer",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
