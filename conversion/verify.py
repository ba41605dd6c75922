"""Run one checkpoint in several frameworks on fixed inputs and compare the outputs.

``gpt2 verify DIR`` loads DIR in every installed framework (and the numpy reference for LM
checkpoints) and prints a parity table; ``gpt2 convert ... --verify`` runs SRC and OUT each in
the framework of its format and prints max|diff| of their outputs.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2_core import checkpoint, naming, reference
from gpt2_core.config import CONFIG_NAME, GPT2Config

#: framework -> backend package
PACKAGES = {"torch": "gpt2_torch", "tf": "gpt2_tf", "flax": "gpt2_flax"}
#: checkpoint format -> the framework that natively reads it
NATIVE = {
    "safetensors": "torch",
    "safetensors-sharded": "torch",
    "pytorch": "torch",
    "pytorch-sharded": "torch",
    "tf": "tf",
    "flax": "flax",
}
#: head -> output field compared
PRIMARY = {
    "base": "last_hidden_state",
    "lm": "logits",
    "double_heads": "logits",
    "sequence_classification": "logits",
    "token_classification": "logits",
    "question_answering": "start_logits",
}


def fixed_inputs(
    config: GPT2Config, batch: int = 2, length: int = 12, seed: int = 1234
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, size=(batch, min(length, config.n_positions)))


def available(framework: str) -> bool:
    try:
        mod = importlib.import_module(PACKAGES[framework])
    except ImportError:
        return False
    return hasattr(mod, "GPT2LMHeadModel")


def load_model(framework: str, directory: str | Path, head: str):
    """``<Class>.from_pretrained(directory)`` in ``framework``, in inference mode."""
    mod = importlib.import_module(PACKAGES[framework])
    cls = getattr(mod, naming.HEADS[naming.head_of(head)])
    model = cls.from_pretrained(str(directory))
    if hasattr(model, "eval"):
        model.eval()
    return model


def run(framework: str, model, head: str, ids: np.ndarray) -> np.ndarray:
    """The head's primary output on ``ids`` as float64 numpy."""
    head = naming.head_of(head)
    x = ids[:, None, :] if head == "double_heads" else ids  # (B, choices=1, T)
    if framework == "torch":
        import torch

        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(x))
        value = out[PRIMARY[head]].float().numpy()
    elif framework == "tf":
        import tensorflow as tf

        out = model(input_ids=tf.constant(x), training=False)
        value = np.asarray(out[PRIMARY[head]])
    else:
        import jax.numpy as jnp

        out = model(input_ids=jnp.asarray(x))
        value = np.asarray(out[PRIMARY[head]])
    return np.asarray(value, dtype=np.float64)


@dataclass
class Row:
    framework: str
    load_s: float
    forward_s: float
    output: np.ndarray


def verify_dir(
    directory: str | Path, frameworks: list[str] | None = None, head: str | None = None
) -> tuple[str, float]:
    """Parity table for one checkpoint across frameworks; returns (table, worst max|diff|)."""
    from conversion.convert import head_from_config

    directory = Path(directory)
    config = GPT2Config.from_json_file(checkpoint.checked_file(directory, CONFIG_NAME))
    head = naming.head_of(head) if head else head_from_config(config)
    ids = fixed_inputs(config)
    frameworks = [f for f in (frameworks or list(PACKAGES)) if available(f)]
    if not frameworks:
        raise RuntimeError("no framework backend is installed (pip install 'gpt2-zoo[all]')")
    rows: list[Row] = []
    for fw in frameworks:
        t0 = time.perf_counter()
        model = load_model(fw, directory, head)
        t1 = time.perf_counter()
        out = run(fw, model, head, ids)
        rows.append(Row(fw, t1 - t0, time.perf_counter() - t1, out))
    outputs = {r.framework: r.output for r in rows}
    if head == "lm":
        _, sd, _ = checkpoint.load_pretrained(directory, "lm", config=config)
        outputs["numpy"] = reference.lm_logits(sd, config, ids)
    names = list(outputs)
    lines = [
        f"{naming.HEADS[head]} from {directory} on fixed ids {ids.shape}, "
        f"output {PRIMARY[head]}: max|diff| between frameworks",
        " " * 8 + "".join(f"{n:>11}" for n in names),
    ]
    worst = 0.0
    for a in names:
        cells = []
        for b in names:
            d = float(np.max(np.abs(outputs[a] - outputs[b])))
            worst = max(worst, d)
            cells.append(f"{d:11.2e}")
        lines.append(f"{a:>8}" + "".join(cells))
    for r in rows:
        lines.append(f"{r.framework:>8}: load {r.load_s:.2f}s, forward {r.forward_s:.3f}s")
    return "\n".join(lines), worst


def verify_pair(src: str | Path, out: str | Path, head: str) -> tuple[float, float]:
    """(max|diff|, max|output|) of SRC and OUT, each run in the framework of its format."""
    fmts = [checkpoint.choose_format(d)[0] for d in (src, out)]
    config = GPT2Config.from_json_file(checkpoint.checked_file(out, CONFIG_NAME))
    ids = fixed_inputs(config)
    outputs = []
    for d, fmt in ((src, fmts[0]), (out, fmts[1])):
        fw = NATIVE[fmt]
        if not available(fw):
            raise RuntimeError(f"--verify needs the {fw} backend to run {d} ({fmt})")
        outputs.append((fw, run(fw, load_model(fw, d, head), head, ids)))
    diff = float(np.max(np.abs(outputs[0][1] - outputs[1][1])))
    print(
        f"verify: {src} [{fmts[0]} in {outputs[0][0]}] vs {out} [{fmts[1]} in {outputs[1][0]}]: "
        f"max|diff| of {PRIMARY[head]} = {diff:.3e}"
    )
    return diff, float(np.max(np.abs(outputs[0][1])))
