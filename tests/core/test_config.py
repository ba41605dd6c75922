"""GPT2Config: HF defaults, aliases, validation, JSON round trips, presets, parameter counts."""

import json
from pathlib import Path

import pytest

from gpt2_core import GPT2Config
from gpt2_core.config import ACTIVATIONS

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hf4576" / "configs"


def test_hf_defaults():
    c = GPT2Config()
    assert (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head) == (
        50257,
        1024,
        768,
        12,
        12,
    )
    assert c.n_inner is None and c.inner_dim == 3072 and c.head_dim == 64
    assert c.activation_function == "gelu_new" and c.layer_norm_epsilon == 1e-5
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.1, 0.1, 0.1)
    assert c.summary_type == "cls_index" and c.summary_use_proj and c.summary_proj_to_labels
    assert c.summary_activation is None and c.summary_first_dropout == 0.1
    assert c.scale_attn_weights and c.use_cache and c.tie_word_embeddings
    assert not c.scale_attn_by_inverse_layer_idx and not c.reorder_and_upcast_attn
    assert not c.add_cross_attention
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (50256, 50256, None)
    assert c.num_labels == 2 and c.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert c.problem_type is None and c.classifier_dropout is None


def test_aliases_read_and_write():
    c = GPT2Config(
        hidden_size=48, num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=64
    )
    assert (c.n_embd, c.n_head, c.n_layer, c.n_positions) == (48, 4, 3, 64)
    assert (
        c.hidden_size,
        c.num_attention_heads,
        c.num_hidden_layers,
        c.max_position_embeddings,
    ) == (48, 4, 3, 64)
    c.hidden_size = 96
    assert c.n_embd == 96
    with pytest.raises(ValueError, match="hidden_size"):
        GPT2Config(hidden_size=48, n_embd=64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_embd": 0}, "n_embd must be a positive int"),
        ({"n_layer": -1}, "n_layer"),
        ({"vocab_size": 2.5}, "vocab_size"),
        ({"n_head": True}, "n_head"),
        ({"n_embd": 100, "n_head": 3}, "divisible by n_head"),
        ({"n_inner": 0}, "n_inner"),
        ({"activation_function": "gelu2"}, "unknown activation_function 'gelu2'"),
        ({"summary_activation": "nope"}, "summary_activation"),
        ({"resid_pdrop": 1.5}, "resid_pdrop must be a probability"),
        ({"attn_pdrop": -0.1}, "attn_pdrop"),
        ({"embd_pdrop": "0.1"}, "embd_pdrop"),
        ({"classifier_dropout": 2}, "classifier_dropout"),
        ({"summary_first_dropout": 1.01}, "summary_first_dropout"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon"),
        ({"initializer_range": -1}, "initializer_range"),
        ({"summary_type": "attn"}, "summary_type"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"use_cache": "yes"}, "use_cache must be a bool"),
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"eos_token_id": [1, "x"]}, "eos_token_id"),
        ({"num_labels": 0}, "num_labels"),
        ({"id2label": {0: "a", 2: "b"}}, "0..n-1"),
        ({"id2label": {0: "a", 1: "a"}}, "duplicate"),
        ({"id2label": {0: "a", 1: "b"}, "label2id": {"a": 1, "b": 0}}, "inverse"),
        ({"id2label": {0: "a", 1: "b"}, "num_labels": 3}, "disagrees"),
        ({"id2label": {"x": "a"}}, "keys must be ints"),
        ({"model_type": "bert"}, "model_type"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPT2Config(**kwargs)


def test_every_activation_accepted():
    for act in ACTIVATIONS:
        assert GPT2Config(activation_function=act).activation_function == act


def test_labels():
    c = GPT2Config(num_labels=3)
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert c.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    c2 = GPT2Config(id2label={"0": "neg", "1": "pos"})
    assert c2.num_labels == 2 and c2.label2id == {"neg": 0, "pos": 1}
    c3 = GPT2Config(label2id={"neg": 0, "pos": 1})
    assert c3.id2label == {0: "neg", 1: "pos"}
    c2.num_labels = 4
    assert len(c2.id2label) == 4


def test_unknown_keys_and_legacy_fields_round_trip(tmp_path):
    d = {
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 64,
        "n_head": 4,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "architectures": ["GPT2LMHeadModel"],
        "my_key": [1, 2],
        "transformers_version": "4.57.6",
    }
    c = GPT2Config.from_dict(d)
    assert c.n_ctx == 1024 and c.extra["my_key"] == [1, 2]
    out = c.to_dict()
    for k, v in d.items():
        assert out[k] == v, k
    c.save_pretrained(tmp_path)
    c2 = GPT2Config.from_pretrained(tmp_path)
    assert c2 == c and c2.to_dict() == out
    # a second save is byte-identical
    first = (tmp_path / "config.json").read_text()
    c2.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == first


def test_from_dict_overrides():
    c = GPT2Config.from_dict({"n_embd": 64, "n_head": 4}, hidden_size=32, num_labels=5)
    assert c.n_embd == 32 and c.num_labels == 5


def test_from_json_file_errors(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT2Config.from_json_file(p)
    p.write_text(json.dumps({"n_embd": 10, "n_head": 3}))
    with pytest.raises(ValueError, match=r"config.json: .*divisible"):
        GPT2Config.from_json_file(p)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT2Config.from_pretrained(tmp_path / "..")


@pytest.mark.parametrize(
    "name, layers, heads, embd, params",
    [
        ("gpt2", 12, 12, 768, 124_439_808),
        ("gpt2-medium", 24, 16, 1024, 354_823_168),
        ("gpt2-large", 36, 20, 1280, 774_030_080),
        ("gpt2-xl", 48, 25, 1600, 1_557_611_200),
        ("distilgpt2", 6, 12, 768, 81_912_576),
        ("openai-community/gpt2", 12, 12, 768, 124_439_808),
    ],
)
def test_presets_offline(name, layers, heads, embd, params):
    c = GPT2Config.from_pretrained(name)
    assert (c.n_layer, c.n_head, c.n_embd) == (layers, heads, embd)
    assert c.num_parameters() == params
    assert c.num_parameters("GPT2LMHeadModel") == params  # tied head adds nothing
    assert c.extra["n_ctx"] == 1024


def test_parameter_counts_per_head():
    c = GPT2Config.from_pretrained("gpt2", num_labels=3)
    base = 124_439_808
    assert c.num_parameters("sequence_classification") == base + 3 * 768
    assert c.num_parameters("token_classification") == base + 3 * 768 + 3
    assert c.num_parameters("question_answering") == base + 2 * 768 + 2
    assert c.num_parameters("double_heads") == base + 768 + 1
    untied = c.copy(tie_word_embeddings=False)
    assert untied.num_parameters("lm") == base + 50257 * 768
    assert c.num_parameters(exclude_embeddings=True) == base - (50257 + 1024) * 768


# ---------------------------------------------------------------- against transformers' files
def _hf_configs():
    names = sorted(p.parent.name for p in FIXTURES.glob("*/config.json"))
    assert names, f"no transformers config.json under {FIXTURES}: committed fixtures are missing"
    return names


@pytest.mark.parametrize("name", _hf_configs())
def test_transformers_config_round_trip(name, tmp_path):
    """A config.json written by transformers 4.57.6 loads, and what we write keeps every key."""
    src = FIXTURES / name / "config.json"
    original = json.loads(src.read_text())
    c = GPT2Config.from_json_file(src)
    out = c.to_dict()
    for k, v in original.items():
        if k in ("id2label",):
            assert {str(i): lab for i, lab in out[k].items()} == v
        else:
            assert out[k] == v, k
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    # every field transformers' to_dict reports that we model must agree
    for k, v in out.items():
        if k in expected and k not in ("transformers_version",):
            assert expected[k] == v, k
    c.save_pretrained(tmp_path)
    assert GPT2Config.from_pretrained(tmp_path) == c


def test_transformers_fixture_present():
    assert _hf_configs(), f"missing transformers-written configs under {FIXTURES}"


def test_hash_consistent_with_eq():
    a, b = GPT2Config(n_embd=48, n_head=4), GPT2Config(n_embd=48, n_head=4)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(a) != hash(GPT2Config(n_embd=48, n_head=6))
