"""Framework-neutral pieces of fine-tuning: settings, LR schedule, weight-decay rule, logs.

Each backend's training loop takes a :class:`TrainConfig` and uses :func:`learning_rate`,
:func:`decays` and :class:`MetricsLog` from here, so the three frameworks follow one schedule,
decay the same parameters and write the same metrics — the first thing to check when their
loss curves are compared.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from gpt2_core.io_utils import atomic_write_text


@dataclass
class TrainConfig:
    """Settings of ``gpt2 train`` (flag names without dashes).

    Example:
        >>> from gpt2_core.training import TrainConfig, learning_rate
        >>> cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10)
        >>> round(learning_rate(cfg, 0), 6), learning_rate(cfg, 10), round(learning_rate(cfg, 100), 6)
        (0.0001, 0.001, 0.0001)
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    block_size: int = 256
    seed: int = 0
    dropout: float | None = None
    eval_fraction: float = 0.1
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 500
    precision: str = "fp32"
    log_every: int = 1

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"TrainConfig: {msg}")

        for name in ("steps", "batch_size", "grad_accum", "block_size", "eval_every",
                     "save_every", "eval_batches", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                fail(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            fail(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            fail(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            fail("weight_decay and grad_clip must be >= 0")
        if self.dropout is not None and not 0 <= self.dropout <= 1:
            fail(f"dropout must be in [0, 1], got {self.dropout!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            fail(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.block_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps``, then cosine to
    ``lr * min_lr_ratio`` at ``steps`` (``step`` counts optimizer updates from 0)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def decays(name: str, ndim: int) -> bool:
    """AdamW weight decay applies to matrices only (weights, embeddings), never to biases or
    LayerNorm parameters — nanoGPT's and transformers' examples' rule."""
    return ndim >= 2


class MetricsLog:
    """``OUT/metrics.jsonl``: one JSON object per line (step, loss, lr, tokens/s, eval...).

    Appends, so a resumed run continues the same file; lines past the resumed step are
    dropped first so the log never holds two records of one step.
    """

    def __init__(self, path: str | os.PathLike, resume_from_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_from_step is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_from_step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def plot_loss_curve(metrics: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Write a loss-curve PNG (training loss, and eval loss where recorded). None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [m["step"] for m in metrics if "loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [m["loss"] for m in metrics if "loss" in m], label="train loss", lw=1)
    ev = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if ev:
        ax.plot(*zip(*ev), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "gpt2-zoo fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
