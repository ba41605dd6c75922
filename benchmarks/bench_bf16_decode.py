"""bf16 weights against fp32 for gpt2_torch greedy decoding on CPU, same weights, same run.

GPT-2 small shapes (random weights with transformers' init), batch 1, a 16-token prompt and
64 new tokens (``min_new_tokens`` forces them all). The fp32 model and its bf16 cast
(``model.to(torch.bfloat16)``, as ``from_pretrained(dtype=torch.bfloat16)`` gives) are timed in
alternating rounds, so drifts in the machine's memory bandwidth hit both; the figure is the
median of the per-round ratios. Decoding is bound by reading the weights (498 MB per token in
fp32, 249 MB in bf16), so the ceiling of the ratio is 2x. Target (issue 16): >= 1.8x.

Two figures per round: ``generate`` tok/s (64 tokens over the whole call, the 16-token prefill
included, as bench_torch_generate.py counts it) and the decoding steps alone (a 65-token
generate minus a 1-token one, public API only). On a CPU without native bf16 the bf16 prefill is fed through the kernel one
token at a time (torch's emulated bf16 GEMM is far slower), which costs 16 steps.

    python benchmarks/bench_bf16_decode.py            # 5 rounds
    python benchmarks/bench_bf16_decode.py --quick    # 2 rounds, 32 new tokens
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gpt2_core import GPT2Config, cpu_kernels
from gpt2_core.init import random_state_dict
from gpt2_torch import GPT2LMHeadModel, weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import load_note, median, timed


def _generate(model, ids, new: int) -> float:
    """Wall seconds of one greedy ``generate`` of exactly ``new`` tokens."""

    def call():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    secs, _, out = timed(call)
    assert out.shape[1] == ids.shape[1] + new
    return secs


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
    args = ap.parse_args()
    rounds, new = (2, 32) if args.quick else (args.rounds, args.new_tokens)
    torch.set_num_threads(args.threads)
    cfg = GPT2Config.from_pretrained("gpt2")
    fp32 = GPT2LMHeadModel(cfg).eval()
    weights.load_canonical(fp32, random_state_dict(cfg, "lm", seed=0))
    bf16 = GPT2LMHeadModel(cfg).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    ids = torch.randint(
        0, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0)
    )
    print(f"CPU kernels: {cpu_kernels.status()}")
    print(load_note())
    for m in (fp32, bf16):  # warm-up: kernel build, allocator, page faults
        tok_per_s(m, ids, 4)
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
    summary.update(threads=args.threads, new_tokens=new, prompt=args.prompt, rounds=rows)
    print(
        f"bf16 / fp32: generate {summary['ratio']:.2f}x, decoding steps "
        f"{summary['step_ratio']:.2f}x (medians of {rounds} rounds; target >= 1.8x)"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
