"""bf16 weights against fp32 for greedy decoding on CPU (gpt2_torch, or gpt2_tf with
``--framework tf``), same weights, same run.

GPT-2 small shapes (random weights with transformers' init), batch 1, a 16-token prompt and
64 new tokens (``min_new_tokens`` forces them all). The fp32 model and its bf16 copy (torch:
``model.to(torch.bfloat16)``, as ``from_pretrained(dtype=torch.bfloat16)`` gives; TF: the
"bfloat16" Keras policy, as ``from_pretrained(dtype="bfloat16")`` gives) are timed in
alternating rounds, so drifts in the machine's memory bandwidth hit both; the figure is the
median of the per-round ratios. Decoding is bound by reading the weights (498 MB per token in
fp32, 249 MB in bf16), so the ceiling of the ratio is 2x. Target (issue 16): >= 1.8x.

Two figures per round: ``generate`` tok/s (64 tokens over the whole call, the 16-token prefill
included, as bench_torch_generate.py counts it) and the decoding steps alone (a 65-token
generate minus a 1-token one, public API only). On a CPU without native bf16, torch and TF
run the bf16 prompt through the kernel's prefill (one call; their emulated bf16 GEMMs are far
slower); the fp32 prompt runs on MKL (torch) or XLA (TF).

    python benchmarks/bench_bf16_decode.py                  # torch, 5 rounds
    python benchmarks/bench_bf16_decode.py --framework tf   # gpt2_tf
    python benchmarks/bench_bf16_decode.py --quick          # 2 rounds, 32 new tokens
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gpt2_core import GPT2Config, cpu_kernels
from gpt2_core.init import random_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import load_note, median, timed

FRAMEWORK = "torch"


def _generate(model, ids, new: int) -> float:
    """Wall seconds of one greedy ``generate`` of exactly ``new`` tokens."""
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
    if FRAMEWORK == "torch":
        import torch

        def call():
            with torch.no_grad():
                return model.generate(ids, **kw)
    else:

        def call():
            return model.generate(ids, **kw).numpy()

    secs, _, out = timed(call)
    assert out.shape[1] == ids.shape[1] + new
    return secs


def _models(cfg, sd, threads: int, prompt: int):
    """(fp32 model, bf16 model, prompt ids) of the chosen framework."""
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, prompt))
    if FRAMEWORK == "torch":
        import torch

        from gpt2_torch import GPT2LMHeadModel, weights

        torch.set_num_threads(threads)
        fp32 = GPT2LMHeadModel(cfg).eval()
        weights.load_canonical(fp32, sd)
        bf16 = GPT2LMHeadModel(cfg).eval()
        bf16.load_state_dict(fp32.state_dict())
        return fp32, bf16.to(torch.bfloat16), torch.tensor(ids)
    import os

    os.environ["GPT2_ZOO_CPU_THREADS"] = str(threads)
    from gpt2_tf import GPT2LMHeadModel, load_canonical

    fp32, bf16 = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg, dtype="bfloat16")
    load_canonical(fp32, sd)
    load_canonical(bf16, sd)
    return fp32, bf16, ids.astype(np.int32)


def tok_per_s(model, ids, new: int) -> float:
    return new / _generate(model, ids, new)


def step_tok_per_s(model, ids, new: int) -> float:
    """Decoding steps alone: ``new`` more tokens cost this much over a 1-token generate (the
    prefill and the first token), through the public API only."""
    return new / max(_generate(model, ids, new + 1) - _generate(model, ids, 1), 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--framework", choices=["torch", "tf"], default="torch")
    args = ap.parse_args()
    global FRAMEWORK
    FRAMEWORK = args.framework
    rounds, new = (2, 32) if args.quick else (args.rounds, args.new_tokens)
    cfg = GPT2Config.from_pretrained("gpt2")
    fp32, bf16, ids = _models(cfg, random_state_dict(cfg, "lm", seed=0), args.threads, args.prompt)
    print(f"{FRAMEWORK}; CPU kernels: {cpu_kernels.status()}")
    print(load_note())
    for m in (fp32, bf16):  # warm-up: kernel build, compiles of every length, page faults
        for n in (1, new, new + 1):
            _generate(m, ids, n)
    rows = []
    for r in range(rounds):
        a = tok_per_s(fp32, ids, new)
        b = tok_per_s(bf16, ids, new)
        sa = step_tok_per_s(fp32, ids, new)
        sb = step_tok_per_s(bf16, ids, new)
        rows.append(
            {
                "round": r,
                "fp32_tok_s": round(a, 2),
                "bf16_tok_s": round(b, 2),
                "ratio": round(b / a, 3),
                "fp32_step_tok_s": round(sa, 2),
                "bf16_step_tok_s": round(sb, 2),
                "step_ratio": round(sb / sa, 3),
            }
        )
        print(
            f"  round {r}: generate fp32 {a:6.2f} tok/s  bf16 {b:6.2f} tok/s  {b / a:.2f}x | "
            f"steps fp32 {sa:6.2f} tok/s  bf16 {sb:6.2f} tok/s  {sb / sa:.2f}x",
            flush=True,
        )
    med = lambda key: median([r[key] for r in rows])  # noqa: E731
    summary = {
        key: med(key)
        for key in (
            "fp32_tok_s",
            "bf16_tok_s",
            "ratio",
            "fp32_step_tok_s",
            "bf16_step_tok_s",
            "step_ratio",
        )
    }
    summary.update(
        framework=FRAMEWORK, threads=args.threads, new_tokens=new, prompt=args.prompt, rounds=rows
    )
    print(
        f"bf16 / fp32: generate {summary['ratio']:.2f}x, decoding steps "
        f"{summary['step_ratio']:.2f}x (medians of {rounds} rounds; target >= 1.8x)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
