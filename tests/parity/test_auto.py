"""Auto classes in every backend: any GPT-2 checkpoint format loads into the named head; other
architectures are refused by name; AutoTokenizer."""

import importlib

import numpy as np
import pytest

from conversion.generate import installed_frameworks
from gpt2_core import checkpoint
from gpt2_core.auto import AutoTokenizer, NotGPT2Error, check_gpt2
from gpt2_core.init import random_state_dict, tiny_config

FRAMEWORKS = installed_frameworks()
PREFIX = {"torch": "", "tf": "TF", "flax": "Flax"}
AUTO = {
    "AutoModel": "GPT2Model",
    "AutoModelForCausalLM": "GPT2LMHeadModel",
    "AutoModelForSequenceClassification": "GPT2ForSequenceClassification",
    "AutoModelForTokenClassification": "GPT2ForTokenClassification",
    "AutoModelForQuestionAnswering": "GPT2ForQuestionAnswering",
}
CFG = tiny_config(pad_token_id=0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    out = {}
    for fmt in ("safetensors", "pytorch", "tf", "flax"):
        checkpoint.save_pretrained(sd, CFG, root / fmt, "lm", formats=(fmt,))
        out[fmt] = root / fmt
    other = root / "llama"
    other.mkdir()
    (other / "config.json").write_text(
        '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'
    )
    out["llama"] = other
    odd = root / "odd_arch"
    odd.mkdir()
    (odd / "config.json").write_text('{"model_type": "gpt2", "architectures": ["BertModel"]}')
    out["odd_arch"] = odd
    return out


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_auto_classes_load_every_format_and_head(ckpts, fw):
    mod = importlib.import_module(f"gpt2_{fw}")
    ref = None
    for fmt in ("safetensors", "pytorch", "tf", "flax"):
        model = getattr(mod, PREFIX[fw] + "AutoModelForCausalLM").from_pretrained(str(ckpts[fmt]))
        assert type(model).__name__ == "GPT2LMHeadModel"
        logits = _logits(fw, model)  # the same weights from every format
        ref = logits if ref is None else ref
        np.testing.assert_allclose(logits, ref, atol=1e-5)
    for auto, cls in AUTO.items():
        model = getattr(mod, PREFIX[fw] + auto).from_pretrained(str(ckpts["safetensors"]))
        assert type(model).__name__ == cls
        assert getattr(mod, auto) is getattr(mod, PREFIX[fw] + auto)
    fresh = getattr(mod, PREFIX[fw] + "AutoModelForTokenClassification").from_config(CFG)
    assert type(fresh).__name__ == "GPT2ForTokenClassification"


def _logits(fw, model):
    ids = np.array([[1, 2, 3, 4]])
    if fw == "torch":
        import torch

        with torch.no_grad():
            return model(torch.as_tensor(ids)).logits.numpy()
    return np.asarray(model(ids).logits)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_other_architectures_are_refused(ckpts, fw):
    mod = importlib.import_module(f"gpt2_{fw}")
    auto = mod.AutoModelForCausalLM
    with pytest.raises(NotGPT2Error, match=r"model_type is 'llama', not 'gpt2'"):
        auto.from_pretrained(str(ckpts["llama"]))
    with pytest.raises(NotGPT2Error, match=r"architectures \['BertModel'\] are not GPT-2"):
        auto.from_pretrained(str(ckpts["odd_arch"]))
    with pytest.raises(NotGPT2Error, match="needs a gpt2_core.GPT2Config"):
        auto.from_config({"model_type": "gpt2"})
    with pytest.raises(TypeError, match="not instantiated"):
        auto()


def test_check_gpt2_and_auto_tokenizer(ckpts, tmp_path):
    check_gpt2(CFG)
    check_gpt2("gpt2")  # a preset: offline
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        check_gpt2(tmp_path)
    assert AutoTokenizer.from_pretrained("gpt2").encode("Hello world") == [15496, 995]
    assert not AutoTokenizer.from_pretrained("gpt2", use_fast=False).is_fast
    # a tiny checkpoint without tokenizer files and a non-GPT-2 vocabulary: a clear error
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        AutoTokenizer.from_pretrained(ckpts["safetensors"])
    with pytest.raises(NotGPT2Error):
        AutoTokenizer.from_pretrained(ckpts["llama"])
