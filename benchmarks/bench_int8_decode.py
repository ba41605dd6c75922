"""int8 weight-only quantization against fp32 (and bf16) for greedy decoding on CPU.

Two parts, both with random weights (transformers' init; no real GPT-2 weights offline):

* ``kernel``: :class:`gpt2_core.cpu_kernels.DecodeStep` itself, the fused single-token step that
  torch and TF generation call once per token, over numpy weights of GPT-2 small and (with
  ``--xl``) GPT-2 XL shapes; batch 1, ms per token at cache slots 16..16+N. This is the
  figure of the issue's "decode >= 3x fp32" and "XL >= 10 tok/s": framework overhead is one
  ctypes call per token (plus a token choice) on top of it.
* ``generate``: each framework's ``model.generate`` (greedy, batch 1, a 16-token prompt,
  ``min_new_tokens`` forcing N new tokens), GPT-2 small shapes, fp32 against
  ``quantize_model`` (the same code ``from_pretrained(quantize="int8")`` runs). tok/s counts
  the N tokens over the whole call, prefill included. Each framework runs in its own
  process (as its users run it), fp32 and int8 models alternating within it. On a CPU, int8
  prompts and decoding steps both run on the kernel in all three (Flax through jax.ffi).

Every round times each variant once, in alternating order, so drifts in the machine's memory
bandwidth (and other processes) hit all of them; the figures are per-round medians and the
ratios are medians of per-round ratios. Decoding is bound by the bytes of weights read per
token: GPT-2 small reads 498 MB in fp32, 249 MB in bf16 and 125 MB in int8 (plus 0.4 MB of
scales), so the ceiling of int8/fp32 is ~4x; the attention over the cache and the per-token
fixed costs keep it lower.

    python benchmarks/bench_int8_decode.py                 # kernel (small) + generate (3 frameworks)
    python benchmarks/bench_int8_decode.py --xl            # also GPT-2 XL shapes in the kernel part
    python benchmarks/bench_int8_decode.py --quick         # 2 rounds, 16 tokens
    python benchmarks/bench_int8_decode.py --parts kernel --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

from gpt2_core import GPT2Config, cpu_kernels
from gpt2_core import quantize as Q
from gpt2_core.init import random_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import load_note, median, median_ratio, timed

PROMPT = 16


# ----------------------------------------------------------------------------- kernel part
def _kernel_weights(sd: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    if kind == "fp32":
        return sd
    if kind == "int8":
        return Q.quantize_state_dict(sd)
    out = {
        k: (v.astype(cpu_kernels.BF16) if Q.reduction_axis(k) is not None else v)
        for k, v in sd.items()
        if k != "lm_head.weight"
    }
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied: one bf16 copy
    return out


def kernel_part(preset: str, kinds: list[str], rounds: int, new: int, threads: int) -> dict:
    cfg = GPT2Config.from_pretrained(preset)
    sd = random_state_dict(cfg, "lm", seed=0)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    H, D, L = cfg.n_head, cfg.n_embd // cfg.n_head, PROMPT + new + 1
    steps = {}
    for kind in kinds:
        kv = [np.zeros((1, H, L, D), np.float32) for _ in range(2 * cfg.n_layer)]
        steps[kind] = cpu_kernels.DecodeStep(
            cfg, _kernel_weights(sd, kind), kv[: cfg.n_layer], kv[cfg.n_layer :], 1, nt=threads
        )
    del sd
    bias = np.zeros((1, L), np.float32)

    def run(step) -> float:
        def steps():
            for i in range(PROMPT, PROMPT + new):
                step(np.array([i % cfg.vocab_size]), np.array([i]), bias, i)

        return new / timed(steps)[0]

    for s in steps.values():  # warm-up: page faults, thread team
        run(s)
    tok_s: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds if r % 2 == 0 else kinds[::-1]
        for k in order:
            tok_s[k].append(run(steps[k]))
        print(
            f"  kernel {preset} round {r}: "
            + ", ".join(f"{k} {tok_s[k][-1]:.1f} tok/s" for k in kinds),
            flush=True,
        )
    res = {
        "preset": preset,
        "tok_s": {k: median(v) for k, v in tok_s.items()},
        "rounds": tok_s,
    }
    for k in kinds:
        if k != "fp32" and "fp32" in kinds:
            res[f"{k}/fp32"] = median_ratio(tok_s[k], tok_s["fp32"])
    return res


# ----------------------------------------------------------------------------- generate part
def _torch_models(cfg, sd):
    import torch

    from gpt2_torch import GPT2LMHeadModel, weights
    from gpt2_torch.quantize import quantize_model

    def build():
        m = GPT2LMHeadModel(cfg).eval()
        weights.load_canonical(m, sd)
        return m

    ids = torch.tensor([list(range(1, PROMPT + 1))])

    def gen(m, n):
        with torch.no_grad():
            m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    return {"fp32": build(), "int8": quantize_model(build())}, gen


def _tf_models(cfg, sd):
    import tensorflow as tf

    from gpt2_tf import GPT2LMHeadModel, weights
    from gpt2_tf.quantize import quantize_model

    def build():
        m = GPT2LMHeadModel(cfg)
        weights.load_canonical(m, sd)
        return m

    ids = tf.constant([list(range(1, PROMPT + 1))])

    def gen(m, n):
        m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    return {"fp32": build(), "int8": quantize_model(build())}, gen


def _flax_models(cfg, sd):
    import jax
    import jax.numpy as jnp

    from gpt2_flax import GPT2LMHeadModel
    from gpt2_flax.quantize import quantize_model

    ids = jnp.asarray([list(range(1, PROMPT + 1))])

    def gen(m, n):
        jax.block_until_ready(m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False))

    return {
        "fp32": GPT2LMHeadModel.from_state_dict(cfg, sd),
        "int8": quantize_model(GPT2LMHeadModel.from_state_dict(cfg, sd)),
    }, gen


BUILDERS = {"torch": _torch_models, "tf": _tf_models, "flax": _flax_models}


def generate_part(framework: str, rounds: int, new: int) -> dict:
    cfg = GPT2Config.from_pretrained("gpt2")
    sd = random_state_dict(cfg, "lm", seed=0)
    models, gen = BUILDERS[framework](cfg, sd)
    del sd
    for m in models.values():  # warm-up: compile, kernel build, page faults
        gen(m, new)
    tok_s: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in order:
            tok_s[k].append(new / timed(lambda k=k: gen(models[k], new))[0])
        print(
            f"  generate {framework} round {r}: "
            + ", ".join(f"{k} {tok_s[k][-1]:.1f} tok/s" for k in models),
            flush=True,
        )
    return {
        "framework": framework,
        "tok_s": {k: median(v) for k, v in tok_s.items()},
        "int8/fp32": median_ratio(tok_s["int8"], tok_s["fp32"]),
        "rounds": tok_s,
    }


def _in_subprocess(framework: str, args: argparse.Namespace) -> dict:
    """generate_part(framework) in a fresh interpreter: torch's, TF's and XLA's thread pools
    and OpenMP teams of the earlier parts would otherwise share the 2 cores with it."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, "--parts", framework, "--json", str(out)]
        cmd += ["--rounds", str(args.rounds), "--new-tokens", str(args.new_tokens)]
        cmd += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("  generate "):
                print(line, flush=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{framework} part failed ({proc.returncode}):\n{proc.stdout}")
        return json.loads(out.read_text())["generate"][0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds, 16 new tokens")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--xl",
        action="store_true",
        help="also GPT-2 XL shapes in the kernel part "
        "(needs ~11 GB: fp32 6.2 GB, bf16 3.1 GB, int8 1.6 GB)",
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["kernel", "torch", "tf", "flax"],
        choices=["kernel", "torch", "tf", "flax"],
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    rounds, new = (2, 16) if args.quick else (args.rounds, args.new_tokens)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    print(load_note())
    print(
        f"CPU kernels: {cpu_kernels.status()}; {args.threads} threads; {rounds} rounds, "
        f"{new} new tokens",
        flush=True,
    )
    results = {
        "rounds": rounds,
        "new_tokens": new,
        "threads": args.threads,
        "kernel": [],
        "generate": [],
    }
    if "kernel" in args.parts:
        for preset in ["gpt2"] + (["gpt2-xl"] if args.xl else []):
            results["kernel"].append(
                kernel_part(preset, ["fp32", "bf16", "int8"], rounds, new, args.threads)
            )
    frameworks = [fw for fw in ("torch", "tf", "flax") if fw in args.parts]
    for fw in frameworks:
        if len(args.parts) == 1:
            results["generate"].append(generate_part(fw, rounds, new))
        else:  # one framework per process, as its users run it (no other thread pools)
            results["generate"].append(_in_subprocess(fw, args))
    results["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("\nmedian tok/s (batch 1, greedy); ratios are medians of per-round ratios")
    for r in results["kernel"]:
        t = r["tok_s"]
        print(
            f"kernel   {r['preset']:8s} fp32 {t['fp32']:6.1f}  bf16 {t['bf16']:6.1f}  "
            f"int8 {t['int8']:6.1f}   bf16/fp32 {r['bf16/fp32']:.2f}x  "
            f"int8/fp32 {r['int8/fp32']:.2f}x"
        )
    for r in results["generate"]:
        t = r["tok_s"]
        print(
            f"generate {r['framework']:8s} fp32 {t['fp32']:6.1f}  int8 {t['int8']:6.1f}   "
            f"int8/fp32 {r['int8/fp32']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
