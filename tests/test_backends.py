"""The checks every backend must pass, run on torch, tf and flax through tests/harness.py.

* golden outputs: every case / head / scenario / field that transformers 4.57.6 recorded
  (tests/golden.py: logits, hidden states, attentions, caches, losses, gradients), the cached
  decode recipe and generate();
* causality, cache equals the full pass, left / right padding equal the unpadded run;
* every head's output shapes; canonical weights and save_pretrained / from_pretrained round
  trips; the shared ``weights.py`` API and its seeded new-head initialisation;
* bad input and bad checkpoints raise clear errors.

One tolerance policy: :func:`harness.assert_close`. Backend-specific behaviour stays in
tests/torch, tests/tf and tests/flax; cross-backend comparisons are in tests/parity.
"""

from __future__ import annotations

import functools
import inspect
import logging

import golden
import numpy as np
import pytest
from harness import FRAMEWORKS, adapter, assert_close, field

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.init import missing_weights, random_state_dict, tiny_config

HEADS = tuple(naming.HEADS)
CASES = golden.list_cases()
assert CASES, "tests/fixtures/hf4576/cases holds no golden case"


@pytest.fixture(params=FRAMEWORKS)
def A(request):
    return adapter(request.param)


# ---------------------------------------------------------------------------- golden outputs
@functools.cache
def _golden_model(fw: str, case_name: str, head_class: str):
    case = golden.load_case(case_name)
    cfg = GPT2Config.from_dict(case.config_dict)  # a fresh config: double heads edits num_labels
    head = naming.head_of(head_class)
    wanted = naming.expected_shapes(cfg, head)
    # the case holds every head's weights: keep this head's (the others would be unexpected)
    sd = {
        k: v
        for k, v in case.weights.items()
        if k in wanted or naming.strip_base_prefix(k) in wanted
    }
    return adapter(fw).build(cfg, head, sd)


def _valid(case, head: str, scenario: str, name: str, shape) -> np.ndarray | None:
    """Boolean mask broadcastable to ``shape`` selecting the real (non-padded) query positions;
    None where every entry counts (losses, gradients, pooled outputs, encoder positions)."""
    mask = case.valid_mask(head, scenario)  # (B, T) or (B, C, T)
    if name.startswith(("grads/", "loss", "mc_")) or head == "GPT2ForSequenceClassification":
        return None
    if name.endswith(("cross_key", "cross_value")):
        return None
    if name.startswith(("attentions", "cross_attentions", "past_key_values")):
        return mask.reshape(-1, mask.shape[-1])[:, None, :, None]  # (B*, 1, T, 1)
    if name.startswith("hidden_states") and mask.ndim == 3 and len(shape) == 3:
        return mask.reshape(-1, mask.shape[-1])[..., None]  # double heads: (B*C, T, E)
    return mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))


def _compare(case, head, scenario, name, ours, ref):
    valid = _valid(case, head, scenario, name, ref.shape)
    if valid is not None:
        valid = np.broadcast_to(valid, ref.shape)
        ours, ref = np.asarray(ours).reshape(ref.shape)[valid], ref[valid]
    return assert_close(ours, ref, f"{case.name} {head} {scenario} {name}")


GOLDEN_RUNS = [pytest.param(c, h, id=f"{c}-{h}") for c in CASES for h in golden.load_case(c).heads]


@pytest.mark.parametrize(("case_name", "head"), GOLDEN_RUNS)
def test_golden_outputs(A, case_name, head):
    """Every recorded field of every scenario, and the recorded gradients, match transformers."""
    case = golden.load_case(case_name)
    model = _golden_model(A.name, case_name, head)
    runs = [s for s in case.scenarios if f"{head}/{s}" in case.meta["runs"]]
    assert runs, f"{case_name}: no run recorded for {head}"
    for scenario in runs:
        run = case.run_meta(head, scenario)
        inputs = dict(case.inputs(head, scenario))
        out = A.call(model, **inputs, **run["flags"])
        compared = 0
        for name in case.fields(head, scenario):
            if name.startswith("grads/"):
                continue
            ours = field(out, name)
            if ours is not None:  # None: cross-attention K/V that tf and flax do not cache
                _compare(case, head, scenario, name, ours, case.get(head, scenario, name))
                compared += 1
        assert compared, f"{case_name} {head} {scenario}: nothing compared"
        if run.get("grads"):
            grads = A.grads(model, inputs, **run["flags"])
            for name in run["grads"]:
                assert_close(
                    grads[name],
                    case.get(head, scenario, f"grads/{name}"),
                    f"{case_name} {head} {scenario} grads/{name}",
                )


@pytest.mark.parametrize("scenario", ["nomask", "left_pad"])
@pytest.mark.parametrize("case_name", CASES)
def test_golden_cached_decode(A, case_name, scenario):
    """A prefix pass then single-token steps on the returned cache give transformers' logits."""
    case = golden.load_case(case_name)
    ref, recipe = case.cache(scenario)
    model = _golden_model(A.name, case_name, "GPT2LMHeadModel")
    ids = case.golden[recipe["input_ids"]]
    B, T = ids.shape
    mask = case.golden[recipe["attention_mask"]] if recipe["attention_mask"] else np.ones_like(ids)
    pos = (
        case.golden[recipe["position_ids"]]
        if recipe["position_ids"]
        else np.broadcast_to(np.arange(T), (B, T)).copy()
    )
    enc = {}
    if recipe["encoder"]:
        enc = {
            "encoder_hidden_states": case.golden["inputs/encoder_hidden_states"],
            "encoder_attention_mask": case.golden["inputs/encoder_attention_mask"],
        }
    p = recipe["prefix_len"]
    out = A.call(
        model,
        input_ids=ids[:, :p],
        attention_mask=mask[:, :p],
        position_ids=pos[:, :p],
        use_cache=True,
        **enc,
    )
    steps = []
    for t in range(p, T):
        out = A.call(
            model,
            input_ids=ids[:, t : t + 1],
            past_key_values=out["past_key_values"],
            attention_mask=mask[:, : t + 1],
            position_ids=pos[:, t : t + 1],
            use_cache=True,
            **enc,
        )
        steps.append(field(out, "logits"))
    assert_close(np.concatenate(steps, 1), ref, f"{case_name} cache_{scenario}")


#: generate() compiles one XLA loop per setting in tf and flax: every case in torch, the
#: default case (greedy, penalties, beam, EOS list) in the others
GENERATE_CASES = {"torch": CASES, "tf": ["default"], "flax": ["default"]}
GENERATIONS = [
    pytest.param(fw, c, g, id=f"{fw}-{c}-{g}")
    for fw in FRAMEWORKS
    for c in GENERATE_CASES[fw]
    for g in golden.load_case(c).meta["generation"]
]


@pytest.mark.parametrize(("fw", "case_name", "name"), GENERATIONS)
def test_golden_generate(fw, case_name, name):
    """generate() gives exactly transformers' tokens."""
    A = adapter(fw)
    case = golden.load_case(case_name)
    rec = case.generation(name)
    kwargs = {
        k: v
        for k, v in rec["kwargs"].items()
        if k not in ("output_scores", "return_dict_in_generate")
    }
    if rec.get("encoder_inputs"):
        if fw != "torch":  # not in GENERATE_CASES: guard against a silent half-check
            pytest.fail(f"{fw}: generate with encoder_hidden_states is not wired")
        kwargs["encoder_hidden_states"] = A.tensor(case.golden["inputs/encoder_hidden_states"])
        kwargs["encoder_attention_mask"] = A.tensor(case.golden["inputs/encoder_attention_mask"])
    model = _golden_model(fw, case_name, "GPT2LMHeadModel")
    got = A.generate(model, rec["input_ids"], rec["attention_mask"], **kwargs)
    np.testing.assert_array_equal(got, rec["sequences"], err_msg=f"{fw} {case_name} {name}")


# ---------------------------------------------------------------------------- tiny random models
@functools.cache
def _model(fw: str, head: str = "lm", seed: int = 0, **overrides):
    """A tiny model (2 layers, n_embd 36, 3 heads, vocab 257) with std-0.3 weights."""
    overrides.setdefault("pad_token_id", 0)
    overrides.setdefault("num_labels", 3)
    cfg = tiny_config(**overrides)
    return adapter(fw).build(cfg, head, random_state_dict(cfg, head, seed=seed, std=0.3))


def _ids(shape, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 257, shape).astype(np.int64)


def _left_pad(ids: np.ndarray, n_pads) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-pad row i by n_pads[i] (pad id 0): ids, mask and position ids counted from the mask."""
    out, mask = np.zeros_like(ids), np.ones_like(ids)
    T = ids.shape[1]
    for i, n in enumerate(n_pads):
        out[i, n:] = ids[i, : T - n]
        mask[i, :n] = 0
    pos = np.where(mask == 1, np.cumsum(mask, -1) - 1, 1)
    return out, mask, pos


PRIMARY = {
    "base": "last_hidden_state",
    "lm": "logits",
    "double_heads": "mc_logits",
    "sequence_classification": "logits",
    "token_classification": "logits",
    "question_answering": "start_logits",
}


@pytest.mark.parametrize("head", HEADS)
def test_every_head_output_shapes(A, head):
    B, T = 2, 5
    ids = _ids((B, T))
    x = ids[None] if head == "double_heads" else ids  # (1 batch, 2 choices, T)
    out = A.call(
        _model(A.name, head), input_ids=x, output_hidden_states=True, output_attentions=True
    )
    want = {
        "base": (B, T, 36),
        "lm": (B, T, 257),
        "double_heads": (1, 2),
        "sequence_classification": (B, 3),
        "token_classification": (B, T, 3),
        "question_answering": (B, T),
    }[head]
    assert field(out, PRIMARY[head]).shape == want
    assert len(out["hidden_states"]) == 3 and len(out["attentions"]) == 2
    assert field(out, "attentions/0").shape == (B, 3, T, T)
    if head == "double_heads":
        assert field(out, "logits").shape == (1, 2, T, 257)
    if head == "question_answering":
        assert field(out, "end_logits").shape == (B, T)


def test_causality(A):
    """Changing tokens from position 5 on leaves the outputs at positions 0-4 unchanged."""
    model = _model(A.name)
    ids = _ids((3, 9))
    changed = ids.copy()
    changed[:, 5:] = (changed[:, 5:] + 7) % 256 + 1
    a = field(A.call(model, input_ids=ids), "logits")
    b = field(A.call(model, input_ids=changed), "logits")
    assert_close(b[:, :5], a[:, :5], f"{A.name} earlier positions")
    assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-2  # later ones do change


def test_cache_equals_full_pass(A):
    """Prefix + chunk + one token at a time on the returned cache equals one full pass."""
    model = _model(A.name)
    ids = _ids((3, 9))
    full = field(A.call(model, input_ids=ids), "logits")
    out = A.call(model, input_ids=ids[:, :4], use_cache=True)
    steps = [field(out, "logits")]
    out = A.call(
        model, input_ids=ids[:, 4:7], past_key_values=out["past_key_values"], use_cache=True
    )
    steps.append(field(out, "logits"))
    for t in (7, 8):
        out = A.call(
            model,
            input_ids=ids[:, t : t + 1],
            past_key_values=out["past_key_values"],
            use_cache=True,
        )
        steps.append(field(out, "logits"))
    assert_close(np.concatenate(steps, 1), full, f"{A.name} cached")
    assert field(out, "past_key_values/0/key").shape == (3, 3, 9, 12)  # (B, H, T, D)


def test_cache_with_left_padding_equals_full_pass(A):
    model = _model(A.name)
    ids, mask, pos = _left_pad(_ids((3, 9)), [0, 2, 5])
    full = field(A.call(model, input_ids=ids, attention_mask=mask, position_ids=pos), "logits")
    a = A.call(
        model,
        input_ids=ids[:, :6],
        attention_mask=mask[:, :6],
        position_ids=pos[:, :6],
        use_cache=True,
    )
    b = A.call(
        model,
        input_ids=ids[:, 6:],
        attention_mask=mask,
        position_ids=pos[:, 6:],
        past_key_values=a["past_key_values"],
        use_cache=True,
    )
    real = mask.astype(bool)
    got = np.concatenate([field(a, "logits"), field(b, "logits")], 1)
    assert_close(got[real], full[real], f"{A.name} left-padded cache")


def test_left_and_right_padding_equal_unpadded(A):
    model = _model(A.name)
    x = _ids((1, 5))
    ref = field(A.call(model, input_ids=x), "logits")[0]
    left, lmask, pos = _left_pad(np.concatenate([x, np.zeros((1, 4), np.int64)], 1), [4])
    out = field(A.call(model, input_ids=left, attention_mask=lmask, position_ids=pos), "logits")
    assert_close(out[0, 4:], ref, f"{A.name} left padding")
    assert np.isfinite(out).all()  # fully masked pad rows stay finite
    right = np.concatenate([x, np.zeros((1, 4), np.int64)], 1)
    rmask = (right != 0).astype(np.int64)
    out = field(A.call(model, input_ids=right, attention_mask=rmask), "logits")
    assert_close(out[0, :5], ref, f"{A.name} right padding")


def test_fully_padded_row_is_finite(A):
    ids, mask, pos = _left_pad(_ids((3, 9)), [0, 8, 9])  # row 2 is all padding
    out = A.call(_model(A.name), input_ids=ids, attention_mask=mask, position_ids=pos)
    assert np.isfinite(field(out, "logits")).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_classification_pools_last_real_token(A, side):
    model = _model(A.name, "sequence_classification")
    x = _ids((1, 5))
    ref = field(A.call(model, input_ids=x), "logits")
    pad = np.zeros((1, 3), np.int64)
    if side == "left":
        xp, mask, pos = _left_pad(np.concatenate([x, pad], 1), [3])
        out = A.call(model, input_ids=xp, attention_mask=mask, position_ids=pos)
    else:
        xp = np.concatenate([x, pad], 1)
        out = A.call(model, input_ids=xp, attention_mask=(xp != 0).astype(np.int64))
    assert_close(field(out, "logits"), ref, f"{A.name} {side}-padded pooling")
    nopad = _model(A.name, "sequence_classification", pad_token_id=None)
    with pytest.raises(ValueError, match="(?i)pad"):
        A.call_eager(nopad, input_ids=_ids((2, 5)))


# ---------------------------------------------------------------------------- weights and files
@pytest.mark.parametrize("head", HEADS)
def test_canonical_weights_round_trip(A, head):
    """canonical -> model -> canonical is bit-exact, in expected_shapes order (untied heads,
    cross-attention weights included)."""
    cfg = tiny_config(
        pad_token_id=0,
        num_labels=3,
        tie_word_embeddings=head != "lm",
        add_cross_attention=head == "base",
    )
    sd = random_state_dict(cfg, head, seed=3, std=0.3)
    back = A.canonical(A.build(cfg, head, sd))
    assert list(back) == list(naming.expected_shapes(cfg, head))
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=f"{A.name} {head} {k}")


@pytest.mark.parametrize("head", HEADS)
def test_save_pretrained_from_pretrained_round_trip(A, head, tmp_path):
    model = _model(A.name, head)
    A.save(model, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = A.load(tmp_path, head)
    before, after = A.canonical(model), A.canonical(loaded)
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{A.name} {head} {k}")
    ids = _ids((2, 5))
    x = ids[None] if head == "double_heads" else ids
    a, b = A.forward(model, {"input_ids": x}), A.forward(loaded, {"input_ids": x})
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=f"{A.name} {head} {k}")


def test_weights_modules_share_one_api():
    """to_canonical / load_canonical / variable_map / is_transposed / TRANSPOSED in every
    backend, load_canonical with the same shared keywords and defaults, and the transpose list
    taken from gpt2_core.naming."""
    shared = None
    for fw in FRAMEWORKS:
        W = adapter(fw).weights
        for name in (
            "to_canonical",
            "load_canonical",
            "variable_map",
            "is_transposed",
            "TRANSPOSED",
        ):
            assert hasattr(W, name), f"gpt2_{fw}.weights lacks {name}"
        assert W.TRANSPOSED in ((), naming.LINEAR_HEAD_WEIGHTS), fw
        params = inspect.signature(W.load_canonical).parameters
        common = {
            k: (params[k].kind, params[k].default) for k in ("strict", "init_missing", "seed")
        }
        assert list(params)[:2] == ["model", "state_dict"]
        shared = shared or common
        assert common == shared, fw
    assert shared["strict"][1] is True and shared["init_missing"][1] is False
    assert shared["seed"][1] == 0


def test_new_head_initialisation_is_seeded_and_the_same_everywhere(tmp_path):
    """A base checkpoint into a classifier: load_canonical(init_missing=True, seed=s) and
    from_pretrained give gpt2_core.init.missing_weights(seed) in every backend."""
    cfg = tiny_config(pad_token_id=0, num_labels=4)
    base = random_state_dict(cfg, "base", seed=0, std=0.3)
    head = "sequence_classification"
    for seed in (0, 7):
        want = missing_weights(cfg, head, ["score.weight"], seed=seed)["score.weight"]
        for fw in FRAMEWORKS:
            A = adapter(fw)
            model = A.build(cfg, head, random_state_dict(cfg, head, seed=5, std=0.3))
            report = A.weights.load_canonical(model, base, init_missing=True, seed=seed)
            assert report.newly_initialized == ["score.weight"]
            np.testing.assert_array_equal(A.canonical(model)["score.weight"], want, err_msg=fw)
    assert not np.array_equal(
        want, missing_weights(cfg, head, ["score.weight"], seed=0)["score.weight"]
    )
    # from_pretrained of a base checkpoint: the default seed, so every backend has the same head
    adapter("torch").save(_model("torch", "base", num_labels=4), tmp_path)
    want = missing_weights(cfg, head, ["score.weight"], seed=0)["score.weight"]
    for fw in FRAMEWORKS:
        A = adapter(fw)
        model = A.pkg.GPT2ForSequenceClassification.from_pretrained(tmp_path)
        np.testing.assert_array_equal(A.canonical(model)["score.weight"], want, err_msg=fw)


def test_load_canonical_rejects_bad_state_dicts(A, caplog):
    cfg = tiny_config(pad_token_id=0)
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    model = A.build(cfg, "lm", sd)
    load = A.weights.load_canonical
    missing = {k: v for k, v in sd.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    with pytest.raises(naming.CheckpointError, match=r"missing.*h\.1\.mlp\.c_fc\.bias"):
        load(model, missing)
    bad = dict(sd, **{"transformer.h.0.attn.c_attn.weight": np.zeros((108, 36), np.float32)})
    with pytest.raises(naming.CheckpointError, match=r"mis-shaped.*h\.0\.attn\.c_attn\.weight"):
        load(model, bad)
    extra = dict(sd, **{"score.weight": np.zeros((2, 36), np.float32)})
    with pytest.raises(naming.CheckpointError, match=r"unexpected.*score\.weight"):
        load(model, extra)
    untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    with pytest.raises(naming.CheckpointError, match="tie_word_embeddings"):
        load(model, untied)
    with caplog.at_level(logging.WARNING):
        report = load(model, extra, strict=False)  # logged, and the rest is loaded
    assert report.unexpected == ["score.weight"] and "score.weight" in caplog.text
    # keys without the ``transformer.`` prefix and without the tied head load too
    report = load(
        model, {naming.strip_base_prefix(k): v for k, v in sd.items() if k != "lm_head.weight"}
    )
    assert report.ok and report.tied == ["lm_head.weight"]
    np.testing.assert_array_equal(
        A.canonical(model)["lm_head.weight"], sd["transformer.wte.weight"]
    )


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(A):
    lm = _model(A.name)
    ids = np.array([[1, 2, 3]])
    cases = [
        (ValueError, r"input_ids contains 257", dict(input_ids=np.array([[1, 257]]))),
        (ValueError, r"input_ids contains -1", dict(input_ids=np.array([[1, -1]]))),
        (TypeError, "integer", dict(input_ids=np.array([[1.0, 2.0]], np.float32))),
        (ValueError, r"n_positions|position_ids contains 32", dict(input_ids=_ids((1, 33)))),
        (
            ValueError,
            r"position_ids contains 40",
            dict(input_ids=np.array([[1, 2]]), position_ids=np.array([[0, 40]])),
        ),
        (
            ValueError,
            r"token_type_ids contains 300",
            dict(input_ids=ids, token_type_ids=np.full_like(ids, 300)),
        ),
        (ValueError, r"attention_mask", dict(input_ids=ids, attention_mask=np.ones((1, 5)))),
        (
            ValueError,
            r"input_ids and inputs_embeds|either input_ids or inputs_embeds",
            dict(input_ids=ids, inputs_embeds=np.zeros((1, 3, 36), np.float32)),
        ),
        (
            ValueError,
            "cross-attention",
            dict(input_ids=ids, encoder_hidden_states=np.zeros((1, 2, 36), np.float32)),
        ),
    ]
    for error, match, kwargs in cases:
        with pytest.raises(error, match=match):
            A.call_eager(lm, **kwargs)
    with pytest.raises(ValueError, match="input_ids"):
        A.generate(lm, np.array([[1, 999]]), np.ones((1, 2), np.int64), max_new_tokens=2)


def test_out_of_range_labels_raise_clear_errors(A):
    with pytest.raises(ValueError, match=r"labels contains 999|labels must be"):
        A.call_eager(
            _model(A.name), input_ids=np.array([[1, 2, 3]]), labels=np.array([[1, 2, 999]])
        )
