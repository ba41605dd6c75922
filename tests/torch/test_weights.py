"""Checkpoints: canonical mapping, save/load round trip, transformers' file formats, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model

from gpt2_core import naming
from gpt2_core.formats import safetensors as st
from gpt2_core.init import random_state_dict, tiny_config
from gpt2_torch import (
    MODEL_CLASSES,
    GPT2DoubleHeadsModel,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
    weights,
)

FORMATS = Path(__file__).parents[1] / "fixtures" / "hf4576" / "formats"


def _close(a, b, atol=1e-4):
    a, b = (torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x for x in (a, b))
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# ----------------------------------------------------------------------------- canonical mapping
@pytest.mark.parametrize("head", list(naming.HEADS))
def test_canonical_round_trip(head):
    cfg = tiny_config(pad_token_id=0, add_cross_attention=head == "lm")
    sd = random_state_dict(cfg, head, seed=3, std=0.3)
    model = MODEL_CLASSES[head](cfg)
    weights.load_canonical(model, sd)
    back = weights.to_canonical(model)
    assert set(back) == set(naming.expected_shapes(cfg, head))
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v)


def test_load_canonical_checks_keys_and_shapes():
    cfg = tiny_config()
    model = GPT2LMHeadModel(cfg)
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    bad = dict(sd)
    del bad["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(naming.CheckpointError, match="h.1.mlp.c_fc.bias"):
        weights.load_canonical(model, bad)
    bad = dict(sd, **{"transformer.h.0.attn.c_attn.weight": np.zeros((108, 36), np.float32)})
    with pytest.raises(naming.CheckpointError, match="c_attn.weight"):
        weights.load_canonical(model, bad)
    with pytest.raises(naming.CheckpointError, match="score.weight"):
        weights.load_canonical(model, dict(sd, **{"score.weight": np.zeros((2, 36), np.float32)}))
    untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    with pytest.raises(naming.CheckpointError, match="tie_word_embeddings"):
        weights.load_canonical(model, untied)
    weights.load_canonical(model, {k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert model.lm_head.weight is model.transformer.wte.weight


def test_bfloat16_bridge():
    model = make_model("lm").to(torch.bfloat16)
    sd = weights.to_canonical(model)
    assert str(sd["transformer.wte.weight"].dtype) == "bfloat16"
    other = make_model("lm", seed=5).to(torch.bfloat16)
    weights.load_canonical(other, sd)
    assert torch.equal(other.transformer.h[0].attn.c_attn.weight,
                       model.transformer.h[0].attn.c_attn.weight)


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("head", list(naming.HEADS))
def test_save_load_round_trip(head, tmp_path, ids):
    model = make_model(head, tie_word_embeddings=head != "double_heads")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [naming.HEADS[head]]
    loaded = MODEL_CLASSES[head].from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.load_report.ok and not loaded.load_report.newly_initialized
    x = ids.view(3, 1, 9) if head == "double_heads" else ids
    for a, b in zip(model(x).to_tuple(), loaded(x).to_tuple()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
    if head == "lm":
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
        assert "lm_head.weight" not in st.load_file(tmp_path / "model.safetensors")


def test_sharded_save_and_dtype(tmp_path, ids):
    model = make_model("lm")
    model.save_pretrained(tmp_path, max_shard_size=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _close(GPT2LMHeadModel.from_pretrained(tmp_path)(ids).logits, model(ids).logits)
    half = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half.lm_head.weight is half.transformer.wte.weight


def test_from_pretrained_does_no_random_init(tmp_path, monkeypatch):
    make_model("lm").save_pretrained(tmp_path / "lm")
    make_model("base").save_pretrained(tmp_path / "base")
    real_init = GPT2PreTrainedModel._init_weights
    initialised = []

    def spy(self, module):
        if any(not p.is_meta for p in module.parameters(recurse=False)):
            initialised.append(type(module).__name__)
        real_init(self, module)

    monkeypatch.setattr(GPT2PreTrainedModel, "_init_weights", spy)
    GPT2LMHeadModel.from_pretrained(tmp_path / "lm")
    assert initialised == []
    model = GPT2ForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=4)
    assert initialised == ["Linear"]  # only the new head
    assert model.load_report.newly_initialized == ["score.weight"]
    assert model.score.weight.std() < 0.05  # HF init (0.02), not the checkpoint's 0.3


def test_base_checkpoint_into_heads(tmp_path, ids):
    base = make_model("base")
    base.save_pretrained(tmp_path)
    lm = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert lm.load_report.newly_initialized == []  # the tied head comes from wte
    _close(lm.transformer(ids).last_hidden_state, base(ids).last_hidden_state)
    dh = GPT2DoubleHeadsModel.from_pretrained(tmp_path)
    assert set(dh.load_report.newly_initialized) == {"multiple_choice_head.summary.weight",
                                                     "multiple_choice_head.summary.bias"}
    # and a head checkpoint into the base model drops the head
    lm.save_pretrained(tmp_path / "lm")
    _close(GPT2Model.from_pretrained(tmp_path / "lm")(ids).last_hidden_state,
           base(ids).last_hidden_state)


def test_mismatched_checkpoint_raises(tmp_path):
    make_model("lm").save_pretrained(tmp_path)
    with pytest.raises(naming.CheckpointError, match="mis-shaped"):
        GPT2LMHeadModel.from_pretrained(tmp_path, n_embd=48)
    with pytest.raises(naming.CheckpointError, match="missing"):
        GPT2LMHeadModel.from_pretrained(tmp_path, n_layer=3)
    with pytest.raises(FileNotFoundError):
        GPT2LMHeadModel.from_pretrained(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- transformers' files
_FORMAT_HEADS = {"base_only": GPT2Model, "flax_base": GPT2Model, "tf_base": GPT2Model,
                 "tf_double": GPT2DoubleHeadsModel, "tf_seqcls": GPT2ForSequenceClassification}


def _format_dirs():
    return sorted(p.name for p in FORMATS.iterdir()) if FORMATS.is_dir() else []


@pytest.mark.parametrize("name", _format_dirs())
def test_loads_transformers_files(name):
    d = FORMATS / name
    cls = _FORMAT_HEADS.get(name, GPT2LMHeadModel)
    try:
        model = cls.from_pretrained(d)
    except (NotImplementedError, ImportError) as e:
        pytest.skip(f"the core reader for {name} is not available yet: {e}")
    exp = st.load_file(d / "expected_logits.safetensors")

    def ref(key):  # transformers' PyTorch eager output when stored, else the saved model's own
        return exp.get("pt_eager/" + key, exp["outputs/" + key])

    def t(a):
        return torch.from_numpy(np.array(a))

    if name == "tf_double":
        out = model(t(exp["inputs/mc_input_ids"]), mc_token_ids=t(exp["inputs/mc_token_ids"]))
        _close(out.logits, ref("nomask/logits"))
        _close(out.mc_logits, ref("nomask/mc_logits"))
        return
    field = "last_hidden_state" if cls is GPT2Model else "logits"
    _close(model(t(exp["inputs/input_ids"]))[field], ref(f"nomask/{field}"))
    mask = exp["inputs/left_pad/attention_mask"]
    out = model(t(exp["inputs/left_pad/input_ids"]), attention_mask=t(mask),
                position_ids=t(exp["inputs/left_pad/position_ids"]))[field]
    expected = ref(f"left_pad/{field}")
    if cls is GPT2ForSequenceClassification:
        _close(out, expected)
    else:
        real = t(mask).bool()
        _close(out[real], t(expected)[real])
