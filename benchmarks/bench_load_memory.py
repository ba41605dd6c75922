"""Peak memory and time of ``from_pretrained`` per framework, on random GPT-2-sized weights.

Builds a seeded fp32 safetensors checkpoint of a preset's shape (random weights: loading does
not care what the numbers are) and loads it in a fresh subprocess per framework. Each child
imports its framework first, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
then runs ``GPT2LMHeadModel.from_pretrained`` and reports

    peak RSS above idle = VmHWM after the load - VmRSS before it

and its time, both for ``from_pretrained`` alone and until every weight has been read once
("ready": transformers maps a safetensors file and reads nothing until first use; file pages
it has read count in its RSS like any other).

as a multiple of the loaded weights' bytes (the parameters in the requested dtype, tied head
counted once). Target (issue 16): <= 1.1x, i.e. one copy of the weights plus a little. With
``--hf-python`` (or ``$GPT2_ZOO_HF_PYTHON``) transformers' own ``from_pretrained`` gets a row too.

    python benchmarks/bench_load_memory.py --quick                  # gpt2-medium, all frameworks
    python benchmarks/bench_load_memory.py --preset gpt2-xl --framework torch --dtype bf16
    python benchmarks/bench_load_memory.py --workdir /tmp/ckpt ...  # reuse the checkpoint

Memory figures are stable from run to run; times depend on the page cache (the child reads a
file the builder just wrote, so it is usually cached) and on other load on the machine.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, re, sys, time
framework, path, dtype = sys.argv[1:4]

def status(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024

if framework == "torch":
    import torch
    from gpt2_torch import GPT2LMHeadModel
    kwargs = {"dtype": {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]}
elif framework == "tf":
    import tensorflow as tf
    from gpt2_tf import GPT2LMHeadModel
    kwargs = {"dtype": dtype}
    tf.zeros(1)  # start the runtime before measuring idle
elif framework == "flax":
    import jax, jax.numpy as jnp
    from gpt2_flax import GPT2LMHeadModel
    kwargs = {"param_dtype": {"fp32": jnp.float32, "bf16": jnp.bfloat16}[dtype]}
    jnp.zeros(1).block_until_ready()
elif framework == "transformers":  # run by --hf-python's interpreter
    import torch
    from transformers import GPT2LMHeadModel
    kwargs = {"torch_dtype": {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]}
else:
    raise SystemExit(f"unknown framework {framework}")
if framework != "transformers":
    import gpt2_core.checkpoint  # noqa: F401  (the readers' imports are not part of the load)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
idle = status("VmRSS")
t = time.perf_counter()
model = GPT2LMHeadModel.from_pretrained(path, **kwargs)
if framework == "flax":  # device_put is asynchronous: time and measure the finished copies
    from flax import nnx
    jax.block_until_ready(nnx.state(model))
secs = time.perf_counter() - t
# then read every weight once: transformers maps a safetensors file and reads nothing until
# first use, so "ready" (load + one read of each weight) is the time that compares
if framework in ("torch", "transformers"):
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
elif framework == "tf":
    for v in model.weights:
        tf.reduce_sum(v).numpy()
else:
    jax.block_until_ready([x.sum() for x in jax.tree.leaves(nnx.state(model, nnx.Param))])
ready = time.perf_counter() - t
hwm = status("VmHWM")
after = status("VmRSS")
print("RESULT " + json.dumps({"seconds": secs, "ready_seconds": ready, "idle": idle, "hwm": hwm, "after": after,
                              "hwm_reset": reset}))
"""


def build(preset: str, directory: Path) -> int:
    """Write a random fp32 checkpoint of ``preset``'s shape (unless present); its weight bytes."""
    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config
    from gpt2_core.formats.safetensors import read_header
    from gpt2_core.init import random_state_dict

    if not (directory / "model.safetensors").is_file():
        cfg = GPT2Config.from_pretrained(preset)
        t = time.perf_counter()
        sd = random_state_dict(cfg, "lm", seed=0)
        checkpoint.save_pretrained(sd, cfg, directory, "lm", max_shard_size="100GB")
        del sd
        print(f"built {preset} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    header, _, _ = read_header(directory / "model.safetensors")
    return sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--framework", default="torch,tf,flax", help="comma-separated")
    ap.add_argument("--preset", default="gpt2-xl")
    ap.add_argument("--quick", action="store_true", help="gpt2-medium (1.4 GB) instead")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--workdir", default=None, help="where the checkpoint is built (kept)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument(
        "--hf-python",
        default=os.environ.get("GPT2_ZOO_HF_PYTHON", ""),
        help="python with transformers 4.57.6: adds a transformers row (default "
        "$GPT2_ZOO_HF_PYTHON; unset: no such row)",
    )
    args = ap.parse_args()
    preset = "gpt2-medium" if args.quick else args.preset
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="gpt2-load-bench-")
    work = Path(args.workdir or tmp.name) / preset
    try:
        file_bytes = build(preset, work)
        weights = file_bytes // (2 if args.dtype == "bf16" else 1)
        print(
            f"{preset}: {file_bytes / 1e9:.2f} GB fp32 safetensors, loaded as {args.dtype} "
            f"({weights / 1e9:.2f} GB of weights)"
        )
        rows = []
        frameworks = args.framework.split(",")
        if args.hf_python and Path(args.hf_python).is_file() and "transformers" not in frameworks:
            frameworks.append("transformers")
        elif "transformers" not in frameworks:
            print("  transformers: no row (pass --hf-python or set GPT2_ZOO_HF_PYTHON)")
        for fw in frameworks:
            python = args.hf_python if fw == "transformers" else sys.executable
            proc = subprocess.run(
                [python, "-c", CHILD, fw, str(work), args.dtype],
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"  {fw}: failed\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(lines[0][7:])
            above = r["hwm"] - r["idle"]
            rows.append(
                {
                    "framework": fw,
                    "preset": preset,
                    "dtype": args.dtype,
                    "weights_gb": round(weights / 1e9, 3),
                    "seconds": round(r["seconds"], 2),
                    "ready_seconds": round(r["ready_seconds"], 2),
                    "idle_rss_gb": round(r["idle"] / 1e9, 3),
                    "peak_above_idle_gb": round(above / 1e9, 3),
                    "x_weights": round(above / weights, 3),
                    "after_load_x_weights": round((r["after"] - r["idle"]) / weights, 3),
                    "hwm_reset": r["hwm_reset"],
                }
            )
            print(
                f"  {fw:<6} {r['seconds']:6.2f}s (ready {r['ready_seconds']:6.2f}s)  peak RSS above idle {above / 1e9:5.2f} GB = "
                f"{above / weights:4.2f}x the weights (idle {r['idle'] / 1e9:.2f} GB; "
                f"after load {(r['after'] - r['idle']) / weights:.2f}x)",
                flush=True,
            )
        print(json.dumps({"preset": preset, "dtype": args.dtype, "rows": rows}))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
