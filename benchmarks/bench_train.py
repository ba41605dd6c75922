"""Training throughput (tokens/s) of each framework's ``train`` loop on this machine's CPU.

Every framework trains the same config (default: 4 layers, n_embd 256, 4 heads, GPT-2's 50257
vocabulary, block 128, batch 4, fp32) on the same random tokens, each in its own process (so
TensorFlow, JAX and torch do not compete for threads). Reported per framework:

* first-step time (tracing / XLA compilation included),
* steady tokens/s (median over the steps after the first two),
* ratios to torch, and to transformers' GPT2LMHeadModel with ``torch.optim.AdamW`` when the
  interpreter named by $GPT2_ZOO_HF_PYTHON (run as a subprocess; the project never imports it),
* achieved FLOP/s (6 * params * tokens + attention) as a fraction of this CPU's measured
  float32 matmul rate (a 2048^2 numpy matmul): the compute roof of training.

Usage:
    python benchmarks/bench_train.py            # 30 steps per framework
    python benchmarks/bench_train.py --quick    # a smoke run: 2 layers, block 64, 6 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: an interpreter with transformers 4.57.6; unset: the transformers row is skipped
HF_PYTHON = Path(
    os.environ.get("GPT2_ZOO_HF_PYTHON", "") or "/nonexistent/GPT2_ZOO_HF_PYTHON-unset"
)


def settings(quick: bool) -> dict:
    if quick:
        return dict(n_layer=2, n_embd=128, n_head=4, block=64, batch=2, steps=6)
    return dict(n_layer=4, n_embd=256, n_head=4, block=128, batch=4, steps=30)


# ----------------------------------------------------------------------------- workers
def _tokens(s: dict):
    import numpy as np

    n = (s["steps"] * s["batch"] + 1) * s["block"]
    return np.random.default_rng(0).integers(0, 50257, n).astype(np.int32)


def worker(framework: str, s: dict) -> dict:
    """Train ``s["steps"]`` steps with our loop; per-step seconds from metrics.jsonl."""
    sys.path.insert(0, str(ROOT))
    if framework == "tf":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from gpt2_core.config import GPT2Config
    from gpt2_core.data import PackedDataset
    from gpt2_core.init import random_state_dict
    from gpt2_core.training import TrainConfig

    config = GPT2Config(
        n_layer=s["n_layer"],
        n_embd=s["n_embd"],
        n_head=s["n_head"],
        n_positions=max(1024, s["block"]),
        vocab_size=50257,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    sd = random_state_dict(config, "lm", seed=0)
    ds = PackedDataset(_tokens(s), s["block"])
    cfg = TrainConfig(
        steps=s["steps"],
        batch_size=s["batch"],
        block_size=s["block"],
        warmup_steps=2,
        save_every=10**6,
        eval_every=10**6,
    )
    if framework == "torch":
        from gpt2_torch import GPT2LMHeadModel, weights
        from gpt2_torch.training import train

        model = GPT2LMHeadModel(config)
        weights.load_canonical(model, sd)
    elif framework == "tf":
        from gpt2_tf import GPT2LMHeadModel, load_canonical
        from gpt2_tf.training import train

        model = GPT2LMHeadModel(config)
        load_canonical(model, sd)
    else:
        from gpt2_flax import GPT2LMHeadModel
        from gpt2_flax.training import train

        model = GPT2LMHeadModel.from_state_dict(config, sd)
    params = sum(v.size for k, v in sd.items() if k != "lm_head.weight")
    with tempfile.TemporaryDirectory() as out:
        train(model, ds, None, cfg, out, progress=False)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    seconds = [cfg.tokens_per_step / r["tokens_per_s"] for r in records]
    return {"params": params, "seconds": seconds}


def hf_worker(s: dict) -> dict:
    """transformers' GPT2LMHeadModel, a plain torch AdamW loop (runs inside $GPT2_ZOO_HF_PYTHON)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=s["n_layer"],
        n_embd=s["n_embd"],
        n_head=s["n_head"],
        n_positions=max(1024, s["block"]),
        vocab_size=50257,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.from_numpy(_tokens(s).astype("int64"))
    B, T = s["batch"], s["block"]
    seconds = []
    for step in range(s["steps"]):
        t0 = time.perf_counter()
        x = tokens[step * B * T : (step + 1) * B * T].view(B, T)
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
        seconds.append(time.perf_counter() - t0)
    return {"params": sum(p.numel() for p in model.parameters()), "seconds": seconds}


# ----------------------------------------------------------------------------- driver
def matmul_flops() -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0)


def run_worker(name: str, s: dict) -> dict | None:
    python = str(HF_PYTHON) if name == "transformers" else sys.executable
    if name == "transformers" and not HF_PYTHON.is_file():
        return None
    cmd = [python, __file__, "--worker", name, "--settings", json.dumps(s)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode:
        print(f"  {name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--frameworks", default="torch,tf,flax,transformers")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        s = json.loads(args.settings)
        out = hf_worker(s) if args.worker == "transformers" else worker(args.worker, s)
        print(json.dumps(out))
        return
    s = settings(args.quick)
    tokens_per_step = s["batch"] * s["block"]
    print(
        f"bench_train: {s['n_layer']} layers, n_embd {s['n_embd']}, {s['n_head']} heads, "
        f"vocab 50257, block {s['block']}, batch {s['batch']}, {s['steps']} steps, fp32, "
        f"CPU threads {os.cpu_count()}"
    )
    roof = matmul_flops()
    print(f"machine roof: float32 matmul {roof / 1e9:.1f} GFLOP/s (numpy, 2048^2)")
    rows = {}
    for name in args.frameworks.split(","):
        r = run_worker(name.strip(), s)
        if r is None:
            continue
        steady = r["seconds"][2:] or r["seconds"]
        tok_s = tokens_per_step / statistics.median(steady)
        # 6 N per token for the matmuls (fwd + bwd), + 6 * n_layer * T * C for attention
        flops_tok = 6 * r["params"] + 6 * s["n_layer"] * s["block"] * s["n_embd"]
        rows[name] = dict(first=r["seconds"][0], tok_s=tok_s, frac=tok_s * flops_tok / roof)
    print(
        f"{'framework':<13} {'first step s':>12} {'tokens/s':>10} {'vs torch':>9} "
        f"{'vs HF':>7} {'of roof':>8}"
    )
    base, hf = rows.get("torch", {}).get("tok_s"), rows.get("transformers", {}).get("tok_s")
    for name, r in rows.items():
        vs_t = f"{r['tok_s'] / base:.2f}x" if base else "-"
        vs_h = f"{r['tok_s'] / hf:.2f}x" if hf else "-"
        print(
            f"{name:<13} {r['first']:>12.2f} {r['tok_s']:>10.0f} {vs_t:>9} {vs_h:>7} "
            f"{r['frac']:>7.1%}"
        )


if __name__ == "__main__":
    main()
