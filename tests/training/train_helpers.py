"""Shared set-up of the training tests: one corpus, one config, one set of initial weights.

Every framework trains the same tiny model (``tiny_config``, weights ``random_state_dict`` with
std 0.3) on the same byte-tokenised text (the project's docs, snapshotted once per session),
so their losses can be compared step by step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conversion.train import ByteTokenizer
from gpt2_core.data import load_training_data
from gpt2_core.formats import safetensors as st
from gpt2_core.init import random_state_dict, tiny_config
from gpt2_core.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL_CONFIG = tiny_config()  # 2 layers, n_embd 36, 3 heads, vocab 257, 32 positions, dropout 0
BLOCK = 16
#: the run every framework does (20 updates of 2 micro-steps of 4 blocks of 16 tokens)
CFG = dict(
    steps=20,
    batch_size=4,
    grad_accum=2,
    block_size=BLOCK,
    lr=3e-3,
    warmup_steps=5,
    weight_decay=0.1,
    grad_clip=1.0,
    eval_every=10,
    eval_batches=8,
    save_every=10,
    seed=0,
)
#: parity tolerances (see docs/training.md, "How close the frameworks are")
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5


def train_config(**changes) -> TrainConfig:
    return TrainConfig(**{**CFG, **changes})


def initial_weights() -> dict[str, np.ndarray]:
    return random_state_dict(MODEL_CONFIG, "lm", seed=0, std=0.3)


#: 40 kB of the project's docs, frozen: the cross-framework weight differences after 20 steps
#: depend on the data (1.6e-6 to 7.5e-5 seen as the docs changed), so the text must not move
#: with every docs edit
CORPUS = ROOT / "tests" / "fixtures" / "training" / "corpus.md"


def write_corpus(directory: Path) -> Path:
    """A copy of the frozen corpus (:data:`CORPUS`) in ``directory``."""
    path = directory / "corpus.md"
    path.write_text(CORPUS.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def datasets(corpus: Path):
    return load_training_data(
        corpus, ByteTokenizer(), BLOCK, 0.1, n_positions=MODEL_CONFIG.n_positions
    )


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in metrics(out)]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, np.ndarray]:
    return st.load_file(Path(out) / "model.safetensors", mmap=False)


def weight_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max |a - b| over every weight except the attention key bias, max over the key bias).

    The key bias has an exactly-zero true gradient (softmax ignores a shift shared by all keys
    of a query), so what it receives is rounding noise that Adam normalises to steps of up to
    lr: it is compared separately, with a tolerance of lr * steps.
    """
    C = MODEL_CONFIG.n_embd
    rest, key_bias = 0.0, 0.0
    for k in a:
        d = np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))
        if k.endswith("attn.c_attn.bias"):
            key_bias = max(key_bias, float(d[C : 2 * C].max()))
            d = np.concatenate([d[:C], d[2 * C :]])
        rest = max(rest, float(d.max()))
    return rest, key_bias


def subprocess_env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", **extra)
    return env


def run(cmd: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(**env), cwd=ROOT
    )
    if proc.returncode:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


PYTHON = sys.executable


# ----------------------------------------------------------------------------- per framework
def fresh_model(framework: str, seed: int = 0, **config_changes):
    """The framework's GPT2LMHeadModel with ``random_state_dict(seed, std 0.3)`` weights."""
    config = MODEL_CONFIG.copy(**config_changes) if config_changes else MODEL_CONFIG
    sd = random_state_dict(config, "lm", seed=seed, std=0.3)
    if framework == "torch":
        from gpt2_torch import GPT2LMHeadModel, weights

        model = GPT2LMHeadModel(config)
        weights.load_canonical(model, sd)
        return model
    if framework == "tf":
        from gpt2_tf import GPT2LMHeadModel, load_canonical

        model = GPT2LMHeadModel(config)
        load_canonical(model, sd)
        return model
    from gpt2_flax import GPT2LMHeadModel

    return GPT2LMHeadModel.from_state_dict(config, sd)


def train_fn(framework: str):
    if framework == "torch":
        from gpt2_torch.training import train
    elif framework == "tf":
        from gpt2_tf.training import train
    else:
        from gpt2_flax.training import train
    return train


class Crash(RuntimeError):
    """Raised from ``on_step`` to simulate a run dying mid-way."""


def crash_at(step: int):
    def on_step(s, record):
        if s == step:
            raise Crash(f"simulated crash after step {s}")

    return on_step
