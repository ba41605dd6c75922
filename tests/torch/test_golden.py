"""Every head, scenario and case against transformers 4.57.6's own outputs (tests/golden.py).

The golden arrays were produced by transformers (PyTorch, eager attention, float32) for the same
weights; see tests/fixtures/hf4576/README.md. We compare logits, hidden states, attentions,
caches, losses and gradients (eager path, since the goldens ask for attentions), the SDPA path's
outputs, cached decoding, and generate() (greedy, penalties, EOS lists, beam search + scores).
"""

import functools

import numpy as np
import pytest
import torch

golden = pytest.importorskip("golden", reason="tests/golden.py (transformers fixtures) is missing")

from gpt2_core import naming  # noqa: E402
from gpt2_core.config import GPT2Config  # noqa: E402
from gpt2_torch import MODEL_CLASSES, weights  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5
CLASS_TO_HEAD = {cls: head for head, cls in naming.HEADS.items()}


def _assert_close(ours, ref, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != golden {ref.shape}"
    diff = np.abs(ours - ref)
    bad = diff > ATOL + RTOL * np.abs(ref)
    assert not bad.any(), f"{what}: max |diff| {diff.max():.3g} at {np.argwhere(bad)[0].tolist()}"


@functools.cache
def _model(case_name: str, head_class: str):
    case = golden.load_case(case_name)
    head = CLASS_TO_HEAD[head_class]
    cfg = GPT2Config.from_dict(case.config_dict)  # a fresh config: double heads edits num_labels
    model = MODEL_CLASSES[head](cfg)
    sd, report = naming.normalize_state_dict(case.weights, cfg, head)
    assert not report.missing and not report.mismatched, report.summary()
    weights.load_canonical(model, sd)  # other heads' parameters were left out as unexpected
    return model.eval()


def _tensor(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))
    return t.long() if np.issubdtype(a.dtype, np.integer) else t


def _runs():
    try:
        cases = golden.list_cases()
    except FileNotFoundError:
        return []
    return [pytest.param(c, h, s, id=f"{c}-{h}-{s}")
            for c in cases for h in golden.load_case(c).heads
            for s in golden.load_case(c).scenarios
            if f"{h}/{s}" in golden.load_case(c).meta["runs"]]


def _our_field(out, model, field: str):
    """Our value for a golden field name (``past_key_values/0/key``, ``grads/<param>`` ...)."""
    parts = field.split("/")
    if parts[0] == "grads":
        return dict(model.named_parameters())[parts[1]].grad
    if parts[0] == "past_key_values":
        slot = {"key": 0, "value": 1, "cross_key": 2, "cross_value": 3}[parts[2]]
        return out.past_key_values[int(parts[1])][slot]
    if len(parts) == 2:
        return out[parts[0]][int(parts[1])]
    return out[field]


def _valid(case, head, scenario, field, shape):
    """Boolean mask broadcastable to ``shape`` selecting real (non-padded) query positions."""
    mask = case.valid_mask(head, scenario)  # (B, T) or (B, C, T)
    if field.startswith(("grads/", "loss", "mc_")) or head == "GPT2ForSequenceClassification":
        return None
    if field.endswith(("cross_key", "cross_value")):
        return None  # encoder positions, no query axis
    if field.startswith(("attentions", "cross_attentions", "past_key_values")):
        m = mask.reshape(-1, mask.shape[-1])  # (B*, T) over the query / cached positions
        return m[:, None, :, None]
    if field.startswith("hidden_states") and mask.ndim == 3 and len(shape) == 3:
        return mask.reshape(-1, mask.shape[-1])[..., None]  # double heads: (B*C, T, E)
    return mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))


@pytest.mark.parametrize(("case_name", "head", "scenario"), _runs())
def test_forward_matches_transformers(case_name, head, scenario):
    case = golden.load_case(case_name)
    model = _model(case_name, head)
    run = case.run_meta(head, scenario)
    kwargs = {k: _tensor(v) for k, v in case.inputs(head, scenario).items()}
    model.zero_grad(set_to_none=True)
    out = model(**kwargs, **run["flags"])
    fields = case.fields(head, scenario)
    if any(f.startswith("grads/") for f in fields):
        out.loss.backward()
    for field in fields:
        ours = _our_field(out, model, field).detach().numpy()
        ref = case.get(head, scenario, field)
        valid = _valid(case, head, scenario, field, ref.shape)
        if valid is not None:
            valid = np.broadcast_to(valid, ref.shape)
            ours, ref = ours[valid], ref[valid]
        _assert_close(ours, ref, f"{case_name} {head} {scenario} {field}")

    # the default SDPA path (no attentions requested) gives the same outputs
    main = {"GPT2Model": "last_hidden_state", "GPT2ForQuestionAnswering": "start_logits",
            "GPT2DoubleHeadsModel": "mc_logits"}.get(head, "logits")
    with torch.no_grad():
        fast = model(**kwargs)[main].numpy()
    ref = case.get(head, scenario, main) if case.has(head, scenario, main) else None
    if ref is not None:
        valid = _valid(case, head, scenario, main, ref.shape)
        if valid is not None:
            valid = np.broadcast_to(valid, ref.shape)
            fast, ref = fast[valid], ref[valid]
        _assert_close(fast, ref, f"{case_name} {head} {scenario} {main} (SDPA)")


def _cases():
    try:
        return golden.list_cases()
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("case_name", _cases())
@pytest.mark.parametrize("scenario", ["nomask", "left_pad"])
def test_cached_decoding_matches_transformers(case_name, scenario):
    case = golden.load_case(case_name)
    ref, recipe = case.cache(scenario)
    model = _model(case_name, "GPT2LMHeadModel")
    ids = _tensor(case.golden[recipe["input_ids"]])
    B, T = ids.shape
    mask = (_tensor(case.golden[recipe["attention_mask"]]) if recipe["attention_mask"]
            else torch.ones_like(ids))
    pos = (_tensor(case.golden[recipe["position_ids"]]) if recipe["position_ids"]
           else torch.arange(T).expand(B, T))
    enc = {}
    if recipe["encoder"]:
        enc = {"encoder_hidden_states": _tensor(case.golden["inputs/encoder_hidden_states"]),
               "encoder_attention_mask": _tensor(case.golden["inputs/encoder_attention_mask"])}
    p = recipe["prefix_len"]
    with torch.no_grad():
        out = model(ids[:, :p], attention_mask=mask[:, :p], position_ids=pos[:, :p],
                    use_cache=True, **enc)
        pkv, steps = out.past_key_values, []
        for t in range(p, T):
            out = model(ids[:, t:t + 1], past_key_values=pkv, attention_mask=mask[:, :t + 1],
                        position_ids=pos[:, t:t + 1], use_cache=True, **enc)
            pkv = out.past_key_values
            steps.append(out.logits)
    _assert_close(torch.cat(steps, 1).numpy(), ref, f"{case_name} cache_{scenario}")


def _generations():
    return [pytest.param(c, g, id=f"{c}-{g}") for c in _cases()
            for g in golden.load_case(c).meta["generation"]]


@pytest.mark.parametrize(("case_name", "name"), _generations())
def test_generate_matches_transformers(case_name, name):
    case = golden.load_case(case_name)
    rec = case.generation(name)
    model = _model(case_name, "GPT2LMHeadModel")
    kwargs = {k: v for k, v in rec["kwargs"].items() if k != "output_scores"}
    if rec.get("encoder_inputs"):
        kwargs["encoder_hidden_states"] = _tensor(case.golden["inputs/encoder_hidden_states"])
        kwargs["encoder_attention_mask"] = _tensor(case.golden["inputs/encoder_attention_mask"])
    out = model.generate(_tensor(rec["input_ids"]), attention_mask=_tensor(rec["attention_mask"]),
                         **kwargs)
    sequences = out.sequences if kwargs.get("return_dict_in_generate") else out
    np.testing.assert_array_equal(sequences.numpy(), rec["sequences"])
    if "sequences_scores" in rec:
        _assert_close(out.sequences_scores.numpy(), rec["sequences_scores"],
                      f"{case_name} {name} scores")
