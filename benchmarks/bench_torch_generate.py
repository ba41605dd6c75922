"""Benchmark: gpt2_torch generation and prefill against transformers 4.57.6, same weights, same run.

GPT-2 small shapes (124M parameters, random weights with transformers' init from
gpt2_core.init.random_state_dict), batch 1, fp32, greedy. Measures:

* decode throughput: a 16-token prompt, 64 new tokens (min_new_tokens forces all 64), tok/s;
* prefill: one forward over 256 tokens (ours: model forward and generate's prefill into the
  static cache; transformers: model forward);
* the first call of the compiled step (``compile=True``): compile time and tok/s afterwards;
* the fraction of the memory-bandwidth bound: every decode step must stream all fp32 weights
  (~498 MB) from memory, so tok/s <= bandwidth / 498 MB. The bandwidth is measured here by
  summing a 512 MB tensor (``--bandwidth-gbs`` overrides it).

transformers runs in a subprocess with ``--hf-python`` (default $GPT2_ZOO_HF_PYTHON) on the very
same weights, saved to a temporary directory with our ``save_pretrained``; its greedy tokens are
compared with ours.

Usage:
    python benchmarks/bench_torch_generate.py            # full run (about 2-4 minutes)
    python benchmarks/bench_torch_generate.py --quick    # smoke run: fewer repeats, no compile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2_core import GPT2Config
from gpt2_core.init import random_state_dict
from gpt2_torch import GPT2LMHeadModel, weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_server import JsonServer
from timing import load_average, load_note, median, timed

#: an interpreter with transformers 4.57.6; unset: the transformers rows are skipped
HF_PYTHON = os.environ.get("GPT2_ZOO_HF_PYTHON", "")

_HF_SCRIPT = textwrap.dedent("""
    # transformers' side, as a server so that its measurements interleave with ours: one line on
    # stdin ("decode" / "prefill" / "quit") -> one timed run -> one JSON line on stdout
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    d, threads, prompt, new, prefill = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(d).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=g)
    x = torch.randint(0, model.config.vocab_size, (1, prefill), generator=g)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False,
              pad_token_id=model.config.eos_token_id, attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        model.generate(ids, **dict(kw, max_new_tokens=4, min_new_tokens=4))
        model(x, use_cache=False)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "decode":
                t = time.perf_counter(); out = model.generate(ids, **kw); dt = time.perf_counter() - t
                res = {"s": dt, "tokens": out[0, prompt:].tolist()}
            elif cmd == "prefill":
                t = time.perf_counter(); model(x, use_cache=False); res = {"s": time.perf_counter() - t}
            else:
                break
            print(json.dumps(res), flush=True)
""")


def measure_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Sustained read bandwidth: sum a tensor much larger than the caches. Random data: on this
    VM a tensor of identical pages (``torch.ones``) reads ~2x faster than real weights do."""
    x = torch.rand(mb * 1024 * 1024 // 4, generator=torch.Generator().manual_seed(0))
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(repeats))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    return timed(fn)[0]


def start_hf(directory: Path, args) -> JsonServer | None:
    """transformers 4.57.6 in its own interpreter, loaded, warmed up and waiting for requests."""
    if args.no_hf or not args.hf_python or not Path(args.hf_python).is_file():
        return None
    cmd = [
        args.hf_python,
        "-c",
        _HF_SCRIPT,
        str(directory),
        str(args.threads),
        str(args.prompt),
        str(args.new_tokens),
        str(args.prefill),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_NO_TF="1", USE_TF="0")
    try:
        return JsonServer(cmd, env)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return None


def summary(times: list[float], new: int) -> dict:
    return {"tok_s": new / median(times), "best_tok_s": new / min(times)}


def bench_ours(model, ids, args, compile: bool) -> dict:
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, compile=compile)
    first_call = _timed(
        lambda: model.generate(ids, max_new_tokens=4, min_new_tokens=4, compile=compile)
    )
    times, out = [], None
    for _ in range(args.repeats):
        secs, _, out = timed(lambda: model.generate(ids, **kw))
        times.append(secs)
    return dict(
        summary(times, args.new_tokens),
        first_call_s=first_call,
        tokens=out[0, ids.shape[1] :].tolist(),
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 repeats, 16 new tokens, no compile"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prefill", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--hf-python", default=HF_PYTHON)
    p.add_argument("--bandwidth-gbs", type=float, default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.new_tokens, args.no_compile = 2, 16, True
    torch.set_num_threads(args.threads)

    cfg = GPT2Config()  # GPT-2 small
    sd = random_state_dict(cfg, "lm", seed=0)
    weight_bytes = sum(v.nbytes for k, v in sd.items() if k != "lm_head.weight")
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg)
    weights.load_canonical(model, sd, assign=True)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=g)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        hf = start_hf(Path(tmp), args)  # loaded and warmed up: the directory may go

    # decode: ours and transformers alternate, one generate each per round, so that a slow
    # patch of the machine hits both; the speed-up is the median of the per-round ratios
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    first_call = _timed(lambda: model.generate(ids, max_new_tokens=4, min_new_tokens=4))
    ours_t, hf_t, hf_tokens = [], [], None
    for _ in range(args.repeats):
        secs, _, out = timed(lambda: model.generate(ids, **kw))
        ours_t.append(secs)
        if hf:
            r = hf.request("decode")
            hf_t.append(r["s"])
            hf_tokens = r["tokens"]
    ours = dict(
        summary(ours_t, args.new_tokens),
        first_call_s=first_call,
        tokens=out[0, ids.shape[1] :].tolist(),
    )
    hf_res = dict(summary(hf_t, args.new_tokens), tokens=hf_tokens) if hf else None
    ratios = [h / o for o, h in zip(ours_t, hf_t)]

    x = torch.randint(0, cfg.vocab_size, (1, args.prefill), generator=g)
    pre_t, hf_pre_t = [], []
    with torch.inference_mode():
        model(x, use_cache=False)
        for _ in range(args.repeats):
            pre_t.append(_timed(lambda: model(x, use_cache=False)))
            if hf:
                hf_pre_t.append(hf.request("prefill")["s"])
    prefill = median(pre_t)
    gen_prefill = median(
        _timed(lambda: model.generate(x, max_new_tokens=1)) for _ in range(args.repeats)
    )
    if hf:
        hf.close()
        hf_res["prefill_s"] = median(hf_pre_t)
    hf = hf_res
    compiled = None if args.no_compile else bench_ours(model, ids, args, compile=True)
    bw = args.bandwidth_gbs or measure_bandwidth_gbs()
    bound = bw * 1e9 / weight_bytes

    lines = [
        "gpt2_torch generate benchmark",
        f"  model: GPT-2 small ({cfg.num_parameters('lm'):,} params, fp32, {weight_bytes / 1e6:.0f} MB "
        f"read per token), batch 1, prompt {args.prompt}, {args.new_tokens} new greedy tokens",
        f"  torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"repeats {args.repeats} (median)",
        f"  memory bandwidth {bw:.1f} GB/s -> bound {bound:.1f} tok/s",
        f"  {load_note()}",
        "",
        "decode (tok/s, median of repeats; best in the last column)",
        f"  ours eager       {ours['tok_s']:8.2f}   ({ours['tok_s'] / bound:5.1%} of bound)   "
        f"best {ours['best_tok_s']:.2f}",
    ]
    if compiled:
        lines.append(
            f"  ours compiled    {compiled['tok_s']:8.2f}   ({compiled['tok_s'] / bound:5.1%} of bound)"
            f"   best {compiled['best_tok_s']:.2f}, first call (compile) "
            f"{compiled['first_call_s']:.1f} s"
        )
    if hf:
        lines.append(
            f"  transformers     {hf['tok_s']:8.2f}   ({hf['tok_s'] / bound:5.1%} of bound)   "
            f"best {hf['best_tok_s']:.2f}"
        )
        lines.append(
            f"  speed-up eager   {median(ratios):8.2f}x   (target >= 2x; median of "
            f"{len(ratios)} interleaved rounds, each {min(ratios):.2f}-{max(ratios):.2f}x)"
        )
        if compiled:
            lines.append(f"  speed-up compiled{compiled['tok_s'] / hf['tok_s']:8.2f}x")
        same = ours["tokens"] == hf["tokens"]
        lines.append(f"  greedy tokens identical to transformers: {'yes' if same else 'NO'}")
    else:
        lines.append("  transformers     (not run: no --hf-python interpreter or --no-hf)")
    lines += [
        "",
        f"prefill of {args.prefill} tokens (s)",
        f"  ours forward     {prefill:8.3f}",
        f"  ours generate    {gen_prefill:8.3f}   (prefill into the static cache + 1 token)",
    ]
    if hf:
        lines.append(
            f"  transformers     {hf['prefill_s']:8.3f}   "
            f"(ours/transformers {prefill / hf['prefill_s']:.2f}, target <= 1)"
        )
    print("\n".join(lines))
    if args.json:
        figures = {
            "framework": "torch",
            "quick": args.quick,
            "load": load_average(),
            "new_tokens": args.new_tokens,
            "prefill_len": args.prefill,
            "decode_tok_s": ours["tok_s"],
            "bound_tok_s": bound,
            "prefill_generate_s": gen_prefill,
            "eager_s": prefill,
        }
        if compiled:
            figures["decode_compiled_tok_s"] = compiled["tok_s"]
        if hf:
            figures.update(
                hf_decode_tok_s=hf["tok_s"],
                decode_ratio=median(ratios),
                hf_eager_s=hf["prefill_s"],
                same_tokens=ours["tokens"] == hf["tokens"],
            )
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
