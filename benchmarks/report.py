"""Print the issue-16 figures found in ``benchmarks/results/`` as one markdown table.

Reads the machine-readable outputs the benchmarks leave there (a ``--json`` file, or the JSON
summary line a script prints last, saved with ``| tee results/NAME.txt``) and prints a row per
figure; a figure whose result file is missing gets a row saying which command makes it, so
the table never silently drops a line.

    python benchmarks/report.py                  # markdown to stdout
    python benchmarks/report.py --results DIR

Covered: fp32 decode, compiled prefill and eager call vs transformers per framework
(``bench_{torch,tf,flax}_generate.py --json results/generate_*.json``, prefill 256 and 512),
Flax vs torch decode (``bench_flax_generate.py --vs-torch --json``), the tokenizer against
tiktoken (``bench_tokenizer.py --json``), load time and peak RSS per framework / preset / dtype
(``bench_load_memory.py``), bf16 vs fp32 torch and TF decoding (``bench_bf16_decode.py``) and int8
vs fp32 decoding (``bench_int8_decode.py --xl --json results/int8_decode.json``).
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


def _result(results: Path, name: str):
    path = results / name
    return last_json(path) if path.is_file() else None


def _missing(label: str, target: str, cmd: str) -> str:
    return f"| {label} | not measured | {target} | run `{cmd}` |"


def _status(ok: bool) -> str:
    return "met" if ok else "NOT met"


GENERATE_TARGETS = {"torch": 2.0, "tf": 1.2, "flax": 2.0}  # decode speed-up vs transformers


def generate_rows(results: Path) -> list[str]:
    rows = []
    for fw in FRAMEWORKS:
        d = _result(results, f"generate_{fw}.json")
        label = f"{fw} greedy decode vs transformers (GPT-2 small fp32, 16 + 64 tokens)"
        target = f">= {GENERATE_TARGETS[fw]}x"
        if not d:
            rows.append(
                _missing(label, target, f"bench_{fw}_generate.py --json results/generate_{fw}.json")
            )
            continue
        if "hf_decode_tok_s" not in d:
            rows.append(f"| {label} | {d['decode_tok_s']:.1f} tok/s | {target} | no transformers |")
        else:
            rows.append(
                f"| {label} | {d['decode_tok_s']:.1f} / {d['hf_decode_tok_s']:.1f} tok/s = "
                f"{d['decode_ratio']:.2f}x | {target} | "
                f"{_status(d['decode_ratio'] >= GENERATE_TARGETS[fw])} |"
            )
    for fw in ("tf", "flax"):
        for n in (256, 512):
            name = f"generate_{fw}.json" if n == 256 else f"generate_{fw}_p{n}.json"
            d = _result(results, name)
            label = f"{fw} compiled forward, prefill {n} (all logits) vs transformers'"
            if not d or d.get("prefill_len") != n:
                rows.append(
                    _missing(
                        label,
                        "<= 1.0x its time",
                        f"bench_{fw}_generate.py --prefill {n} --json results/{name}",
                    )
                )
                continue
            if "hf_prefill_compiled_s" not in d:
                continue
            # the median of per-round ratios when the run interleaved the sides
            r = d.get(
                "prefill_compiled_ratio", d["prefill_compiled_s"] / d["hf_prefill_compiled_s"]
            )
            how = ", median of per-round ratios" if "prefill_compiled_ratio" in d else ""
            rows.append(
                f"| {label} | {d['prefill_compiled_s'] * 1e3:.0f} / "
                f"{d['hf_prefill_compiled_s'] * 1e3:.0f} ms: {r:.2f}{how} (generate's own prefill "
                f"{d['prefill_generate_s'] * 1e3:.0f} ms) | <= 1.0 | {_status(r <= 1.0)} |"
            )
            if fw == "tf" and "hf_eager_s" in d:
                r = d.get("eager_ratio", d["eager_s"] / d["hf_eager_s"])
                how = ", median of per-round ratios" if "eager_ratio" in d else ""
                rows.append(
                    f"| tf eager call, {n} tokens, vs transformers' | {d['eager_s'] * 1e3:.0f} / "
                    f"{d['hf_eager_s'] * 1e3:.0f} ms: {r:.2f}{how} | <= 1.0 | "
                    f"{_status(r <= 1.0)} |"
                )
    d = _result(results, "generate_torch.json")
    if d and "hf_eager_s" in d:
        r = d["eager_s"] / d["hf_eager_s"]
        rows.append(
            f"| torch forward, prefill {d['prefill_len']} vs transformers' | "
            f"{d['eager_s'] * 1e3:.0f} / {d['hf_eager_s'] * 1e3:.0f} ms = {r:.2f} | <= 1.0 | "
            f"{_status(r <= 1.0)} |"
        )
    d = _result(results, "flax_vs_torch.json")
    label = "flax fp32 decode / torch fp32 decode (GPT-2 small, same run)"
    if not d:
        rows.append(
            _missing(
                label,
                ">= 0.9x",
                "bench_flax_generate.py --vs-torch --json results/flax_vs_torch.json",
            )
        )
    else:
        # fp32's default engine: the FFI kernel (gpt2_flax._cpu_kernels.FP32_KERNEL_ENV)
        t, r = d["tok_s"], d["ratios"]["flax fp32 kernel / torch fp32"]
        rx = d["ratios"]["flax fp32 XLA loop / torch fp32"]
        rows.append(
            f"| {label} | {t['flax fp32 kernel']:.1f} / {t['torch fp32']:.1f} tok/s = {r:.2f}x "
            f"(fp32's default, the FFI kernel in the jitted loop; median of {d['rounds']} "
            f"rounds, {d['threads']} threads; XLA's own loop {t['flax fp32 XLA loop']:.1f} "
            f"tok/s = {rx:.2f}x) | >= 0.9x | {_status(r >= 0.9)} |"
        )
        rows.append(
            f"| flax bf16 / fp32 decode (reported) | both on the kernel "
            f"{d['ratios']['flax bf16 kernel / flax fp32 kernel']:.2f}x "
            f"({t['flax bf16 kernel']:.1f} / {t['flax fp32 kernel']:.1f} tok/s); both on XLA's "
            f"loop {d['ratios']['flax bf16 XLA loop / flax fp32 XLA loop']:.2f}x | reported | - |"
        )
    return rows


def tokenizer_rows(results: Path) -> list[str]:
    d = _result(results, "tokenizer.json")
    if not d:
        return [
            _missing(
                "tokenizer vs tiktoken",
                ">= 1.0x",
                "bench_tokenizer.py --json results/tokenizer.json",
            )
        ]
    return [
        f"| `GPT2TokenizerFast.encode` / tiktoken `encode_ordinary` (1 thread) | "
        f"{d['fast_mb_s']:.2f} / {d['tiktoken_mb_s']:.2f} MB/s = {d['fast_vs_tiktoken']:.2f}x | "
        f">= 1.0x | {_status(d['fast_vs_tiktoken'] >= 1.0)} |",
        f"| `encode_batch`, {d['threads']} threads / 1 thread | "
        f"{d['batch_threads_vs_one']:.2f}x ({d['batch_cores_busy']:.2f} cores busy; tiktoken "
        f"{d['tiktoken_batch_threads_vs_one']:.2f}x) | >= 1.6x | "
        f"{_status(d['batch_threads_vs_one'] >= 1.6)} |",
    ]


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
            hf = found.get("transformers")
            vs = ""
            if hf is not None:
                vs = f" (transformers {hf['seconds']:.1f} s, {hf['x_weights']:.2f}x)"
                if fw == "torch" and preset == "gpt2-xl":
                    ok += f"; time {_status(r['seconds'] <= hf['seconds'])}"
            rows.append(
                f"| {label} | peak RSS above idle {r['peak_above_idle_gb']:.2f} GB = "
                f"{r['x_weights']:.2f}x the {r['weights_gb']:.2f} GB of weights; "
                f"{r['seconds']:.1f} s{vs} | <= 1.1x"
                + ("; time <= transformers'" if fw == "torch" and preset == "gpt2-xl" else "")
                + f" | {ok} |"
            )
    return rows


def bf16_rows(results: Path) -> list[str]:
    rows = []
    for fw in ("torch", "tf"):
        data = None
        # idle 2 threads first
        for name in (f"bf16_decode_{fw}.txt", f"bf16_decode_{fw}_t1.txt"):
            path = results / name
            data = last_json(path) if path.is_file() else None
            if data:
                break
        if not data:
            rows.append(
                f"| {fw} bf16 / fp32 decode | not measured | >= 1.8x | run "
                f"`bench_bf16_decode.py --framework {fw} | tee results/bf16_decode_{fw}.txt` |"
            )
            continue
        step_ok = "met" if data["step_ratio"] >= 1.8 else "NOT met"
        gen_ok = "met" if data["ratio"] >= 1.8 else "NOT met"
        n = len(data["rounds"])
        rows += [
            f"| {fw} bf16 / fp32, decoding steps (GPT-2 small, {data['threads']} threads) | "
            f"{data['bf16_step_tok_s']:.1f} / {data['fp32_step_tok_s']:.1f} tok/s = "
            f"{data['step_ratio']:.2f}x (median of {n} rounds) | >= 1.8x | {step_ok} |",
            f"| {fw} bf16 / fp32, whole `generate` ({data['prompt']}-token prompt + "
            f"{data['new_tokens']} tokens) | {data['bf16_tok_s']:.1f} / {data['fp32_tok_s']:.1f} "
            f"tok/s = {data['ratio']:.2f}x | >= 1.8x | {gen_ok} |",
        ]
    return rows


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
    sections = [generate_rows, tokenizer_rows, load_rows, bf16_rows, int8_rows]
    for row in [r for section in sections for r in section(args.results)]:
        print(row)


if __name__ == "__main__":
    main()
