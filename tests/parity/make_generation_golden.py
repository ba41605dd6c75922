"""Regenerate tests/parity/generation_golden.json with transformers 4.57.6 (throwaway venv).

    .venv/bin/python tests/parity/make_generation_golden.py --export /tmp/parity_lm
    /work/hfvenv/bin/python tests/parity/make_generation_golden.py --hf /tmp/parity_lm

The first step (project venv) writes the parity suite's default LM weights and inputs; the
second (a venv with transformers==4.57.6 and torch) runs transformers' generate on them, with
eager attention, and writes the JSON the parity test compares every framework against.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
GEN = {
    "greedy": dict(max_new_tokens=8),
    "penalties": dict(
        max_new_tokens=8, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3
    ),
    "beam": dict(
        max_new_tokens=6,
        num_beams=3,
        num_return_sequences=2,
        length_penalty=0.7,
        early_stopping=True,
    ),
    "eos_list": dict(max_new_tokens=8, eos_token_id=[5, 17], pad_token_id=0),
}
BASE = {"pad_token_id": 0, "eos_token_id": 256}


def export(out: Path) -> None:
    import numpy as np

    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import test_parity as tp

    from gpt2_core import checkpoint

    checkpoint.save_pretrained(tp._weights("default", "lm"), tp._config("default"), out, "lm")
    np.savez(out / "inputs.npz", **tp._inputs("lm", "left_pad"))


def run_hf(src: Path) -> None:
    import numpy as np
    import torch
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(src, attn_implementation="eager").eval()
    inp = np.load(src / "inputs.npz")
    ids = torch.tensor(inp["input_ids"]).long()
    mask = torch.tensor(inp["attention_mask"]).long()
    result = {"transformers_version": transformers.__version__, "runs": {}}
    for name, kw in GEN.items():
        kwargs = {**BASE, **kw}
        out = model.generate(ids, attention_mask=mask, do_sample=False, **kwargs)
        result["runs"][name] = {"kwargs": kwargs, "sequences": out.numpy().tolist()}
    (HERE / "generation_golden.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path)
    ap.add_argument("--hf", type=Path)
    a = ap.parse_args()
    if a.export:
        export(a.export)
    if a.hf:
        run_hf(a.hf)
