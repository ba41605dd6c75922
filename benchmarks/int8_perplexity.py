"""Held-out perplexity of one checkpoint in fp32, bf16 and int8 (weight-only) in each framework.

No released GPT-2 weights are available offline, so the checkpoint is one this project trained
itself (see docs/quantization.md for the recipe: ``gpt2 train --from-scratch`` on this repo's
own sources and docs, a tenth of the files held out). The held-out text is cut into
non-overlapping blocks of ``--block-size`` tokens; perplexity is exp(mean next-token NLL) over
every predicted token, through each backend's ``forward`` (the prompt path: the int8 models
multiply by the dequantized weights there, which is what their decoding kernels compute).

    python benchmarks/int8_perplexity.py --model runs/ppl/checkpoint-400 --text heldout.txt \\
        --tokenizer bytes
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def encode(text: str, tokenizer: str, model: str) -> np.ndarray:
    if tokenizer == "bytes":  # gpt2 train --tokenizer bytes: UTF-8 bytes, EOS 256
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    from gpt2_core.auto import AutoTokenizer

    return np.asarray(AutoTokenizer.from_pretrained(tokenizer or model).encode(text), np.int64)


def _nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed next-token NLL of (B, T, V) logits over ids (B, T) (float64)."""
    lg = logits[:, :-1].astype(np.float64)
    lg -= lg.max(-1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, ids[:, 1:, None], -1).sum())


def runner(framework: str, model: str, kind: str):
    """A function (B, T) ids -> (B, T, V) float logits for ``kind`` in fp32 / bf16 / int8."""
    kw = {"quantize": "int8"} if kind == "int8" else {}
    if framework == "torch":
        import torch

        from gpt2_torch import GPT2LMHeadModel

        if kind == "bf16":
            kw["dtype"] = torch.bfloat16
        m = GPT2LMHeadModel.from_pretrained(model, **kw)

        def run(ids):
            with torch.no_grad():
                return m(torch.from_numpy(ids)).logits.float().numpy()

        return run
    if framework == "tf":
        import tensorflow as tf

        from gpt2_tf import GPT2LMHeadModel

        if kind == "bf16":
            kw["dtype"] = "bf16"
        m = GPT2LMHeadModel.from_pretrained(model, **kw)
        return lambda ids: np.asarray(tf.cast(m(input_ids=tf.constant(ids)).logits, tf.float32))
    import jax.numpy as jnp

    from gpt2_flax import GPT2LMHeadModel

    if kind == "bf16":
        kw["dtype"] = kw["param_dtype"] = jnp.bfloat16
    m = GPT2LMHeadModel.from_pretrained(model, **kw)
    return lambda ids: np.asarray(m(jnp.asarray(ids)).logits, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True, help="held-out text file")
    ap.add_argument("--tokenizer", default=None, help="'bytes', or a tokenizer dir / id")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-blocks", type=int, default=None, help="only the first N blocks")
    ap.add_argument("--frameworks", nargs="+", default=["torch", "tf", "flax"])
    ap.add_argument("--kinds", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with open(args.text, encoding="utf-8") as f:
        ids = encode(f.read(), args.tokenizer, args.model)
    T = args.block_size
    blocks = ids[: len(ids) // T * T].reshape(-1, T)[: args.max_blocks]
    print(f"{len(blocks)} held-out blocks of {T} tokens ({blocks.size} tokens)")
    results = {}
    for fw in args.frameworks:
        for kind in args.kinds:
            run = runner(fw, args.model, kind)
            total = sum(
                _nll(run(blocks[i : i + args.batch]), blocks[i : i + args.batch])
                for i in range(0, len(blocks), args.batch)
            )
            ppl = math.exp(total / (len(blocks) * (T - 1)))
            results[f"{fw}/{kind}"] = ppl
            print(f"{fw:6s} {kind:5s} perplexity {ppl:.4f}", flush=True)
    for fw in args.frameworks:
        base = results.get(f"{fw}/fp32")
        for kind in args.kinds:
            if base and kind != "fp32":
                print(f"{fw:6s} {kind}/fp32 perplexity: {results[f'{fw}/{kind}'] / base - 1:+.3%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
