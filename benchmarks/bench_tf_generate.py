"""Benchmark: gpt2_tf generation vs transformers 4.57.6's TF XLA generate, same weights.

GPT-2 small shapes with random weights, batch 1, float32, a 16-token prompt, 64 new greedy
tokens (EOS disabled so every run makes all 64). Ours runs with its default engine on a CPU (XLA
prefill and token choice, the fused CPU kernel for each token's forward) and, for reference,
with the all-XLA loop (``cpu_kernels.disabled()``, what runs on accelerators and in bf16). Also
the prefill of a 256-token prompt against transformers' XLA-compiled forward, and the first
call's compile time of each.

transformers runs in a subprocess with --hf-python (default $GPT2_ZOO_HF_PYTHON) when it is set
(it needs tf-keras there), as a server: rounds alternate ours / transformers so that a slow
patch of a shared machine hits both. Prints a self-contained report; ``--quick`` for a smoke run.

Usage:
    python benchmarks/bench_tf_generate.py [--quick] [--runs N] [--hf-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_server import JsonServer
from timing import load_average, load_note, median, timed

#: tokens/s that a 124M-parameter fp32 model can reach when each token reads every weight once
#: from memory on the reference 2-core machine (the figure the project budgets against)
BANDWIDTH_BOUND_TOK_S = 70.0

HF_SCRIPT = textwrap.dedent("""
    import json, os, statistics, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np, tensorflow as tf
    from transformers import TFGPT2LMHeadModel
    ckpt, prompt_len, new, prefill_len, runs = sys.argv[1], *map(int, sys.argv[2:6])
    if os.path.exists(os.path.join(ckpt, "tf_model.h5")):  # written by gpt2_tf.save_pretrained
        model = TFGPT2LMHeadModel.from_pretrained(ckpt, use_safetensors=False)
    else:  # transformers' TF loader cannot read this safetensors file: go through PyTorch
        import torch
        from safetensors.numpy import load_file
        from transformers import GPT2Config, GPT2LMHeadModel
        pt = GPT2LMHeadModel(GPT2Config.from_pretrained(ckpt))
        sd = load_file(os.path.join(ckpt, "model.safetensors"))
        pt.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        pt.tie_weights()
        pt.save_pretrained(os.path.join(ckpt, "pt"), safe_serialization=False)
        model = TFGPT2LMHeadModel.from_pretrained(os.path.join(ckpt, "pt"), from_pt=True)
    ids = tf.constant(np.load(os.path.join(ckpt, "prompt.npy")))
    gen = tf.function(model.generate, jit_compile=True)
    kw = dict(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
              attention_mask=tf.ones_like(ids))
    t = time.perf_counter(); out = gen(ids, **kw).numpy(); compile_s = time.perf_counter() - t
    fwd = tf.function(lambda x: model(x).logits, jit_compile=True)
    long = tf.constant(np.load(os.path.join(ckpt, "long.npy")))
    t = time.perf_counter(); fwd(long).numpy(); fwd_compile = time.perf_counter() - t
    # a server from here on, so that its timings interleave with ours: one line on stdin
    # ("decode" / "prefill") -> one timed run -> one JSON line (wall and process CPU seconds)
    print(json.dumps({"tokens": out[0].tolist(), "compile_s": compile_s,
                      "prefill_compile_s": fwd_compile}), flush=True)
    for line in sys.stdin:
        fn = {"decode": lambda: gen(ids, **kw).numpy(), "prefill": lambda: fwd(long).numpy(),
              "eager": lambda: model(long).logits.numpy()}.get(line.strip())
        if fn is None:
            break
        t, c = time.perf_counter(), time.process_time()
        fn()
        print(json.dumps({"s": time.perf_counter() - t, "cpu_s": time.process_time() - c}),
              flush=True)
""")


def _pair(r: dict) -> tuple[float, float]:
    return r["s"], r["cpu_s"]


def _median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return median([p[0] for p in pairs]), median([p[1] for p in pairs])


def _timed(fn) -> tuple[float, float]:
    return timed(fn)[:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one timed run")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds (median reported)")
    ap.add_argument(
        "--hf-python",
        default=os.environ.get("GPT2_ZOO_HF_PYTHON", ""),
        help="python with transformers 4.57.6 (default $GPT2_ZOO_HF_PYTHON; unset: rows skipped)",
    )
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    ap.add_argument("--prefill", type=int, default=256, help="prefill prompt length (256)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    prompt_len, new, prefill_len = 16, 64, args.prefill
    runs = args.runs or (1 if args.quick else 5)
    if args.quick:
        new, prefill_len = 16, 64

    import numpy as np
    import tensorflow as tf

    from gpt2_core import cpu_kernels
    from gpt2_core.config import GPT2Config
    from gpt2_core.init import random_state_dict
    from gpt2_tf import GPT2LMHeadModel, load_canonical

    cfg = GPT2Config.from_pretrained("gpt2")
    t = time.perf_counter()
    sd = random_state_dict(cfg, "lm", seed=0)
    model = GPT2LMHeadModel(cfg)
    load_canonical(model, sd)
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, (1, prompt_len)).astype(np.int32)
    long = rng.integers(0, cfg.vocab_size, (1, prefill_len)).astype(np.int32)

    # transformers, same weights, in its own interpreter (loaded and compiled first) ----------
    hf = None
    if not args.no_hf and args.hf_python and Path(args.hf_python).is_file():
        with tempfile.TemporaryDirectory() as d:
            try:  # a transformers-layout tf_model.h5 (needs gpt2_core.formats.tf_h5)
                model.save_pretrained(d, tf_h5=True)
            except ImportError:
                model.save_pretrained(d)
            np.save(Path(d) / "prompt.npy", prompt)
            np.save(Path(d) / "long.npy", long)
            cmd = [
                args.hf_python,
                "-c",
                HF_SCRIPT,
                d,
                str(prompt_len),
                str(new),
                str(prefill_len),
                "0",
            ]
            try:
                hf = JsonServer(cmd, dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            except RuntimeError as e:
                print(e, file=sys.stderr)

    # ours: generation. Default engine = XLA prefill + fused CPU kernel per token (fp32 on a
    # CPU); the all-XLA loop (what runs on accelerators or in bf16) is measured too -----------
    def gen():
        return model.generate(prompt, max_new_tokens=new, eos_token_id=None).numpy()

    def gen_xla():
        with cpu_kernels.disabled():
            return model.generate(prompt, max_new_tokens=new, eos_token_id=None).numpy()

    t = time.perf_counter()
    ours_tokens = gen()[0]
    ours_compile = time.perf_counter() - t
    t = time.perf_counter()
    xla_tokens = gen_xla()[0]
    xla_compile = time.perf_counter() - t
    ours_t, xla_t, hf_t = [], [], []
    for _ in range(runs):  # interleaved rounds: a slow patch of the machine hits every side
        ours_t.append(_timed(gen))
        xla_t.append(_timed(gen_xla))
        if hf:
            hf_t.append(_pair(hf.request("decode")))
    ours_gen, ours_gen_cpu = _median(ours_t)
    xla_gen, xla_gen_cpu = _median(xla_t)

    # ours: prefill of a long prompt (the generation prefill: last-token logits) and a full
    # forward with logits for every position (the same work as transformers' forward)
    # the generation prefill through the public API: one new token = the prompt's forward into
    # the cache and the choice of the first token (no decoding step)
    long_t = tf.constant(long)

    def prefill():
        return model.generate(long_t, max_new_tokens=1, eos_token_id=None).numpy()

    t = time.perf_counter()
    prefill()
    ours_prefill_compile = time.perf_counter() - t
    fwd = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
    fwd(long_t).numpy()

    def eager():
        return model(input_ids=long_t, use_cache=False).logits.numpy()

    eager()
    pre_t, fwd_t, eager_t, hf_pre_t, hf_eager_t = [], [], [], [], []
    for r in range(runs):
        # each comparison times its two sides back to back, in an order that alternates by
        # round (whoever runs second finds the caches the first one left)
        pre_t.append(_timed(prefill))
        pairs = [
            (fwd_t, lambda: _timed(lambda: fwd(long_t).numpy()), hf_pre_t, "prefill"),
            (eager_t, lambda: _timed(eager), hf_eager_t, "eager"),
        ]
        for ours_list, ours_fn, hf_list, request in pairs:
            sides = [(ours_list, ours_fn)]
            if hf:
                sides.append((hf_list, lambda request=request: _pair(hf.request(request))))
            for target, fn in sides if r % 2 == 0 else sides[::-1]:
                target.append(fn())
    ours_prefill, ours_prefill_cpu = _median(pre_t)
    ours_fwd, ours_fwd_cpu = _median(fwd_t)
    ours_eager = _median(eager_t)[0]
    if hf:
        hf.close()

    # report -------------------------------------------------------------------------------
    ours_tps = new / ours_gen
    print(f"# gpt2_tf generation benchmark ({'quick' if args.quick else 'full'})")
    print(
        f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, GPT-2 small "
        f"({cfg.num_parameters('lm'):,} params, random weights, fp32), batch 1"
    )
    print(f"model build + weight load: {build_s:.1f} s; median of {runs} interleaved round(s)")
    print(f"CPU kernels: {cpu_kernels.status()}")
    print(load_note())
    print(f"greedy: prompt {prompt_len} tokens, {new} new tokens")
    print(
        f"  ours (fused CPU step): {ours_tps:7.1f} tok/s  ({ours_gen * 1e3:.0f} ms/run, CPU "
        f"{ours_gen_cpu * 1e3:.0f} ms), first call (trace + XLA compile) {ours_compile:.1f} s"
    )
    print(
        f"  ours (all-XLA loop)  : {new / xla_gen:7.1f} tok/s  ({xla_gen * 1e3:.0f} ms/run, CPU "
        f"{xla_gen_cpu * 1e3:.0f} ms), first call {xla_compile:.1f} s; identical tokens: "
        f"{xla_tokens.tolist() == ours_tokens.tolist()}"
    )
    print(
        f"  fraction of the ~{BANDWIDTH_BOUND_TOK_S:.0f} tok/s memory-bandwidth bound: "
        f"{ours_tps / BANDWIDTH_BOUND_TOK_S:.2f}"
    )
    if hf:
        hf_gen, hf_gen_cpu = _median(hf_t)
        hf_tps = new / hf_gen
        same = hf.info["tokens"] == ours_tokens.tolist()
        ratios = [h[0] / o[0] for o, h in zip(ours_t, hf_t)]
        print(
            f"  transformers         : {hf_tps:7.1f} tok/s  ({hf_gen * 1e3:.0f} ms/run, CPU "
            f"{hf_gen_cpu * 1e3:.0f} ms), first call {hf.info['compile_s']:.1f} s  "
            "[tf.function(generate, jit_compile=True)]"
        )
        print(
            f"  speed-up             : {median(ratios):.2f}x wall (median of "
            f"{len(ratios)} rounds, each {min(ratios):.2f}-{max(ratios):.2f}x), "
            f"{hf_gen_cpu / ours_gen_cpu:.2f}x CPU time (target >= 1.2x); all-XLA loop "
            f"{hf_gen / xla_gen:.2f}x; identical tokens: {same}"
        )
    print(f"prefill: {prefill_len}-token prompt")
    print(
        f"  ours generate(max_new_tokens=1) = prefill  : {ours_prefill * 1e3:7.1f} ms "
        f"(CPU {ours_prefill_cpu * 1e3:.0f}), first call {ours_prefill_compile:.1f} s"
    )
    print(
        f"  ours (XLA forward, logits at every position): {ours_fwd * 1e3:7.1f} ms "
        f"(CPU {ours_fwd_cpu * 1e3:.0f})"
    )
    if hf:
        hf_pre, hf_pre_cpu = _median(hf_pre_t)
        print(
            f"  transformers XLA forward                    : {hf_pre * 1e3:7.1f} ms "
            f"(CPU {hf_pre_cpu * 1e3:.0f}), first call {hf.info['prefill_compile_s']:.1f} s"
        )
        fwd_ratios = [o[0] / h[0] for o, h in zip(fwd_t, hf_pre_t)]
        print(
            f"  ratio ours prefill / transformers forward: {ours_prefill / hf_pre:.2f} "
            f"(target <= 1.0); full forward: {median(fwd_ratios):.2f} (median of "
            f"{len(fwd_ratios)} rounds, each {min(fwd_ratios):.2f}-{max(fwd_ratios):.2f})"
        )
    print(f"eager call (model(ids), logits at every position), {prefill_len} tokens")
    print(f"  ours        : {ours_eager * 1e3:7.1f} ms")
    if hf:
        hf_eager = _median(hf_eager_t)[0]
        eager_ratios = [o[0] / h[0] for o, h in zip(eager_t, hf_eager_t)]
        print(
            f"  transformers: {hf_eager * 1e3:7.1f} ms; ours / transformers "
            f"{median(eager_ratios):.2f} (median of {len(eager_ratios)} rounds, each "
            f"{min(eager_ratios):.2f}-{max(eager_ratios):.2f}; target <= 1.0)"
        )
    if args.json:
        figures = {
            "framework": "tf",
            "quick": args.quick,
            "load": load_average(),
            "new_tokens": new,
            "prefill_len": prefill_len,
            "decode_tok_s": ours_tps,
            "decode_xla_loop_tok_s": new / xla_gen,
            "prefill_generate_s": ours_prefill,
            "prefill_compiled_s": ours_fwd,
            "eager_s": ours_eager,
        }
        if hf:
            figures.update(
                hf_decode_tok_s=new / hf_gen,
                decode_ratio=median([h[0] / o[0] for o, h in zip(ours_t, hf_t)]),
                hf_prefill_compiled_s=hf_pre,
                hf_eager_s=hf_eager,
                prefill_compiled_ratio=median(fwd_ratios),
                eager_ratio=median(eager_ratios),
                same_tokens=hf.info["tokens"] == ours_tokens.tolist(),
            )
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
