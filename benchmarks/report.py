"""Print the issue-16 figures found in ``benchmarks/results/`` as one markdown table.

Reads the machine-readable outputs the benchmarks leave there (a ``--json`` file, or the JSON
summary line a script prints last, saved with ``| tee results/NAME.txt``) and prints a row per
figure; a figure whose result file is missing gets a row saying which command makes it, so
the table never silently drops a line.

    python benchmarks/report.py                  # markdown to stdout
    python benchmarks/report.py --results DIR

Covered so far: load time and peak RSS per framework / preset / dtype
(``bench_load_memory.py``), bf16 vs fp32 torch decoding (``bench_bf16_decode.py``) and int8
vs fp32 decoding (``bench_int8_decode.py --xl --json results/int8_decode.json``). The
decode, prefill and tokenizer figures of the older scripts are in README.md's table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LOAD_RUNS = [
    ("gpt2-medium", "fp32"),
    ("gpt2-medium", "bf16"),
    ("gpt2-large", "fp32"),
    ("gpt2-xl", "fp32"),
]
FRAMEWORKS = ("torch", "tf", "flax")


def last_json(path: Path):
    """The JSON document of a ``--json`` file, or the last JSON line of a saved stdout."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def load_rows(results: Path) -> list[str]:
    rows = []
    for preset, dtype in LOAD_RUNS:
        name = f"load_memory_{preset}" + ("" if dtype == "fp32" else f"_{dtype}") + ".json"
        path = results / name
        data = last_json(path) if path.is_file() else None
        found = {r["framework"]: r for r in data or []}
        for fw in FRAMEWORKS:
            label = f"`from_pretrained` {fw}, {preset} {dtype}"
            r = found.get(fw)
            if r is None:
                cmd = (
                    f"`bench_load_memory.py --preset {preset} --dtype {dtype} --framework {fw} "
                    f"--json results/{name}`"
                )
                rows.append(f"| {label} | not measured | <= 1.1x | run {cmd} |")
                continue
            ok = "met" if r["x_weights"] <= 1.1 else "NOT met"
            rows.append(
                f"| {label} | peak RSS above idle {r['peak_above_idle_gb']:.2f} GB = "
                f"{r['x_weights']:.2f}x the {r['weights_gb']:.2f} GB of weights; "
                f"{r['seconds']:.1f} s | <= 1.1x | {ok} |"
            )
    return rows


def bf16_rows(results: Path) -> list[str]:
    path = results / "bf16_decode_torch_t1.txt"
    data = last_json(path) if path.is_file() else None
    if not data:
        return [
            "| torch bf16 / fp32 decode | not measured | >= 1.8x | run "
            "`bench_bf16_decode.py --threads 1 | tee results/bf16_decode_torch_t1.txt` |"
        ]
    step_ok = "met" if data["step_ratio"] >= 1.8 else "NOT met"
    gen_ok = "met" if data["ratio"] >= 1.8 else "NOT met"
    n = len(data["rounds"])
    return [
        f"| torch bf16 / fp32, decoding steps (GPT-2 small, {data['threads']} thread) | "
        f"{data['bf16_step_tok_s']:.1f} / {data['fp32_step_tok_s']:.1f} tok/s = "
        f"{data['step_ratio']:.2f}x (median of {n} rounds) | >= 1.8x | {step_ok} |",
        f"| torch bf16 / fp32, whole `generate` ({data['prompt']}-token prompt + "
        f"{data['new_tokens']} tokens) | {data['bf16_tok_s']:.1f} / {data['fp32_tok_s']:.1f} "
        f"tok/s = {data['ratio']:.2f}x | >= 1.8x | {gen_ok} |",
    ]


def int8_rows(results: Path) -> list[str]:
    path = results / "int8_decode.json"
    data = last_json(path) if path.is_file() else None
    if not data:
        return [
            "| int8 / fp32 decode | not measured | >= 3x; XL >= 10 tok/s | run "
            "`bench_int8_decode.py --xl --json results/int8_decode.json` |"
        ]
    rows, how = [], f"median of {data['rounds']} rounds, {data['threads']} threads"
    for r in data["kernel"]:
        t = r["tok_s"]
        ok = "met" if r["int8/fp32"] >= 3 else "NOT met"
        rows.append(
            f"| fused decode step int8 / fp32 ({r['preset']}, batch 1) | "
            f"{t['int8']:.1f} / {t['fp32']:.1f} tok/s = {r['int8/fp32']:.2f}x ({how}) | "
            f">= 3x | {ok} |"
        )
        if r["preset"] == "gpt2-xl":
            ok = "met" if t["int8"] >= 10 else "NOT met"
            rows.append(
                f"| GPT-2 XL int8 decode step | {t['int8']:.1f} tok/s | >= 10 tok/s | {ok} |"
            )
    for r in data["generate"]:
        t = r["tok_s"]
        ok = "met" if r["int8/fp32"] >= 3 else "NOT met"
        rows.append(
            f"| {r['framework']} `generate` int8 / fp32 (GPT-2 small, "
            f"{data['new_tokens']} tokens) | {t['int8']:.1f} / {t['fp32']:.1f} tok/s = "
            f"{r['int8/fp32']:.2f}x | >= 3x | {ok} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    print("| figure | measured | target | status |")
    print("|---|---|---|---|")
    for row in [*load_rows(args.results), *bf16_rows(args.results), *int8_rows(args.results)]:
        print(row)


if __name__ == "__main__":
    main()
