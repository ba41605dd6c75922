"""The numpy reference forward against transformers 4.57.6's logits (golden fixtures).

This checks the fixtures and the reference against each other: two independent sources that
share no code. Backends are checked against the same fixtures in their own test folders.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from gpt2_core import reference
from gpt2_core.config import GPT2Config

CASES = Path(__file__).parents[1] / "fixtures" / "hf4576" / "cases"


def _lm_weights(weights):
    keep = ("transformer.", "lm_head.")
    return {k: v for k, v in weights.items() if k.startswith(keep)}


@pytest.mark.parametrize("case", ["default", "flags", "noscale"])
@pytest.mark.parametrize("scenario", ["nomask", "left_pad", "right_pad"])
def test_reference_matches_transformers(case, scenario):
    d = CASES / case
    cfg = GPT2Config.from_json_file(d / "config.json")
    w = _lm_weights(load_file(str(d / "weights.safetensors")))
    g = load_file(str(d / "golden.safetensors"))
    ids = g[f"inputs/{scenario}/input_ids"]
    mask = g.get(f"inputs/{scenario}/attention_mask")
    pos = g.get(f"inputs/{scenario}/position_ids")
    got = reference.lm_logits(w, cfg, ids, attention_mask=mask, position_ids=pos)
    want = g[f"GPT2LMHeadModel/{scenario}/logits"]
    real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_reference_greedy_matches_transformers_generate():
    """transformers' batched left-padded greedy run == the reference on each unpadded prompt."""
    d = CASES / "default"
    cfg = GPT2Config.from_json_file(d / "config.json")
    w = _lm_weights(load_file(str(d / "weights.safetensors")))
    run = json.loads((d / "golden.json").read_text())["generation"]["greedy"]
    g = load_file(str(d / "golden.safetensors"))
    ids, mask = g[run["input_ids"]], g[run["attention_mask"]]
    seq = np.asarray(run["sequences"])
    new = run["kwargs"]["max_new_tokens"]
    eos = run["kwargs"]["eos_token_id"]
    T = ids.shape[1]
    assert seq.shape == (ids.shape[0], T + new)
    for row in range(ids.shape[0]):
        prompt = ids[row][mask[row].astype(bool)].tolist()
        out = reference.greedy(w, cfg, prompt, new)[len(prompt) :]
        want = seq[row, T:].tolist()
        if eos in want:  # transformers pads after EOS
            cut = want.index(eos) + 1
            out, want = out[:cut], want[:cut]
        assert out == want, row
