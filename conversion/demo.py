"""``gpt2 demo`` / ``make demo``: the project in one run.

1. Tokenise a prompt with the real GPT-2 tokenizer (shipped, offline).
2. Build a seeded GPT-2 checkpoint (or load ``--model``) and save it as safetensors.
3. Convert it through every transformers format (sharded safetensors, pytorch_model.bin,
   tf_model.h5, flax_model.msgpack) and check every round trip is bit-exact.
4. Run the LM in every installed framework from a different format each, print max|diff| of
   the logits against a plain-numpy reference, and the greedy continuation of each with timings.

Exit status 1 if any check fails.
"""

from __future__ import annotations

import importlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from conversion import verify
from gpt2_core import checkpoint, naming, reference
from gpt2_core.config import GPT2Config
from gpt2_core.init import random_state_dict

#: the seeded demo model: GPT-2's vocabulary and context with a narrow, shallow body so the
#: demo runs in seconds on a laptop CPU (16.4M parameters).
DEMO_CONFIG = dict(n_layer=4, n_head=8, n_embd=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
FORMATS = [
    ("safetensors", "safetensors"),
    ("sharded", "safetensors"),
    ("pytorch", "pytorch"),
    ("tf", "tf"),
    ("flax", "flax"),
]
# framework -> (package, format it loads in the demo)
FRAMEWORKS = {
    "torch": ("gpt2_torch", "pytorch"),
    "tf": ("gpt2_tf", "tf"),
    "flax": ("gpt2_flax", "flax"),
}


def _tokenizer():
    try:
        from gpt2_core.tokenizer_fast import GPT2TokenizerFast

        return GPT2TokenizerFast.from_pretrained("gpt2")
    except (ImportError, AttributeError):
        return None


def _to_framework(name: str) -> Callable[[np.ndarray], object]:
    if name == "torch":
        import torch

        return lambda a: torch.as_tensor(a)
    if name == "tf":
        import tensorflow as tf

        return lambda a: tf.constant(a)
    import jax.numpy as jnp

    return lambda a: jnp.asarray(a)


def _run_framework(name: str, directory: Path, ids: np.ndarray, max_new_tokens: int):
    """Logits of the prompt, generated ids and timings (load, forward, first generate call
    including compilation, second call) in one framework."""
    conv = _to_framework(name)
    t0 = time.perf_counter()
    model = verify.load_model(name, directory, "lm")
    t1 = time.perf_counter()
    logits = verify.run(name, model, "lm", ids)
    t2 = time.perf_counter()
    out = model.generate(conv(ids), max_new_tokens=max_new_tokens)
    t3 = time.perf_counter()
    out = model.generate(conv(ids), max_new_tokens=max_new_tokens)
    t4 = time.perf_counter()
    return logits, np.asarray(out)[0].tolist(), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)


def _heads_table(config: GPT2Config, work: Path, frameworks: list[str]) -> bool:
    """Every head, seeded, saved once and run in every framework: max|diff| vs the first."""
    ok = True
    # batched classification pools the last non-pad token: it needs a pad id (GPT-2 uses EOS)
    config = config.copy(pad_token_id=config.eos_token_id)
    print(
        f"    {'model':<32}"
        + "".join(f"{fw:>12}" for fw in frameworks[1:])
        + f"   (max|diff| vs {frameworks[0]}, primary output)"
    )
    for head, cls in naming.HEADS.items():
        d = work / "heads" / head
        checkpoint.save_pretrained(random_state_dict(config, head, seed=1), config, d, head)
        ids = verify.fixed_inputs(config)
        outs = [verify.run(fw, verify.load_model(fw, d, head), head, ids) for fw in frameworks]
        diffs = [float(np.max(np.abs(o - outs[0]))) for o in outs[1:]]
        good = all(x <= 1e-4 * max(1.0, float(np.max(np.abs(outs[0])))) for x in diffs)
        ok &= good
        print(
            f"    {cls:<32}" + "".join(f"{x:12.2e}" for x in diffs) + ("" if good else "  MISMATCH")
        )
    return ok


def run(
    model: str | None = None,
    prompt: str = "Hello",
    max_new_tokens: int = 16,
    out: str | None = None,
    frameworks: str = "torch,tf,flax",
) -> int:
    ok = True
    print("== gpt2-zoo demo ==")
    tok = _tokenizer()
    if tok is not None:
        ids = np.array([tok.encode(prompt)], dtype=np.int64)
        print(f"prompt: {prompt!r}\ntokens: {ids[0].tolist()} ({ids.shape[1]} tokens, GPT-2 BPE)")
    else:
        ids = np.array(
            [[15496, 995, 11, 616, 1438, 318]], dtype=np.int64
        )  # "Hello world, my name is"
        print(f"(tokenizer not available yet) using ids {ids[0].tolist()}")

    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="gpt2-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if model is None:
        config = GPT2Config(**DEMO_CONFIG)
        sd = random_state_dict(config, "lm", seed=0)
        what = f"seeded GPT-2 checkpoint (seed 0, {config.num_parameters('lm'):,} parameters)"
    else:
        config, sd, _ = checkpoint.load_pretrained(model, "lm")
        what = f"{model} ({config.num_parameters('lm'):,} parameters)"
    src = work / "safetensors"
    checkpoint.save_pretrained(sd, config, src, "lm")
    if tok is not None:
        tok.save_pretrained(src)  # the tokenizer travels with the weights
    print(f"\n[1] {what} -> {src}  ({time.perf_counter() - t0:.1f}s)")

    print("\n[2] conversions (each read back and compared bit for bit with the source)")
    print(f"    {'format':<12} {'files':>5} {'size MB':>9} {'write s':>8} {'read s':>7}  exact")
    _, canon, _ = checkpoint.load_pretrained(src, "lm")
    dirs: dict[str, Path] = {}
    for label, fmt in FORMATS:
        d = work / label
        t = time.perf_counter()
        shard = max(1, sum(v.nbytes for v in canon.values()) // 3) if label == "sharded" else "5GB"
        files = checkpoint.save_pretrained(
            canon, config, d, "lm", formats=(fmt,), max_shard_size=shard
        )
        tw = time.perf_counter() - t
        t = time.perf_counter()
        _, back, report = checkpoint.load_pretrained(d, "lm")
        tr = time.perf_counter() - t
        exact = (
            report.ok
            and set(back) == set(canon)
            and all(np.array_equal(np.asarray(back[k]), np.asarray(canon[k])) for k in canon)
        )
        ok &= exact
        size = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"    {label:<12} {len(files) - 1:>5} {size:>9.1f} {tw:>8.2f} {tr:>7.2f}  "
            f"{'yes' if exact else 'NO'}"
        )
        dirs[label] = d

    print("\n[3] numpy reference forward (framework-free)")
    t = time.perf_counter()
    ref = reference.lm_logits(canon, config, ids)
    print(f"    logits {ref.shape}, {time.perf_counter() - t:.2f}s")

    print("\n[4] frameworks")
    results = {}
    for name in [f.strip() for f in frameworks.split(",") if f.strip()]:
        if name not in FRAMEWORKS:
            print(f"    {name}: unknown framework (choose from {', '.join(FRAMEWORKS)})")
            ok = False
            continue
        package, fmt = FRAMEWORKS[name]
        try:
            mod = importlib.import_module(package)
            available = hasattr(mod, "GPT2LMHeadModel")
        except ImportError as e:
            print(f"    {name:<5} not installed ({e})")
            continue
        if not available:
            print(f"    {name:<5} backend not implemented yet")
            continue
        logits, gen, (tl, tf_, tg1, tg2) = _run_framework(name, dirs[fmt], ids, max_new_tokens)
        diff = float(np.max(np.abs(logits - ref)))
        results[name] = gen
        good = diff < 1e-3
        ok &= good
        print(
            f"    {name:<5} from {fmt:<8} load {tl:5.2f}s  forward {tf_:5.2f}s  "
            f"generate: first call {tg1:5.2f}s, then {max_new_tokens / tg2:6.1f} tok/s  "
            f"max|logits - numpy| = {diff:.2e} {'ok' if good else 'MISMATCH'}"
        )
    if results:
        print("\n[5] greedy continuations")
        first = next(iter(results.values()))
        for name, gen in results.items():
            text = tok.decode(gen[ids.shape[1] :]) if tok is not None else gen[ids.shape[1] :]
            same = gen == first
            ok &= same
            print(f"    {name:<5} {'identical' if same else 'DIFFERENT'}: {text!r}")
    else:
        print("\n    no framework backend available: greedy continuation from the numpy reference")
        gen = reference.greedy(canon, config, ids[0].tolist(), min(max_new_tokens, 8))
        text = tok.decode(gen[ids.shape[1] :]) if tok is not None else gen[ids.shape[1] :]
        print(f"    numpy {text!r}")
    if len(results) > 1:
        print("\n[6] all six models, seeded heads, in every framework")
        ok &= _heads_table(config, work, list(results))
    print(f"\nartifacts in {work}")
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


__all__ = ["run"]
