"""``gpt2 train``: causal-LM fine-tuning in any framework, on one device or many.

This module turns the command line into the framework-neutral pieces -- a
:class:`gpt2_core.training.TrainConfig`, the packed datasets of :mod:`gpt2_core.data` and the
model's config and weights -- and hands them to the backend's own loop:
:func:`gpt2_torch.training.train` (DDP / FSDP2 under torchrun),
:func:`gpt2_tf.training.train` (``tf.distribute`` strategies) or
:func:`gpt2_flax.training.train` (a ``jax.sharding.Mesh``). Every input problem (missing or
empty data, a block longer than ``n_positions``, an unwritable OUT, a tokenizer the model's
vocabulary cannot hold) is raised before the model is built.

Example:
    $ gpt2 train --framework torch --model gpt2 --data 'corpus/*.txt' runs/ft --steps 1000
    $ torchrun --nproc_per_node 4 -m conversion train --framework torch --strategy fsdp ...
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_core.config import GPT2Config
from gpt2_core.data import DataError, load_training_data
from gpt2_core.training import TrainConfig

logger = logging.getLogger("gpt2.train")

FRAMEWORKS = ("torch", "tf", "flax")
STRATEGIES = {
    "torch": ("none", "ddp", "fsdp"),
    "tf": ("none", "mirrored", "multiworker"),
    "flax": ("none", "dp", "fsdp"),
}


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 and EOS 256: for toy models with a 257-entry vocabulary
    (``gpt2_core.init.tiny_config``), where GPT-2's 50257 ids would not fit."""

    eos_token_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def get_tokenizer(name: str) -> Any:
    if name == "bytes":
        return ByteTokenizer()
    if name == "gpt2":
        from gpt2_core.tokenizer_fast import GPT2TokenizerFast

        return GPT2TokenizerFast.from_pretrained("gpt2")
    raise ValueError(f"unknown tokenizer {name!r}: use gpt2 or bytes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``gpt2 train`` flags (defaults: :class:`gpt2_core.training.TrainConfig`)."""
    d = TrainConfig()
    p.add_argument(
        "out",
        nargs="?",
        default=None,
        help="run directory: checkpoints, metrics.jsonl, loss.png, final model "
        "(anywhere on the line, or as --out)",
    )
    p.add_argument(
        "--out",
        dest="out_option",
        default=None,
        metavar="OUT",
        help="the run directory, as an option",
    )
    p.add_argument("--framework", required=True, choices=FRAMEWORKS)
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint directory, or a preset / hub id (gpt2, gpt2-medium, ...)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="use only the model's config, with a fresh init seeded by --seed",
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        action="extend",
        help="text files, globs or directories (*.txt, *.md inside); repeatable",
    )
    p.add_argument(
        "--tokenizer",
        default="gpt2",
        choices=("gpt2", "bytes"),
        help="gpt2 (default) or bytes (UTF-8 bytes + EOS 256, for 257-token toys)",
    )
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer updates")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="global blocks per micro-step (split across devices / processes)",
    )
    p.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="micro-steps per update (tokens/update = batch * accum * block)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help="cosine floor as a fraction of --lr",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="linear warm-up (default: 10%% of --steps, between 1 and 100)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="AdamW decoupled decay, on matrices only",
    )
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument(
        "--grad-clip",
        type=float,
        default=d.grad_clip,
        help="clip the global gradient norm to this (0: off)",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="data order, dropout and --from-scratch init"
    )
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="set resid/embd/attn dropout (default: the model config's)",
    )
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16", "fp16"))
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=d.eval_fraction,
        help="held-out tail of the token stream",
    )
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument(
        "--strategy",
        default="none",
        help="torch: none|ddp|fsdp (under torchrun); tf: none|mirrored|multiworker; "
        "flax: none|dp|fsdp (with --mesh)",
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="flax: mesh axes, e.g. data=4 or data=2,model=2 (default: all devices "
        "on data when a strategy is set)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="split the CPU into N logical devices (tf / flax; for trying "
        "distributed runs on one machine)",
    )
    p.add_argument(
        "--jax-coordinator",
        default=None,
        help="flax multi-host: HOST:PORT of process 0 (jax.distributed.initialize)",
    )
    p.add_argument("--num-processes", type=int, default=None, help="flax multi-host")
    p.add_argument("--process-id", type=int, default=None, help="flax multi-host")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def resolve_out(args: argparse.Namespace) -> None:
    """Find OUT wherever the user typed it.

    ``--data`` takes several values, so in ``--data "notes/*.txt" out/ --steps 20`` argparse
    hands OUT to --data. When no OUT was given, the last --data value is OUT -- unless it can
    only be data (an existing file, a glob, a directory holding text), which is an error that
    says how to write the line.
    """
    if args.out is not None and args.out_option is not None and args.out != args.out_option:
        raise ValueError(f"two run directories given: {args.out!r} and --out {args.out_option!r}")
    args.out = args.out or args.out_option
    if args.out is not None:
        return
    data = list(args.data)
    last = data[-1] if len(data) > 1 else None
    usage = (
        "name the run directory OUT, e.g. `gpt2 train --framework torch --model ckpt "
        "--data notes/*.txt --out runs/ft` (or put OUT before --data)"
    )
    if last is None:
        raise ValueError(f"missing OUT: {usage}")
    p = Path(last)
    looks_like_data = (
        p.is_file()
        or any(c in last for c in "*?[")
        or p.is_dir()
        and any(p.iterdir())
        and not (p / "metrics.jsonl").exists()
        and not (p / "last").exists()
    )
    if looks_like_data:
        raise ValueError(
            f"missing OUT: the last --data value {last!r} is data, not a run directory; {usage}"
        )
    args.out, args.data = last, data[:-1]


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        beta1=args.beta1,
        beta2=args.beta2,
        grad_clip=args.grad_clip,
        block_size=args.block_size,
        seed=args.seed,
        dropout=args.dropout,
        eval_fraction=args.eval_fraction,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        precision=args.precision,
    )


def _is_main_process(framework: str) -> bool:
    return framework != "torch" or int(os.environ.get("RANK", "0")) == 0


def is_main_process(args: argparse.Namespace) -> bool:
    """Rank 0 under torchrun (which sets RANK), process 0 of a JAX multi-host run, else True:
    only that process prints the summary and warnings."""
    if args.framework == "flax" and args.process_id:
        return False
    return _is_main_process(args.framework)


def _check_out(out: Path, resume: bool) -> None:
    """OUT must be writable and, without --resume, not hold another run (before any work)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output directory {out} is not writable: {e}") from e
    if not resume and ((out / "last").exists() or (out / "metrics.jsonl").exists()):
        raise FileExistsError(
            f"{out} already holds a training run: pass --resume to continue "
            "it, or choose another OUT"
        )


def run(args: argparse.Namespace) -> str:
    """``gpt2 train``: validate everything, build the model, run the backend's loop.

    Returns a one-line summary (losses, held-out loss, where the model went).
    """
    from conversion import frameworks

    fw = args.framework
    frameworks.require(fw, f"gpt2 train --framework {fw}")
    resolve_out(args)
    if args.strategy not in STRATEGIES[fw]:
        raise ValueError(f"--strategy {args.strategy!r} is not one of {STRATEGIES[fw]} for {fw}")
    if args.cpu_devices and fw == "torch":
        raise ValueError(
            "--cpu-devices splits the CPU for tf and flax only; for torch use "
            "torchrun --nproc-per-node N --strategy ddp|fsdp"
        )
    if args.cpu_devices and args.strategy == "none":
        raise ValueError(
            f"--cpu-devices {args.cpu_devices} has no effect without --strategy "
            f"(one of {', '.join(STRATEGIES[fw][1:])}): the devices would sit idle"
        )
    cfg = train_config(args)
    if args.warmup_steps is None:
        logger.info(
            "warm-up: %d steps (10%% of --steps %d, between 1 and 100)", cfg.warmup_steps, cfg.steps
        )
    config = GPT2Config.from_pretrained(args.model, **cfg.model_overrides())
    tokenizer = get_tokenizer(args.tokenizer)
    tok_vocab = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    if tok_vocab > config.vocab_size:
        raise DataError(
            f"the {args.tokenizer} tokenizer has {tok_vocab} ids but the model's "
            f"vocabulary only {config.vocab_size}; use --tokenizer bytes for toy "
            "models with 257 tokens"
        )
    train_ds, eval_ds = load_training_data(
        args.data, tokenizer, cfg.block_size, cfg.eval_fraction, n_positions=config.n_positions
    )
    logger.info(
        "data: %d training blocks, %d held-out blocks of %d tokens",
        len(train_ds),
        len(eval_ds) if eval_ds is not None else 0,
        cfg.block_size,
    )
    out = Path(args.out)
    created = not out.exists()
    if _is_main_process(fw):
        _check_out(out, args.resume)
    progress = not args.no_progress
    runner = {"torch": _run_torch, "tf": _run_tf, "flax": _run_flax}[fw]
    try:
        return runner(args, cfg, config, train_ds, eval_ds, out, progress) + _warmup_note(args, cfg)
    except BaseException:
        # a run that failed before writing anything leaves no empty OUT behind
        if created and _is_main_process(fw) and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _warmup_note(args: argparse.Namespace, cfg: TrainConfig) -> str:
    return (
        f" (warm-up {cfg.warmup_steps} steps, chosen for --steps {cfg.steps})"
        if args.warmup_steps is None
        else ""
    )


def _fresh_weights(config: GPT2Config, seed: int) -> dict[str, np.ndarray]:
    """A seeded canonical init (transformers' scheme): identical in every framework."""
    from gpt2_core.init import random_state_dict

    return random_state_dict(config, "lm", seed=seed)


def _run_torch(args, cfg, config, train_ds, eval_ds, out, progress) -> str:
    from gpt2_torch import GPT2LMHeadModel, weights
    from gpt2_torch.training import train

    if args.from_scratch:
        model = GPT2LMHeadModel(config)
        weights.load_canonical(model, _fresh_weights(config, cfg.seed))
    else:
        model = GPT2LMHeadModel.from_pretrained(args.model, **cfg.model_overrides())
    result = train(
        model,
        train_ds,
        eval_ds,
        cfg,
        out,
        resume=args.resume,
        strategy=args.strategy,
        progress=progress,
    )
    return summary(result, out)


def _run_tf(args, cfg, config, train_ds, eval_ds, out, progress) -> str:
    if args.cpu_devices:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices
        )
    from gpt2_tf import GPT2LMHeadModel, load_canonical
    from gpt2_tf.training import make_strategy, train

    strategy = make_strategy(args.strategy)
    policy = "mixed_bfloat16" if cfg.precision == "bf16" else None
    with strategy.scope():  # variables (model and optimizer) are mirrored across replicas
        if args.from_scratch:
            model = GPT2LMHeadModel(config, dtype=policy)
            load_canonical(model, _fresh_weights(config, cfg.seed))
        else:
            model = GPT2LMHeadModel.from_pretrained(
                args.model, dtype=policy, **cfg.model_overrides()
            )
    result = train(
        model, train_ds, eval_ds, cfg, out, resume=args.resume, strategy=strategy, progress=progress
    )
    return summary(result, out)


def parse_mesh(spec: str | None) -> dict[str, int] | None:
    """``"data=2,model=2"`` -> ``{"data": 2, "model": 2}``."""
    if not spec:
        return None
    axes = {}
    for part in spec.split(","):
        name, _, size = part.partition("=")
        if not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(
                f"--mesh {spec!r}: use axis=size pairs such as data=4 or data=2,model=2"
            )
        axes[name.strip()] = int(size)
    unknown = set(axes) - {"data", "model"}
    if unknown:
        raise ValueError(f"--mesh axes must be data and/or model, got {sorted(unknown)}")
    return axes


def _run_flax(args, cfg, config, train_ds, eval_ds, out, progress) -> str:
    if args.cpu_devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        )
    import jax

    if args.jax_coordinator:
        # multi-host: every host runs the same command with its own --process-id
        jax.distributed.initialize(
            coordinator_address=args.jax_coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    from gpt2_flax import GPT2LMHeadModel
    from gpt2_flax.training import make_mesh, train

    axes = parse_mesh(args.mesh)
    mesh, sharding = make_mesh(args.strategy, axes)
    if args.from_scratch:
        model = GPT2LMHeadModel.from_state_dict(
            config, _fresh_weights(config, cfg.seed), seed=cfg.seed
        )
    else:
        model = GPT2LMHeadModel.from_pretrained(args.model, seed=cfg.seed, **cfg.model_overrides())
    result = train(
        model,
        train_ds,
        eval_ds,
        cfg,
        out,
        resume=args.resume,
        mesh=mesh,
        sharding=sharding,
        progress=progress,
    )
    return summary(result, out)


def summary(result: Any, out: Path) -> str:
    """One line on what a run did."""
    if not result.losses:
        return f"nothing to do: the run in {out} already reached step {result.steps}"
    ev = ""
    if result.eval_losses:
        step, loss = max(result.eval_losses.items())
        ev = f", held-out loss {loss:.4f} (ppl {np.exp(min(loss, 50.0)):.1f}) at step {step}"
    return (
        f"trained steps {result.start_step + 1}-{result.steps}: loss {result.losses[0]:.4f} "
        f"-> {result.losses[-1]:.4f}{ev}; model saved in {out}"
    )
