"""Every checkpoint file transformers 4.57.6 wrote loads into every backend with its outputs.

tests/fixtures/hf4576/formats/<name>/ holds a real file in one of transformers' formats
(safetensors, sharded safetensors, pytorch_model.bin zip and legacy, tf_model.h5 for four
classes, flax_model.msgpack tied and untied, a base-only checkpoint) and the outputs
transformers computed from it in its own framework.
"""

from __future__ import annotations

import golden
import numpy as np
import pytest
from harness import adapter, load_pretrained
from safetensors.numpy import load_file

from conversion.convert import head_from_config
from gpt2_core.config import GPT2Config

FRAMEWORKS = ("torch", "tf", "flax")
FIELD = {
    "base": "last_hidden_state",
    "lm": "logits",
    "sequence_classification": "logits",
    "double_heads": "logits",
}


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("name", golden.list_formats())
def test_transformers_file_loads_with_its_outputs(fw, name):
    d = golden.format_dir(name)
    head = head_from_config(GPT2Config.from_json_file(d / "config.json"))
    expected = load_file(str(d / "expected_logits.safetensors"))
    model = load_pretrained(fw, d, head)
    if head == "double_heads":
        inputs = {
            "input_ids": expected["inputs/mc_input_ids"],
            "mc_token_ids": expected["inputs/mc_token_ids"],
        }
        out = adapter(fw).forward(model, inputs)
        np.testing.assert_allclose(
            out["mc_logits"], expected["outputs/nomask/mc_logits"], atol=1e-4, rtol=1e-4
        )
        np.testing.assert_allclose(
            out["logits"], expected["outputs/nomask/logits"], atol=1e-4, rtol=1e-4
        )
        return
    for scenario in ("nomask", "left_pad"):
        if scenario == "nomask":
            inputs = {"input_ids": expected["inputs/input_ids"]}
        else:
            inputs = {
                k: expected[f"inputs/left_pad/{k}"]
                for k in ("input_ids", "attention_mask", "position_ids")
            }
        out = adapter(fw).forward(model, inputs)[FIELD[head]]
        # transformers' Flax ignores scale_attn_weights=False: where it did, the fixture keeps
        # transformers' PyTorch eager outputs (the reference semantics) as pt_eager/*
        want = expected.get(
            f"pt_eager/{scenario}/{FIELD[head]}", expected[f"outputs/{scenario}/{FIELD[head]}"]
        )
        if scenario == "left_pad" and head != "sequence_classification":
            m = inputs["attention_mask"].astype(bool)
            out, want = out[m], want[m]
        np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4, err_msg=f"{name} in {fw}")
