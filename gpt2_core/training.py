"""Framework-neutral pieces of fine-tuning: settings, LR schedule, weight-decay rule, logs.

Each backend's training loop takes a :class:`TrainConfig` and uses :func:`learning_rate`,
:func:`decays` and :class:`MetricsLog` from here, so the three frameworks follow one schedule,
decay the same parameters and write the same metrics — the first thing to check when their
loss curves are compared.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gpt2_core.io_utils import atomic_write_text

logger = logging.getLogger(__name__)

# The config fields ``TrainConfig.dropout`` sets: embeddings, attention probabilities and the
# residual branches (attention and MLP outputs) -- the three GPT-2 dropouts.
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")

# Settings a resumed run must share with the run it continues: they decide the data order, the
# schedule or the update rule, so changing one would silently make a different run.
RESUME_FIELDS = (
    "steps",
    "batch_size",
    "grad_accum",
    "block_size",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "seed",
    "dropout",
    "precision",
    "eval_fraction",
)


def default_warmup(steps: int) -> int:
    """Warm-up of a run of ``steps`` updates when none is given: 10% of the run, at least 1
    and at most 100 steps -- so a 20-step run reaches its peak lr at step 2 and then decays,
    and long runs keep the usual 100."""
    return max(1, min(100, steps // 10))


@dataclass
class TrainConfig:
    """Settings of ``gpt2 train`` (flag names without dashes).

    Example:
        >>> from gpt2_core.training import TrainConfig, learning_rate
        >>> cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10)
        >>> round(learning_rate(cfg, 0), 6), learning_rate(cfg, 10), round(learning_rate(cfg, 100), 6)
        (0.0001, 0.001, 0.0001)
        >>> TrainConfig(steps=20).warmup_steps   # default: 10% of the run, between 1 and 100
        2
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None: default_warmup(steps)
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

        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "block_size",
            "eval_every",
            "save_every",
            "eval_batches",
            "log_every",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                fail(f"{name} must be an int >= 1, got {v!r}")
        if self.warmup_steps is None and isinstance(self.steps, int):
            self.warmup_steps = default_warmup(self.steps)
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

    def model_overrides(self) -> dict[str, float]:
        """Config fields to set on the model: the three dropouts when ``dropout`` is set."""
        if self.dropout is None:
            return {}
        return dict.fromkeys(DROPOUT_FIELDS, self.dropout)

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
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= resume_from_step
            ]
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


def plot_loss_curve(
    metrics: list[dict[str, Any]], path: str | os.PathLike, title: str = ""
) -> Path | None:
    """Write a loss-curve PNG (training loss, and eval loss where recorded).

    Without matplotlib it logs a warning saying so and returns None (metrics.jsonl holds the
    same numbers).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "%s not written: matplotlib is not installed (pip install matplotlib, "
            "or the gpt2-zoo[all] extra); the losses are in metrics.jsonl",
            path,
        )
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


# ---------------------------------------------------------------------------- run directories
# OUT/checkpoint-<step>/ holds config.json + model.safetensors (canonical weights),
# optimizer.safetensors (AdamW moments under the same canonical names) and trainer_state.json;
# OUT/last names the newest complete one. One layout for every framework, no pickle.
STATE_FORMAT = "gpt2-zoo-train-state/1"


@dataclass
class TrainResult:
    """What each backend's ``train`` returns.

    Args:
        losses: training loss of every step run in this call (step ``start_step + i + 1``).
        eval_losses: ``{step: held-out loss}`` of the evaluations run in this call.
        start_step: the step the run started from (0, or the resumed checkpoint's step).
        steps: the last completed step.
        model: the trained (unwrapped) model.
    """

    losses: list[float] = field(default_factory=list)
    eval_losses: dict[int, float] = field(default_factory=dict)
    start_step: int = 0
    steps: int = 0
    model: Any = None


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"checkpoint-{step}"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``OUT/last`` (None when the run has none yet)."""
    from gpt2_core.data import DataError

    pointer = Path(out_dir) / "last"
    if not pointer.is_file():
        return None
    path = Path(out_dir) / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise DataError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def check_out_dir(out_dir: str | os.PathLike, resume: bool) -> Path:
    """Create OUT and prove it is writable, before any training; refuse to mix two runs."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output directory {out} is not writable: {e}") from e
    if not resume and ((out / "last").exists() or (out / "metrics.jsonl").exists()):
        raise FileExistsError(
            f"{out} already holds a training run; pass resume=True "
            "(--resume) to continue it or choose another directory"
        )
    return out


def save_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    state_dict: dict[str, Any],
    moments: dict[str, Any],
    config: Any,
    cfg: TrainConfig,
    extra: dict[str, Any],
    rng: str,
) -> Path:
    """Write ``OUT/checkpoint-<step>/`` atomically, then point ``OUT/last`` at it.

    ``rng`` says, for people reading the state, how the backend derives its random streams.
    """
    from gpt2_core import checkpoint as ckpt
    from gpt2_core.formats import safetensors as st
    from gpt2_core.io_utils import atomic_directory

    target = checkpoint_dir(out_dir, step)
    with atomic_directory(target, overwrite=True) as tmp:
        ckpt.save_pretrained(state_dict, config, tmp, "lm")
        st.save_file(moments, tmp / "optimizer.safetensors")
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "adam_step": step,
            "train_config": cfg.to_dict(),
            "rng": rng,
            **extra,
        }
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2) + "\n")
    atomic_write_text(Path(out_dir) / "last", target.name + "\n")
    return target


def check_resume(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume the run saved in ``path`` with settings that would make another run.

    Raises:
        ValueError: naming each setting of :data:`RESUME_FIELDS` that differs, with both values.
    """
    saved = state.get("train_config") or {}
    now = cfg.to_dict()
    changed = [
        f"{k} was {saved[k]!r}, now {now[k]!r}"
        for k in RESUME_FIELDS
        if k in saved and saved[k] != now[k]
    ]
    if changed:
        raise ValueError(
            f"cannot resume the run in {path.parent}: "
            + "; ".join(changed)
            + ". A resumed run must use the settings it started with (they fix the "
            "data order and the schedule): pass the same values, or start a new "
            "run in another OUT"
        )


def read_checkpoint(
    path: Path, cfg: TrainConfig | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(trainer_state, canonical weights, moments) of a checkpoint directory.

    With ``cfg`` (the settings of the run that resumes), :func:`check_resume` runs first.
    """
    from gpt2_core import checkpoint as ckpt
    from gpt2_core.data import DataError
    from gpt2_core.formats import safetensors as st

    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("format") != STATE_FORMAT:
        raise DataError(f"{path}: unknown trainer state format {state.get('format')!r}")
    if cfg is not None:
        check_resume(state, cfg, path)
    _, sd, _ = ckpt.load_pretrained(path, "lm")
    moments = st.load_file(path / "optimizer.safetensors", mmap=False)
    return state, sd, moments


def save_final_model(
    out_dir: str | os.PathLike,
    state_dict: dict[str, Any],
    config: Any,
    generation_config: Any,
    log: MetricsLog | None,
    framework: str,
) -> None:
    """The end of every backend's run: the model (config.json + model.safetensors), its
    generation_config.json and loss.png in OUT -- one layout whatever the framework."""
    from gpt2_core import checkpoint as ckpt

    out = Path(out_dir)
    ckpt.save_pretrained(state_dict, config, out, "lm")
    if generation_config is None:
        from gpt2_core.generation_config import GenerationConfig

        generation_config = GenerationConfig.from_model_config(config)
    generation_config.save_pretrained(out)
    if log is not None:
        plot_loss_curve(log.read(), out / "loss.png", title=f"gpt2-zoo fine-tuning ({framework})")


def progress_bar(total: int, start: int, enabled: bool, desc: str):
    """A tqdm bar of optimizer steps (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
