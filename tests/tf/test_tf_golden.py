"""gpt2_tf against the golden outputs of transformers 4.57.6 (PyTorch eager), same weights.

Every case x head x scenario: logits, hidden states, attentions, cache, losses and gradients;
the cache recipe; greedy / penalties / EOS-list / beam generation; and every checkpoint folder
that transformers wrote (including its tf_model.h5 files) loaded with ``from_pretrained``.
Outputs at padded query positions are implementation-defined and are not compared.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

golden = pytest.importorskip("golden", reason="tests/golden.py (the golden fixtures) is missing")

from gpt2_core import naming  # noqa: E402
from gpt2_core.config import GPT2Config  # noqa: E402
from gpt2_tf import load_canonical  # noqa: E402
from gpt2_tf.modeling import MODEL_CLASSES  # noqa: E402
from gpt2_tf.weights import TRANSPOSED, variable_map  # noqa: E402

_MODELS: dict = {}
CASE_HEADS = [(c, h) for c in golden.list_cases() for h in golden.load_case(c).heads]


def _model(case_name: str, head_class: str):
    key = (case_name, head_class)
    if key not in _MODELS:
        case = golden.load_case(case_name)
        head = naming.head_of(head_class)
        cfg = GPT2Config.from_dict(case.config_dict)
        model = MODEL_CLASSES[head](cfg)
        wanted = naming.expected_shapes(cfg, head)
        sd = {k: v for k, v in case.weights.items()
              if k in wanted or naming.strip_base_prefix(k) in wanted}
        load_canonical(model, sd)
        _MODELS[key] = model
    return _MODELS[key]


def _close(ours, want, name, mask=None, axis=None):
    ours = np.asarray(ours, np.float32).reshape(want.shape)
    if mask is not None:
        # broadcast the (B, T) mask of valid query positions to the array's T axis
        m = mask.reshape(mask.shape[0], *([1] * (axis - 1)), mask.shape[1],
                         *([1] * (want.ndim - axis - 1)))
        ours, want = np.where(m, ours, 0.0), np.where(m, want, 0.0)
    scale = max(1.0, float(np.abs(want).max()))
    if os.environ.get("GPT2_TF_GOLDEN_VERBOSE"):  # report max|diff| (pytest -s)
        print(f"GOLDEN {name} max|diff| {np.abs(ours - want).max():.3e} scale {scale:.1f}")
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=2e-5 * scale, err_msg=name)


def _t_axis(field: str) -> int:
    # (B, H, T, ...) for attentions and cache tensors, (B, T, ...) otherwise
    return 2 if field.startswith(("attentions", "cross_attentions", "past_key_values")) else 1


@pytest.mark.parametrize(("case_name", "head_class"), CASE_HEADS)
def test_forward_matches_transformers(case_name, head_class):
    case = golden.load_case(case_name)
    model = _model(case_name, head_class)
    for scenario in case.scenarios:
        if f"{head_class}/{scenario}" not in case.meta["runs"]:
            continue
        run = case.run_meta(head_class, scenario)
        kwargs = dict(case.inputs(head_class, scenario))
        flags = {k: v for k, v in run["flags"].items()
                 if k != "use_cache" or head_class != "GPT2ForQuestionAnswering"}
        grads = run.get("grads", [])
        with tf.GradientTape() as tape:
            out = model(**kwargs, **flags)
        if grads:
            vmap = variable_map(model)
            got = tape.gradient(out.loss, [vmap[g] for g in grads])
        valid = case.valid_mask(head_class, scenario)
        if head_class == "GPT2DoubleHeadsModel":
            valid = valid.reshape(-1, valid.shape[-1])  # (B*C, T) as the transformer sees it
        for field in case.fields(head_class, scenario):
            want = case.get(head_class, scenario, field)
            name = f"{case_name}/{head_class}/{scenario}/{field}"
            parts = field.split("/")
            if parts[0] == "grads":
                g = tf.convert_to_tensor(got[grads.index(parts[1])]).numpy()
                _close(g.T if parts[1] in TRANSPOSED else g, want, name)
                continue
            if parts[0] == "past_key_values":
                if parts[2].startswith("cross"):
                    continue  # cross-attention k/v are recomputed, not cached (see docs)
                ours = out.past_key_values[int(parts[1])][0 if parts[2] == "key" else 1]
            elif parts[0] in ("hidden_states", "attentions", "cross_attentions"):
                ours = out[parts[0]][int(parts[1])]
            else:
                ours = out[field]
            per_position = parts[0] not in ("loss", "mc_loss", "mc_logits") and not (
                head_class == "GPT2ForSequenceClassification" and field == "logits")
            if per_position:
                m = valid if want.shape[0] == valid.shape[0] else valid.reshape(
                    want.shape[0], -1)
                if want.ndim > _t_axis(field) and want.shape[_t_axis(field)] != m.shape[-1]:
                    m = None  # (B, C, T, ...) arrays: compare fully
                _close(ours, want, name, m, _t_axis(field))
            else:
                _close(ours, want, name)


@pytest.mark.parametrize("scenario", ["nomask", "left_pad"])
def test_cache_recipe_matches_transformers(scenario):
    case = golden.load_case("default")
    want, recipe = case.cache(scenario)
    model = _model("default", "GPT2LMHeadModel")
    ids = case.golden[recipe["input_ids"]]
    T, p = ids.shape[1], recipe["prefix_len"]
    mask = case.golden[recipe["attention_mask"]] if recipe["attention_mask"] else np.ones_like(ids)
    pos = (case.golden[recipe["position_ids"]] if recipe["position_ids"]
           else np.broadcast_to(np.arange(T), ids.shape))
    out = model(input_ids=ids[:, :p], attention_mask=mask[:, :p], position_ids=pos[:, :p],
                use_cache=True)
    pkv, steps = out.past_key_values, []
    for t in range(p, T):
        out = model(input_ids=ids[:, t:t + 1], past_key_values=pkv, attention_mask=mask[:, :t + 1],
                    position_ids=pos[:, t:t + 1], use_cache=True)
        pkv = out.past_key_values
        steps.append(out.logits.numpy())
    _close(np.concatenate(steps, axis=1), want, f"cache_{scenario}")


# one case: each generation setting compiles its own XLA loop (the forward is covered above)
GENERATIONS = [("default", g) for g in ("greedy", "greedy_penalties", "beam", "greedy_eos_list")]


@pytest.mark.parametrize(("case_name", "run"), GENERATIONS)
def test_generate_matches_transformers(case_name, run):
    case = golden.load_case(case_name)
    rec = case.generation(run)
    if rec.get("encoder_inputs"):
        pytest.skip("generate with encoder_hidden_states is not supported by gpt2_tf yet")
    kwargs = {k: v for k, v in rec["kwargs"].items()
              if k not in ("output_scores", "return_dict_in_generate")}
    model = _model(case_name, "GPT2LMHeadModel")
    out = model.generate(rec["input_ids"], attention_mask=rec["attention_mask"], **kwargs)
    np.testing.assert_array_equal(out.numpy(), rec["sequences"])


@pytest.mark.parametrize("fmt", golden.list_formats())
def test_transformers_checkpoints_load(fmt):
    fx = golden.load_format(fmt)
    arch = fx.config_dict.get("architectures", ["GPT2LMHeadModel"])[0]
    head = naming.head_of(arch)
    try:
        model = MODEL_CLASSES[head].from_pretrained(fx.path)
    except ImportError as e:  # a core format reader that is not there yet
        pytest.skip(f"{fmt}: {e}")
    exp = fx.expected
    field = {"base": "last_hidden_state"}.get(head, "logits")
    if head == "double_heads":
        out = model(input_ids=exp["inputs/mc_input_ids"], mc_token_ids=exp["inputs/mc_token_ids"])
        _close(out.logits, exp["outputs/nomask/logits"], f"{fmt}/logits")
        _close(out.mc_logits, exp["outputs/nomask/mc_logits"], f"{fmt}/mc_logits")
        return
    want = exp.get("pt_eager/nomask/" + field, exp["outputs/nomask/" + field])
    _close(model(input_ids=exp["inputs/input_ids"])[field], want, f"{fmt}/nomask")
    if "inputs/left_pad/input_ids" in exp:
        kw = {k: exp[f"inputs/left_pad/{k}"] for k in ("input_ids", "attention_mask",
                                                        "position_ids")}
        want = exp.get("pt_eager/left_pad/" + field, exp["outputs/left_pad/" + field])
        valid = kw["attention_mask"].astype(bool)
        ours = model(**kw)[field]
        if head == "sequence_classification":
            _close(ours, want, f"{fmt}/left_pad")
        else:
            _close(ours, want, f"{fmt}/left_pad", valid, 1)
