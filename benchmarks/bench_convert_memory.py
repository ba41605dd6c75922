"""Peak memory and time of `gpt2 convert` on GPT-2 XL-sized random weights.

Builds a seeded GPT-2 XL checkpoint (1.56 B parameters, 6.2 GB fp32) as sharded safetensors,
then converts it to every format in a fresh subprocess each and reports the child's peak RSS
as a multiple of the weights' size. The target is "near one copy of the weights": safetensors
sources are memory-mapped (their touched pages count in RSS), and writers stream one tensor
at a time.

    python benchmarks/bench_convert_memory.py            # GPT-2 XL (needs ~20 GB of disk)
    python benchmarks/bench_convert_memory.py --quick    # gpt2-medium
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpt2_core import checkpoint
from gpt2_core.config import GPT2Config
from gpt2_core.init import random_state_dict

# VmHWM (peak resident set of this process image) rather than ru_maxrss, which Linux carries
# over from the parent across fork + exec.
CHILD = """
import re, sys, time
from conversion.convert import convert
t = time.perf_counter()
convert(sys.argv[1], sys.argv[2], to=sys.argv[3], max_shard_size="2GB")
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print("RESULT", time.perf_counter() - t, hwm)
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="gpt2-medium instead of gpt2-xl")
    ap.add_argument("--targets", default="safetensors,pytorch,tf,flax")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    preset = "gpt2-medium" if args.quick else "gpt2-xl"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpt2-convert-bench-"))
    try:
        cfg = GPT2Config.from_pretrained(preset)
        t = time.perf_counter()
        sd = random_state_dict(cfg, "lm", seed=0)
        weights = sum(v.nbytes for k, v in sd.items() if k != "lm_head.weight")
        src = work / "src"
        checkpoint.save_pretrained(sd, cfg, src, "lm", max_shard_size="2GB")
        del sd
        print(
            f"{preset}: {cfg.num_parameters('lm'):,} parameters, {weights / 1e9:.2f} GB fp32 "
            f"(built and saved in {time.perf_counter() - t:.0f}s)"
        )
        rows = []
        for to in args.targets.split(","):
            out = work / f"out-{to}"
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(src), str(out), to],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                print(proc.stderr[-2000:])
                raise SystemExit(f"convert --to {to} failed")
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
            secs, rss = (float(x) for x in line.split()[1:])
            rows.append(
                {
                    "target": to,
                    "seconds": round(secs, 1),
                    "peak_rss_gb": round(rss / 1e9, 2),
                    "x_weights": round(rss / weights, 2),
                }
            )
            print(
                f"  --to {to:<12} {secs:6.1f}s  peak RSS {rss / 1e9:5.2f} GB = "
                f"{rss / weights:4.2f}x the weights  ({weights / secs / 1e9:.2f} GB/s)"
            )
            shutil.rmtree(out)
        parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(
            json.dumps(
                {
                    "preset": preset,
                    "weights_gb": round(weights / 1e9, 2),
                    "builder_peak_rss_gb": round(parent / 1e9, 2),
                    "rows": rows,
                }
            )
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
