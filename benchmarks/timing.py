"""The benchmarks' one timing helper: wall and CPU seconds, medians, ratios, machine load.

Every ``bench_*.py`` times its own side with these functions, so that "ms", "tok/s" and "x" mean
the same thing in every row of benchmarks/README.md:

- :func:`timed` runs a call once and returns its wall and process-CPU seconds and its result;
- :func:`best_of` / :func:`median_of` repeat a call (after a warm-up call) and reduce the wall
  times;
- :func:`median_ratio` is the figure of record for A-vs-B rows: sides are timed in alternating
  rounds and the median of the per-round ratios is reported, so that a slow patch of a shared
  machine hits both sides;
- :func:`load_average` tells a reader whether the machine was idle (a 2-core machine with a
  1-minute load above ~0.5 gives figures that swing 10-20%).

The transformers side of a comparison runs in another interpreter (benchmarks/json_server.py);
its scripts time with the same ``perf_counter`` / ``process_time`` pair.

Example:
    >>> from timing import median_of, timed
    >>> wall, cpu, value = timed(lambda: sum(range(1000)))
    >>> value
    499500
    >>> median_of(lambda: sum(range(1000)), repeats=3) > 0
    True
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``fn()`` once: (wall seconds, process CPU seconds, its return value)."""
    t, c = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - t, time.process_time() - c, value


def wall_times(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (after one untimed call when ``warmup``)."""
    if warmup:
        fn()
    return [timed(fn)[0] for _ in range(repeats)]


def best_of(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """The fastest wall time of ``repeats`` calls (for steady kernels: noise only adds time)."""
    return min(wall_times(fn, repeats, warmup))


def median_of(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """The median wall time of ``repeats`` calls."""
    return statistics.median(wall_times(fn, repeats, warmup))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[i] / b[i]`` (alternating rounds of two sides)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same number (>0) of rounds per side, got {len(a)}, {len(b)}")
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def load_average() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def load_note(threshold: float = 0.5) -> str:
    """A line for a report: the load average, flagged when the machine was not idle."""
    load = load_average()
    flag = "" if not load > threshold else " - NOT IDLE: figures are not of record"
    return f"1-min load average: {load:.2f}{flag}"
