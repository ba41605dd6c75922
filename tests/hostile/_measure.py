"""Run one action on a hostile case in this (fresh) process and report peak RSS and time.

    python tests/hostile/_measure.py convert SRC OUT      # gpt2 convert SRC OUT --to safetensors
    python tests/hostile/_measure.py read SRC             # checkpoint.read_state_dict(SRC)

The address space is capped at 3 GiB, so a regression cannot take the machine down; the last
stdout line is JSON ``{"rc", "maxrss_mb", "seconds"}`` and the error line is on stderr.
"""

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def main() -> int:
    action, *args = sys.argv[1:]
    t0 = time.perf_counter()
    if action == "convert":
        from conversion import cli

        rc = cli.main(["convert", args[0], args[1], "--to", "safetensors"])
    else:
        from gpt2_core import checkpoint

        try:
            checkpoint.read_state_dict(args[0])
            rc = 0
        except Exception as e:
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
    seconds = time.perf_counter() - t0
    print(
        json.dumps({"rc": rc, "maxrss_mb": round(peak_rss_mb(), 1), "seconds": round(seconds, 2)})
    )
    return 0


def peak_rss_mb() -> float:
    """This process's peak RSS. /proc's VmHWM belongs to the address space made by exec;
    ru_maxrss is inherited from the parent across fork + exec (a big pytest parent would
    show through)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
