"""Checkpoint directories: format detection, load_pretrained / save_pretrained, dtype, errors."""

import json

import ml_dtypes
import numpy as np
import pytest

from gpt2_core import checkpoint, naming
from gpt2_core.hub import HubError
from gpt2_core.init import random_state_dict, tiny_config

CFG = tiny_config()


def test_detects_and_prefers_formats(tmp_path):
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    checkpoint.save_pretrained(sd, CFG, tmp_path, "lm", formats=("tf", "flax", "safetensors"))
    assert checkpoint.detect_formats(tmp_path) == ["safetensors", "tf", "flax"]
    assert checkpoint.choose_format(tmp_path) == ("safetensors", ["tf", "flax"])
    assert checkpoint.choose_format(tmp_path, prefer="flax")[0] == "flax"
    with pytest.raises(FileNotFoundError, match="has no pytorch weights"):
        checkpoint.choose_format(tmp_path, prefer="pytorch")
    with pytest.raises(ValueError, match="unknown format"):
        checkpoint.choose_format(tmp_path, prefer="onnx")


def test_empty_directory_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors.*tf_model.h5"):
        checkpoint.read_state_dict(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoint.load_pretrained(tmp_path, "lm")


def test_dtype_cast_on_load_and_save(tmp_path):
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    checkpoint.save_pretrained(sd, CFG, tmp_path, "lm", dtype="bf16")
    raw, _ = checkpoint.read_state_dict(tmp_path)
    assert all(v.dtype == ml_dtypes.bfloat16 for v in raw.values())
    _, back, _ = checkpoint.load_pretrained(tmp_path, "lm")
    assert back["transformer.wte.weight"].dtype == ml_dtypes.bfloat16
    _, back32, _ = checkpoint.load_pretrained(tmp_path, "lm", dtype="fp32")
    assert back32["transformer.wte.weight"].dtype == np.float32
    np.testing.assert_allclose(
        back32["transformer.wte.weight"], sd["transformer.wte.weight"], rtol=1e-2, atol=1e-2
    )
    _, back16, _ = checkpoint.load_pretrained(tmp_path, "lm", dtype=np.float16)
    assert back16["transformer.h.0.ln_1.weight"].dtype == np.float16
    with pytest.raises(ValueError, match="unsupported dtype"):
        checkpoint.load_pretrained(tmp_path, "lm", dtype="int8")


def test_tied_weight_not_stored_twice(tmp_path):
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    checkpoint.save_pretrained(sd, CFG, tmp_path, "lm")
    raw, _ = checkpoint.read_state_dict(tmp_path)
    assert "lm_head.weight" not in raw and "transformer.wte.weight" in raw


def test_base_checkpoint_into_head_model(tmp_path, caplog):
    cfg = tiny_config(num_labels=4)
    checkpoint.save_pretrained(random_state_dict(cfg, "base", seed=0), cfg, tmp_path, "base")
    raw, _ = checkpoint.read_state_dict(tmp_path)
    assert not any(k.startswith("transformer.") for k in raw)  # base: no prefix, as transformers
    with caplog.at_level("WARNING"):
        _, sd, report = checkpoint.load_pretrained(tmp_path, "token_classification")
    assert report.newly_initialized == ["classifier.weight", "classifier.bias"]
    assert "newly initialised" in caplog.text
    assert "transformer.h.1.mlp.c_fc.weight" in sd


def test_mismatched_checkpoint_raises_with_key_names(tmp_path):
    checkpoint.save_pretrained(random_state_dict(CFG, "lm", seed=0), CFG, tmp_path, "lm")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_embd"] = 48  # the weights were made for 36
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        naming.CheckpointError,
        match=r"transformer.wte.weight \(expected \(257, 48\), got \(257, 36\)\)",
    ):
        checkpoint.load_pretrained(tmp_path, "lm")
    _, _, report = checkpoint.load_pretrained(tmp_path, "lm", strict=False)
    assert not report.ok


def test_save_refuses_incomplete_state_dict(tmp_path):
    sd = random_state_dict(CFG, "lm", seed=0)
    del sd["transformer.ln_f.bias"]
    with pytest.raises(naming.CheckpointError, match="transformer.ln_f.bias"):
        checkpoint.save_pretrained(sd, CFG, tmp_path, "lm")


def test_config_overrides(tmp_path):
    checkpoint.save_pretrained(random_state_dict(CFG, "lm", seed=0), CFG, tmp_path, "lm")
    cfg, _, _ = checkpoint.load_pretrained(tmp_path, "lm", attn_pdrop=0.3)
    assert cfg.attn_pdrop == 0.3


def test_unknown_hub_id_offline_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="Pass a local directory instead"):
        checkpoint.load_pretrained("someone/some-gpt2", "lm")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        checkpoint.load_pretrained("./does/not/exist", "lm")
