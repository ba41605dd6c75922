"""Greedy decode and prefill speed of gpt2_flax vs transformers 4.57.6's jitted FlaxGPT2LMHeadModel.

GPT-2 small shapes with random weights (no download), batch 1, float32: a 16-token prompt and 64
new greedy tokens, and a 256-token prefill (one jitted forward). The transformers side runs in a
subprocess with the interpreter named by $GPT2_ZOO_HF_PYTHON when that one has transformers' Flax
classes, as a server: each round times both sides' decode, then both sides' forward, back to back
in an order that alternates by round, and the ratios are medians of the per-round ratios.

``--vs-torch`` instead times, in interleaved rounds of one run, gpt2_flax's greedy decode on
the fused CPU kernel (``gpt2_flax.generation.decode_engine`` says which: the C step as an XLA FFI call inside the jitted
loop), the same without it (``cpu_kernels.disabled()``: the all-XLA loop), gpt2_torch's
``generate`` (a child interpreter, torch's fused kernel steps) and the bf16-weight model on both
Flax paths (bf16 weights with fp32 compute, which the kernel reads, and bf16 weights and compute
on XLA). Same random weights everywhere; the figures are medians of the per-round ratios.
``--threads`` sets torch's and the kernels' threads (``GPT2_ZOO_CPU_THREADS``); the all-XLA
loop keeps XLA's own thread pool, so for a one-core comparison run the script under
``taskset -c 0``. The kernels' OpenMP barriers make 2-thread figures meaningless on a busy
machine: take them on an idle one.

Usage:
    python benchmarks/bench_flax_generate.py            # full run (report for the lead)
    python benchmarks/bench_flax_generate.py --quick    # tiny smoke run (small model, few reps)
    python benchmarks/bench_flax_generate.py --vs-torch [--rounds 5] [--threads 2]

The report prints tokens/s, the ratio to transformers, first-call compile times and the
fraction of the memory-bandwidth bound (--bound-tok-s, ~70 tok/s for fp32 GPT-2 small here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_server import JsonServer  # noqa: E402
from timing import load_average, load_note, median, timed  # noqa: E402

#: an interpreter with transformers 4.57.6 (and flax) installed; unset: those rows are skipped
HF_PYTHON = os.environ.get("GPT2_ZOO_HF_PYTHON", "")


def shapes(quick: bool) -> dict:
    if quick:
        return dict(
            n_layer=2,
            n_embd=128,
            n_head=4,
            vocab_size=1000,
            n_positions=512,
            bos_token_id=0,
            eos_token_id=0,
        )
    return dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def setup_ours(cfg_kwargs: dict, prompt: int, new: int, prefill: int) -> dict:
    """Our model, compiled; returns the timed calls (decode, full forward, generate's prefill)
    and the first-call (compile) times."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gpt2_core.config import GPT2Config
    from gpt2_flax import GPT2LMHeadModel

    cfg = GPT2Config(**cfg_kwargs, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    ids = jnp.asarray((jnp.arange(prompt)[None] * 7919) % cfg.vocab_size, jnp.int32)

    def gen():
        return model.generate(ids, max_new_tokens=new, eos_token_id=None).block_until_ready()

    first = timed(gen)[0]
    long_ids = jnp.asarray((jnp.arange(prefill)[None] * 31) % cfg.vocab_size, jnp.int32)
    graphdef, state = nnx.split(model)  # functional forward, as transformers' jax.jit(params)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(input_ids=x, use_cache=False).logits)
    fwd_compile = timed(lambda: fwd(state, long_ids).block_until_ready())[0]
    # generate's own prefill: the prompt into the cache, logits of the last position only
    pre = jax.jit(
        lambda s, x: nnx.merge(graphdef, s)(input_ids=x, use_cache=False, logits_to_keep=1).logits
    )
    pre(state, long_ids).block_until_ready()
    return dict(
        decode=gen,
        prefill=lambda: fwd(state, long_ids).block_until_ready(),
        gen_prefill=lambda: pre(state, long_ids).block_until_ready(),
        first_call_s=first,
        prefill_compile_s=fwd_compile,
        jax=jax.__version__,
    )


HF_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import jax, jax.numpy as jnp
    from transformers import GPT2Config, FlaxGPT2LMHeadModel
    args = json.loads(sys.argv[1])
    cfg = GPT2Config(**args["cfg"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = FlaxGPT2LMHeadModel(cfg, seed=0)
    P, N, L = args["prompt"], args["new"], args["prefill"]
    ids = (jnp.arange(P)[None] * 7919) % cfg.vocab_size
    gen = jax.jit(lambda p, x: model.generate(x, params=p, max_new_tokens=N, do_sample=False,
                                              pad_token_id=0, eos_token_id=None).sequences)
    t = time.perf_counter(); gen(model.params, ids).block_until_ready(); first = time.perf_counter() - t
    long_ids = (jnp.arange(L)[None] * 31) % cfg.vocab_size
    fwd = jax.jit(lambda p, x: model(x, params=p).logits)
    t = time.perf_counter(); fwd(model.params, long_ids).block_until_ready(); fc = time.perf_counter() - t
    print(json.dumps(dict(first_call_s=first, prefill_compile_s=fc)), flush=True)
    # a server from here on: one request line ("decode" / "prefill") -> one timed call
    for line in sys.stdin:
        fn = {"decode": lambda: gen(model.params, ids).block_until_ready(),
              "prefill": lambda: fwd(model.params, long_ids).block_until_ready()}.get(line.strip())
        if fn is None:
            break
        t = time.perf_counter(); fn()
        print(json.dumps({"s": time.perf_counter() - t}), flush=True)
""")


def start_hf(cfg_kwargs: dict, prompt: int, new: int, prefill: int) -> JsonServer | str:
    """transformers' jitted Flax model in its own interpreter, as a server (compiled first)."""
    if not HF_PYTHON or not Path(HF_PYTHON).is_file():
        return (
            f"skipped: GPT2_ZOO_HF_PYTHON={HF_PYTHON!r} is not an interpreter"
            if HF_PYTHON
            else "skipped: set GPT2_ZOO_HF_PYTHON to a python with transformers 4.57.6"
        )
    args = json.dumps(dict(cfg=cfg_kwargs, prompt=prompt, new=new, prefill=prefill))
    try:
        return JsonServer(
            [HF_PYTHON, "-c", HF_SCRIPT, args], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        )
    except RuntimeError as e:
        return "failed: " + str(e).strip().splitlines()[-1]


def interleaved(ours: dict, hf: JsonServer | None, rounds: int) -> dict:
    """``rounds`` rounds; in each, both sides' decode then both sides' full forward, back to
    back, in an order that alternates by round. Returns the lists of seconds per side and
    call."""
    out = {k: [] for k in ("decode", "prefill", "gen_prefill", "hf_decode", "hf_prefill")}
    for r in range(rounds):
        for what in ("decode", "prefill"):
            sides = [(what, lambda what=what: timed(ours[what])[0])]
            if hf is not None:
                sides.append((f"hf_{what}", lambda what=what: hf.request(what)["s"]))
            for key, fn in sides if r % 2 == 0 else sides[::-1]:
                out[key].append(fn())
        out["gen_prefill"].append(timed(ours["gen_prefill"])[0])
    return out


TORCH_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import torch
    from gpt2_core import GPT2Config, cpu_kernels
    from gpt2_core.init import random_state_dict
    from gpt2_torch import GPT2LMHeadModel, weights
    args = json.loads(sys.argv[2])
    torch.set_num_threads(args["threads"])
    cfg = GPT2Config(**args["cfg"])
    model = GPT2LMHeadModel(cfg).eval()
    weights.load_canonical(model, random_state_dict(cfg, "lm", seed=0))
    ids = torch.tensor(args["ids"])
    def run(n):
        with torch.no_grad():
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return time.perf_counter() - t, out[0, ids.shape[1]:].tolist()
    run(4)
    print(json.dumps({"kernels": cpu_kernels.status()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        secs, toks = run(args["new"])
        print(json.dumps({"tok_s": args["new"] / secs, "tokens": toks}), flush=True)
""")


def bench_vs_torch(
    cfg_kwargs: dict, prompt: int, new: int, rounds: int, threads: int, json_path: str | None
) -> None:
    """Interleaved rounds: Flax with and without the kernel, torch, Flax bf16 on both paths."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gpt2_core import cpu_kernels
    from gpt2_core.config import GPT2Config
    from gpt2_core.init import random_state_dict
    from gpt2_flax import GPT2LMHeadModel
    from gpt2_flax.generation import decode_engine

    os.environ["GPT2_ZOO_CPU_THREADS"] = str(threads)  # read when the programs are traced
    cfg = GPT2Config(**cfg_kwargs)
    sd = random_state_dict(cfg, "lm", seed=0)
    ids = np.asarray((np.arange(prompt)[None] * 7919) % cfg.vocab_size, np.int32)
    fp32 = GPT2LMHeadModel.from_state_dict(cfg, sd)
    bf16 = GPT2LMHeadModel.from_state_dict(cfg, sd, param_dtype=jnp.bfloat16)  # fp32 compute
    bf16c = GPT2LMHeadModel.from_state_dict(cfg, sd, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    del sd

    def flax(model, kernel: bool):
        def run():
            # fp32 weights take XLA's loop by default: the kernel row asks for the kernel
            os.environ["GPT2_ZOO_FLAX_FP32_KERNEL"] = "1" if kernel else "0"
            with cpu_kernels.disabled() if not kernel else contextlib.nullcontext():
                secs, _, out = timed(
                    lambda: np.asarray(
                        model.generate(
                            ids, max_new_tokens=new, min_new_tokens=new, eos_token_id=None
                        )
                    )
                )
            return new / secs, out[0, prompt:].tolist()

        return run

    rows = {
        "flax fp32 kernel": flax(fp32, True),
        "flax fp32 XLA loop": flax(fp32, False),
        "flax bf16 kernel": flax(bf16, True),
        "flax bf16 XLA loop": flax(bf16c, False),
    }
    torch_side = JsonServer(
        [
            sys.executable,
            "-c",
            TORCH_SCRIPT,
            str(ROOT),
            json.dumps(dict(cfg=cfg_kwargs, ids=ids.tolist(), new=new, threads=threads)),
        ],
        dict(os.environ),
    )
    print(
        f"# gpt2_flax vs gpt2_torch greedy decode ({cfg.n_layer} layers, n_embd {cfg.n_embd}; "
        f"batch 1, prompt {prompt}, {new} new tokens, {threads} threads, {rounds} rounds)"
    )
    print(
        f"jax {jax.__version__}; bf16 by default: {decode_engine(bf16)}; "
        f"fp32 by default: {decode_engine(fp32)}"
    )
    print(f"torch kernels: {torch_side.info['kernels']}; {load_note()}")
    warm_s, _, first = timed(lambda: {name: run()[1] for name, run in rows.items()})  # compiles
    print(f"warm-up (compiles) {warm_s:.1f} s")
    same = first["flax fp32 kernel"] == first["flax fp32 XLA loop"]
    print(
        f"fp32 tokens: kernel == XLA loop: {same}; "
        f"== torch: {first['flax fp32 kernel'] == torch_side.request('go')['tokens']}"
    )
    results: dict[str, list[float]] = {name: [] for name in [*rows, "torch fp32"]}
    sides = {
        **{name: (lambda run=run: run()[0]) for name, run in rows.items()},
        "torch fp32": lambda: torch_side.request("go")["tok_s"],
    }
    order = list(sides)
    for r in range(rounds):
        # rotate the order each round: a side that runs right after torch's (whose OpenMP
        # threads spin on for a while after each call) must not always be the same one
        for name in order[r % len(order) :] + order[: r % len(order)]:
            results[name].append(sides[name]())
        print(
            f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
            flush=True,
        )
    torch_side.close()

    def ratio(a: str, b: str) -> str:
        rs = [x / y for x, y in zip(results[a], results[b])]
        return f"{median(rs):.2f}x (rounds {min(rs):.2f}-{max(rs):.2f})"

    for name, v in results.items():
        print(f"{name:20s}: {median(v):6.1f} tok/s median ({min(v):.1f}-{max(v):.1f})")
    print(
        f"flax fp32 kernel / torch fp32     : {ratio('flax fp32 kernel', 'torch fp32')} "
        "(target >= 0.9x)"
    )
    print(f"flax fp32 XLA loop / torch fp32   : {ratio('flax fp32 XLA loop', 'torch fp32')}")
    print(f"flax fp32 kernel / XLA loop       : {ratio('flax fp32 kernel', 'flax fp32 XLA loop')}")
    print(f"flax bf16 kernel / fp32 kernel    : {ratio('flax bf16 kernel', 'flax fp32 kernel')}")
    print(
        f"flax bf16 XLA loop / fp32 XLA loop: {ratio('flax bf16 XLA loop', 'flax fp32 XLA loop')}"
    )
    if json_path:
        figures = {
            "threads": threads,
            "rounds": rounds,
            "new_tokens": new,
            "load": load_average(),
            "tok_s": {k: median(v) for k, v in results.items()},
            "ratios": {
                f"{a} / {b}": median([x / y for x, y in zip(results[a], results[b])])
                for a, b in [
                    ("flax fp32 kernel", "torch fp32"),
                    ("flax fp32 XLA loop", "torch fp32"),
                    ("flax bf16 kernel", "flax fp32 kernel"),
                    ("flax bf16 XLA loop", "flax fp32 XLA loop"),
                ]
            },
        }
        Path(json_path).write_text(json.dumps(figures, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model, few repetitions")
    ap.add_argument(
        "--vs-torch",
        action="store_true",
        help="interleaved rounds against gpt2_torch, with/without the CPU kernel, bf16",
    )
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --vs-torch")
    ap.add_argument("--threads", type=int, default=2, help="threads of --vs-torch (both sides)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved rounds (7; quick: 2)")
    ap.add_argument("--prefill", type=int, default=256, help="prefill prompt length (256)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument(
        "--bound-tok-s",
        type=float,
        default=70.0,
        help="memory-bandwidth bound of fp32 GPT-2 small decode on this machine",
    )
    args = ap.parse_args()
    cfg = shapes(args.quick)
    prompt, new, prefill = (16, 16, 64) if args.quick else (16, 64, args.prefill)
    if args.vs_torch:
        bench_vs_torch(cfg, prompt, new, 2 if args.quick else args.rounds, args.threads, args.json)
        return
    rounds = args.reps or (2 if args.quick else 7)
    ours = setup_ours(cfg, prompt, new, prefill)
    hf = start_hf(cfg, prompt, new, prefill)
    server = hf if isinstance(hf, JsonServer) else None
    t = interleaved(ours, server, rounds)
    if server is not None:
        hf_info = server.info
        server.close()
    gen_s, fwd_s, pre_s = median(t["decode"]), median(t["prefill"]), median(t["gen_prefill"])
    print(
        f"# gpt2_flax generate benchmark ({'quick' if args.quick else 'GPT-2 small'}, fp32, "
        f"batch 1, prompt {prompt}, {new} new greedy tokens; prefill {prefill}; median of "
        f"{rounds} interleaved rounds)"
    )
    print(f"cpu cores: {os.cpu_count()}   jax {ours['jax']}   {load_note()}")
    print(
        f"ours          : {new / gen_s:8.1f} tok/s   first call {ours['first_call_s']:.1f} s   "
        f"prefill {prefill}: {fwd_s * 1e3:.1f} ms (compile {ours['prefill_compile_s']:.1f} s)"
    )
    figures = {
        "framework": "flax",
        "quick": args.quick,
        "load": load_average(),
        "new_tokens": new,
        "prefill_len": prefill,
        "decode_tok_s": new / gen_s,
        "prefill_generate_s": pre_s,
        "prefill_compiled_s": fwd_s,
    }
    if server is not None:
        hf_gen, hf_fwd = median(t["hf_decode"]), median(t["hf_prefill"])
        dec = [h / o for o, h in zip(t["decode"], t["hf_decode"])]
        pref = [o / h for o, h in zip(t["prefill"], t["hf_prefill"])]
        print(
            f"transformers  : {new / hf_gen:8.1f} tok/s   first call {hf_info['first_call_s']:.1f} s"
            f"   prefill {prefill}: {hf_fwd * 1e3:.1f} ms "
            f"(compile {hf_info['prefill_compile_s']:.1f} s)"
        )
        print(
            f"decode ratio  : {median(dec):.2f}x (median of {len(dec)} rounds, each "
            f"{min(dec):.2f}-{max(dec):.2f}x; target >= 2x)"
        )
        print(
            f"generate's prefill (last-position logits only): {pre_s * 1e3:.1f} ms"
            f" -> {pre_s / hf_fwd:.2f} of transformers' jitted forward time"
        )
        print(
            f"full forward  : {median(pref):.2f} of transformers' time (median of {len(pref)} "
            f"rounds, each {min(pref):.2f}-{max(pref):.2f}; target <= 1.0)"
        )
        figures.update(
            hf_decode_tok_s=new / hf_gen,
            decode_ratio=median(dec),
            hf_prefill_compiled_s=hf_fwd,
            prefill_compiled_ratio=median(pref),
        )
    else:
        print(f"transformers  : {hf}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if not args.quick:
        print(
            f"bandwidth     : {new / gen_s / args.bound_tok_s:.0%} of the ~{args.bound_tok_s:.0f} "
            "tok/s memory-bandwidth bound"
        )


if __name__ == "__main__":
    main()
