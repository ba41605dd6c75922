"""Benchmark: gpt2_tf XLA generation vs transformers 4.57.6's TF XLA generate, same weights.

GPT-2 small shapes with random weights, batch 1, float32, a 16-token prompt, 64 new greedy
tokens (EOS disabled so every run makes all 64). Also the prefill of a 256-token prompt against
transformers' XLA-compiled forward, and the first call's compile time of each.

transformers runs in a subprocess with /work/hfvenv/bin/python (or --hf-python) when it exists;
it needs tf-keras there. Prints a self-contained report; ``--quick`` makes a fast smoke run.

Usage:
    python benchmarks/bench_tf_generate.py [--quick] [--runs N] [--hf-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

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
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = gen(ids, **kw).numpy()
        times.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    fwd = tf.function(lambda x: model(x).logits, jit_compile=True)
    long = tf.constant(np.load(os.path.join(ckpt, "long.npy")))
    t = time.perf_counter(); fwd(long).numpy(); fwd_compile = time.perf_counter() - t
    ftimes, fcpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fwd(long).numpy()
        ftimes.append(time.perf_counter() - t); fcpu.append(time.process_time() - c)
    print(json.dumps({"tokens": out[0].tolist(), "compile_s": compile_s,
                      "gen_s": statistics.median(times), "prefill_s": statistics.median(ftimes),
                      "gen_cpu_s": statistics.median(cpu), "prefill_cpu_s": statistics.median(fcpu),
                      "prefill_compile_s": fwd_compile}))
""")


def _median_time(fn, runs: int) -> tuple[float, float]:
    """Median wall and CPU (process) seconds; CPU time is steadier on a shared machine."""
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one timed run")
    ap.add_argument("--runs", type=int, default=None, help="timed runs (median reported)")
    ap.add_argument("--hf-python", default="/work/hfvenv/bin/python")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    args = ap.parse_args()
    prompt_len, new, prefill_len = 16, 64, 256
    runs = args.runs or (1 if args.quick else 5)
    if args.quick:
        new, prefill_len = 16, 64

    import numpy as np
    import tensorflow as tf

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

    # ours: generation (one XLA loop) -----------------------------------------------------
    def gen():
        return model.generate(prompt, max_new_tokens=new, eos_token_id=None).numpy()

    t = time.perf_counter()
    ours_tokens = gen()[0]
    ours_compile = time.perf_counter() - t
    ours_gen, ours_gen_cpu = _median_time(gen, runs)

    # ours: prefill of a long prompt (the generation prefill: last-token logits) and a full
    # forward with logits for every position (the same work as transformers' forward)
    from gpt2_tf.generation import _round_up, _Spec

    spec = _Spec(batch=1, expand=1, prompt_len=prefill_len,
                 slots=_round_up(prefill_len + 1, 32), mode="greedy", top_k=0, top_p=False,
                 repetition=False, ngram=0, n_eos=0, early_stopping=False)
    prefill_fn = model._generation_functions(spec)["prefill"]
    sc = {"fill": tf.constant(0), "start": tf.constant(0)}
    long_t, ones = tf.constant(long), tf.ones_like(long)

    def prefill():
        return prefill_fn(long_t, ones, sc)["logits"].numpy()

    t = time.perf_counter()
    prefill()
    ours_prefill_compile = time.perf_counter() - t
    ours_prefill, ours_prefill_cpu = _median_time(prefill, runs)
    fwd = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
    fwd(long_t).numpy()
    ours_fwd, ours_fwd_cpu = _median_time(lambda: fwd(long_t).numpy(), runs)

    # transformers, same weights, in its own interpreter -------------------------------------
    hf = None
    if not args.no_hf and Path(args.hf_python).exists():
        with tempfile.TemporaryDirectory() as d:
            try:  # a transformers-layout tf_model.h5 (needs gpt2_core.formats.tf_h5)
                model.save_pretrained(d, tf_h5=True)
            except ImportError:
                model.save_pretrained(d)
            np.save(Path(d) / "prompt.npy", prompt)
            np.save(Path(d) / "long.npy", long)
            res = subprocess.run(
                [args.hf_python, "-c", HF_SCRIPT, d, str(prompt_len), str(new),
                 str(prefill_len), str(runs)], capture_output=True, text=True)
        if res.returncode == 0:
            hf = json.loads(res.stdout.strip().splitlines()[-1])
        else:
            print("transformers side failed:\n" + res.stderr[-2000:], file=sys.stderr)

    # report -------------------------------------------------------------------------------
    ours_tps = new / ours_gen
    print(f"# gpt2_tf generation benchmark ({'quick' if args.quick else 'full'})")
    print(f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, GPT-2 small "
          f"({cfg.num_parameters('lm'):,} params, random weights, fp32), batch 1")
    print(f"model build + weight load: {build_s:.1f} s; median of {runs} timed run(s)")
    print(f"greedy: prompt {prompt_len} tokens, {new} new tokens")
    print(f"  ours          : {ours_tps:7.1f} tok/s  ({ours_gen * 1e3:.0f} ms/run, CPU "
          f"{ours_gen_cpu * 1e3:.0f} ms), first call (trace + XLA compile) {ours_compile:.1f} s")
    print(f"  fraction of the ~{BANDWIDTH_BOUND_TOK_S:.0f} tok/s memory-bandwidth bound: "
          f"{ours_tps / BANDWIDTH_BOUND_TOK_S:.2f}")
    if hf is not None:
        hf_tps = new / hf["gen_s"]
        same = hf["tokens"] == ours_tokens.tolist()
        print(f"  transformers  : {hf_tps:7.1f} tok/s  ({hf['gen_s'] * 1e3:.0f} ms/run, CPU "
              f"{hf['gen_cpu_s'] * 1e3:.0f} ms), first call {hf['compile_s']:.1f} s  "
              "[tf.function(generate, jit_compile=True)]")
        print(f"  speed-up      : {ours_tps / hf_tps:.2f}x wall, "
              f"{hf['gen_cpu_s'] / ours_gen_cpu:.2f}x CPU time (target >= 1.2x); "
              f"identical tokens: {same}")
    print(f"prefill: {prefill_len}-token prompt")
    print(f"  ours (generation prefill, last-token logits): {ours_prefill * 1e3:7.1f} ms "
          f"(CPU {ours_prefill_cpu * 1e3:.0f}), first call {ours_prefill_compile:.1f} s")
    print(f"  ours (XLA forward, logits at every position): {ours_fwd * 1e3:7.1f} ms "
          f"(CPU {ours_fwd_cpu * 1e3:.0f})")
    if hf is not None:
        print(f"  transformers XLA forward                    : {hf['prefill_s'] * 1e3:7.1f} ms "
              f"(CPU {hf['prefill_cpu_s'] * 1e3:.0f}), first call {hf['prefill_compile_s']:.1f} s")
        print(f"  ratio ours prefill / transformers forward: {ours_prefill / hf['prefill_s']:.2f} "
              f"(target <= 1.0); full forward: {ours_fwd / hf['prefill_s']:.2f}")
    elif not args.no_hf:
        print(f"  (transformers side skipped: {args.hf_python} not found or failed)")


if __name__ == "__main__":
    main()
