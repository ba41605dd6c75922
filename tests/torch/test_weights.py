"""PyTorch checkpoints: tied head, bf16 bridge, sharding, no random init, base checkpoints into heads.

Canonical and save/load round trips, key errors and transformers' files of every backend:
tests/test_backends.py and tests/parity/test_hf_formats.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model

from gpt2_core import naming
from gpt2_core.formats import safetensors as st
from gpt2_core.init import missing_weights, random_state_dict, tiny_config
from gpt2_torch import (
    GPT2DoubleHeadsModel,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
    weights,
)


def _close(a, b, atol=1e-4):
    a, b = (torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x for x in (a, b))
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# ----------------------------------------------------------------------------- canonical mapping
def test_loading_without_the_head_keeps_it_tied():
    # key / shape / tie errors of every backend: tests/test_backends.py
    cfg = tiny_config()
    model = GPT2LMHeadModel(cfg)
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    weights.load_canonical(model, {k: v for k, v in sd.items() if k != "lm_head.weight"})
    assert model.lm_head.weight is model.transformer.wte.weight
    weights.load_canonical(model, sd, assign=True)  # new Parameter objects, tied again
    assert model.lm_head.weight is model.transformer.wte.weight


def test_bfloat16_bridge():
    model = make_model("lm").to(torch.bfloat16)
    sd = weights.to_canonical(model)
    assert str(sd["transformer.wte.weight"].dtype) == "bfloat16"
    other = make_model("lm", seed=5).to(torch.bfloat16)
    weights.load_canonical(other, sd)
    assert torch.equal(
        other.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_attn.weight
    )


# ----------------------------------------------------------------------------- save / load
def test_from_pretrained_state(tmp_path):
    # weights and outputs of the round trip, every head and backend: tests/test_backends.py
    make_model("lm").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"]
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.load_report.ok and not loaded.load_report.newly_initialized
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
    assert initialised == []  # the new head comes from gpt2_core.init.missing_weights
    assert model.load_report.newly_initialized == ["score.weight"]
    assert model.score.weight.std() < 0.05  # HF init (0.02), not the checkpoint's 0.3
    want = missing_weights(model.config, "sequence_classification", ["score.weight"], seed=0)
    assert np.array_equal(model.score.weight.detach().numpy(), want["score.weight"])


def test_base_checkpoint_into_heads(tmp_path, ids):
    base = make_model("base")
    base.save_pretrained(tmp_path)
    lm = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert lm.load_report.newly_initialized == []  # the tied head comes from wte
    _close(lm.transformer(ids).last_hidden_state, base(ids).last_hidden_state)
    dh = GPT2DoubleHeadsModel.from_pretrained(tmp_path)
    assert set(dh.load_report.newly_initialized) == {
        "multiple_choice_head.summary.weight",
        "multiple_choice_head.summary.bias",
    }
    # and a head checkpoint into the base model drops the head
    lm.save_pretrained(tmp_path / "lm")
    _close(
        GPT2Model.from_pretrained(tmp_path / "lm")(ids).last_hidden_state,
        base(ids).last_hidden_state,
    )


def test_mismatched_checkpoint_raises(tmp_path):
    make_model("lm").save_pretrained(tmp_path)
    with pytest.raises(naming.CheckpointError, match="mis-shaped"):
        GPT2LMHeadModel.from_pretrained(tmp_path, n_embd=48)
    with pytest.raises(naming.CheckpointError, match="missing"):
        GPT2LMHeadModel.from_pretrained(tmp_path, n_layer=3)
    with pytest.raises(FileNotFoundError):
        GPT2LMHeadModel.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_adopts_a_copy_on_write_map(tmp_path, ids):
    """safetensors weights become the parameters without a copy (a private map of the file, as
    transformers does); writing to a parameter never reaches the file on disk."""
    make_model("lm").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    before = path.read_bytes()
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    proc_maps = Path("/proc/self/maps")
    maps = proc_maps.read_text() if proc_maps.exists() else None
    if maps is not None:  # Linux: the file is mapped while the model lives
        assert str(path.resolve()) in maps
    want = model(ids).logits
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # in place: copy-on-write pages
    assert path.read_bytes() == before
    assert not torch.allclose(model(ids).logits, want)
    again = GPT2LMHeadModel.from_pretrained(tmp_path)
    _close(again(ids).logits, want)
    assert GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.bfloat16).dtype == torch.bfloat16
