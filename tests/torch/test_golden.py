"""PyTorch-only checks against transformers 4.57.6's outputs (tests/golden.py).

Every backend's golden outputs, cached decoding and generated tokens are checked in
tests/test_backends.py, with ``output_attentions`` (the eager path in torch). Here: the default
SDPA path (no attentions requested) gives the same outputs, and beam search returns
transformers' ``sequences_scores`` (``return_dict_in_generate``, torch only).
"""

import functools

import golden
import numpy as np
import pytest
import torch
from harness import adapter, assert_close

from gpt2_core import naming
from gpt2_core.config import GPT2Config

MAIN = {
    "GPT2Model": "last_hidden_state",
    "GPT2ForQuestionAnswering": "start_logits",
    "GPT2DoubleHeadsModel": "mc_logits",
}


@functools.cache
def _model(case_name: str, head_class: str):
    case = golden.load_case(case_name)
    cfg = GPT2Config.from_dict(case.config_dict)
    head = naming.head_of(head_class)
    sd, report = naming.normalize_state_dict(case.weights, cfg, head)
    assert not report.missing and not report.mismatched, report.summary()
    return adapter("torch").build(cfg, head, sd)


RUNS = [
    pytest.param(c, h, s, id=f"{c}-{h}-{s}")
    for c in golden.list_cases()
    for h in golden.load_case(c).heads
    for s in golden.load_case(c).scenarios
    if f"{h}/{s}" in golden.load_case(c).meta["runs"]
]


@pytest.mark.parametrize(("case_name", "head", "scenario"), RUNS)
def test_sdpa_path_matches_transformers(case_name, head, scenario):
    case = golden.load_case(case_name)
    main = MAIN.get(head, "logits")
    if not case.has(head, scenario, main):
        pytest.fail(f"{case_name} {head} {scenario}: no golden {main}")
    kwargs = {k: adapter("torch").tensor(v) for k, v in case.inputs(head, scenario).items()}
    with torch.no_grad():
        ours = _model(case_name, head)(**kwargs)[main].numpy()  # no output_attentions: SDPA
    ref = case.get(head, scenario, main)
    if head not in ("GPT2ForSequenceClassification", "GPT2DoubleHeadsModel"):
        valid = case.valid_mask(head, scenario)
        valid = np.broadcast_to(
            valid.reshape(valid.shape + (1,) * (ref.ndim - valid.ndim)), ref.shape
        )
        ours, ref = ours[valid], ref[valid]
    assert_close(ours, ref, f"{case_name} {head} {scenario} {main} (SDPA)")


@pytest.mark.parametrize("case_name", golden.list_cases())
def test_beam_search_scores_match_transformers(case_name):
    case = golden.load_case(case_name)
    rec = case.generation("beam")
    assert "sequences_scores" in rec and rec["kwargs"].get("return_dict_in_generate")
    kwargs = {k: v for k, v in rec["kwargs"].items() if k != "output_scores"}
    t = adapter("torch").tensor
    if rec.get("encoder_inputs"):
        kwargs["encoder_hidden_states"] = t(case.golden["inputs/encoder_hidden_states"])
        kwargs["encoder_attention_mask"] = t(case.golden["inputs/encoder_attention_mask"])
    out = _model(case_name, "GPT2LMHeadModel").generate(
        t(rec["input_ids"]), attention_mask=t(rec["attention_mask"]), **kwargs
    )
    np.testing.assert_array_equal(out.sequences.numpy(), rec["sequences"])
    assert_close(out.sequences_scores.numpy(), rec["sequences_scores"], f"{case_name} scores")
