"""The canonical schema: keys and shapes for every head, prefixes, buffers, tied weights."""

import numpy as np
import pytest

from gpt2_core import naming
from gpt2_core.init import missing_weights, random_state_dict, tiny_config

CFG = tiny_config(num_labels=3)
E, V, P, F = 36, 257, 32, 144


def test_heads_and_class_names():
    assert list(naming.HEADS.values()) == [
        "GPT2Model",
        "GPT2LMHeadModel",
        "GPT2DoubleHeadsModel",
        "GPT2ForSequenceClassification",
        "GPT2ForTokenClassification",
        "GPT2ForQuestionAnswering",
    ]
    assert naming.head_of("TFGPT2LMHeadModel") == "lm"
    assert naming.head_of("FlaxGPT2Model") == "base"
    with pytest.raises(ValueError, match="unknown GPT-2 head"):
        naming.head_of("GPT2Bogus")


def test_base_schema_shapes():
    s = naming.expected_shapes(CFG, "base")
    assert s["wte.weight"] == (V, E) and s["wpe.weight"] == (P, E)
    assert s["h.0.attn.c_attn.weight"] == (E, 3 * E)  # Conv1D: (in, out)
    assert s["h.0.attn.c_attn.bias"] == (3 * E,)
    assert s["h.1.attn.c_proj.weight"] == (E, E)
    assert s["h.1.mlp.c_fc.weight"] == (E, F) and s["h.1.mlp.c_proj.weight"] == (F, E)
    assert s["ln_f.weight"] == (E,)
    assert len(s) == 2 + 12 * CFG.n_layer + 2
    assert not any(k.startswith("transformer.") for k in s)


@pytest.mark.parametrize(
    "head, extra",
    [
        ("lm", {"lm_head.weight": (V, E)}),
        (
            "double_heads",
            {
                "lm_head.weight": (V, E),
                "multiple_choice_head.summary.weight": (1, E),
                "multiple_choice_head.summary.bias": (1,),
            },
        ),
        ("sequence_classification", {"score.weight": (3, E)}),
        ("token_classification", {"classifier.weight": (3, E), "classifier.bias": (3,)}),
        ("question_answering", {"qa_outputs.weight": (2, E), "qa_outputs.bias": (2,)}),
    ],
)
def test_head_schemas(head, extra):
    s = naming.expected_shapes(CFG, head)
    assert all(k.startswith("transformer.") for k in s if k not in extra)
    for k, shape in extra.items():
        assert s[k] == shape
    assert len(s) == len(naming.expected_shapes(CFG, "base")) + len(extra)


def test_summary_without_projection_to_labels():
    cfg = tiny_config(summary_proj_to_labels=False)
    assert naming.head_shapes(cfg, "double_heads")["multiple_choice_head.summary.weight"] == (E, E)
    assert "multiple_choice_head.summary.weight" not in naming.head_shapes(
        tiny_config(summary_use_proj=False), "double_heads"
    )


def test_cross_attention_keys():
    s = naming.expected_shapes(tiny_config(add_cross_attention=True), "base")
    assert s["h.0.crossattention.c_attn.weight"] == (E, 2 * E)
    assert s["h.0.crossattention.q_attn.weight"] == (E, E)
    assert s["h.0.ln_cross_attn.weight"] == (E,)


def test_tied_keys():
    assert naming.tied_keys(CFG, "lm") == {"lm_head.weight": "transformer.wte.weight"}
    assert naming.tied_keys(CFG, "double_heads")
    assert naming.tied_keys(CFG, "sequence_classification") == {}
    assert naming.tied_keys(tiny_config(tie_word_embeddings=False), "lm") == {}


def test_buffers_and_conv1d_detection():
    assert naming.is_buffer_key("h.3.attn.bias")
    assert naming.is_buffer_key("transformer.h.0.attn.masked_bias")
    assert naming.is_buffer_key("transformer.h.0.crossattention.bias")
    assert not naming.is_buffer_key("transformer.h.0.attn.c_attn.bias")
    assert naming.is_conv1d_weight("transformer.h.0.mlp.c_fc.weight")
    assert not naming.is_conv1d_weight("score.weight")


def test_normalize_accepts_either_prefix_and_drops_buffers():
    sd = random_state_dict(CFG, "base", seed=0, std=0.3)
    with_buffers = dict(sd)
    with_buffers["h.0.attn.bias"] = np.ones((1, 1, P, P), bool)
    with_buffers["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    out, rep = naming.normalize_state_dict(with_buffers, CFG, "lm")
    assert rep.ok, rep.summary()
    assert rep.ignored_buffers == ["h.0.attn.bias", "h.0.attn.masked_bias"]
    assert rep.tied == ["lm_head.weight"]
    assert out["lm_head.weight"] is out["transformer.wte.weight"]
    assert "legacy buffers" in rep.summary() and "tied" in rep.summary()
    assert "missing" not in rep.summary()
    # and the prefixed form into the base model
    pref = random_state_dict(CFG, "lm", seed=0, std=0.3)
    out2, rep2 = naming.normalize_state_dict(pref, CFG, "base")
    assert rep2.unexpected == ["lm_head.weight"]
    assert set(out2) == set(naming.expected_shapes(CFG, "base"))


def test_base_checkpoint_into_head_reports_new_head():
    sd = random_state_dict(CFG, "base", seed=0, std=0.3)
    _, rep = naming.normalize_state_dict(sd, CFG, "sequence_classification")
    assert rep.ok and rep.newly_initialized == ["score.weight"]
    _, rep = naming.normalize_state_dict(sd, CFG, "sequence_classification", allow_new_head=False)
    assert rep.missing == ["score.weight"]


def test_report_names_missing_unexpected_and_misshaped_keys():
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    del sd["transformer.h.1.ln_2.bias"]
    sd["transformer.h.0.attn.c_attn.weight"] = sd["transformer.h.0.attn.c_attn.weight"].T
    sd["transformer.h.9.mlp.c_fc.weight"] = np.zeros((E, F), np.float32)
    _, rep = naming.normalize_state_dict(sd, CFG, "lm")
    assert not rep.ok
    with pytest.raises(naming.CheckpointError) as ei:
        rep.raise_if_error()
    msg = str(ei.value)
    assert "missing keys" in msg and "transformer.h.1.ln_2.bias" in msg
    assert "unexpected keys" in msg and "transformer.h.9.mlp.c_fc.weight" in msg
    assert "transformer.h.0.attn.c_attn.weight (expected (36, 108), got (108, 36))" in msg


def test_untied_head_loaded_as_tied_is_refused():
    sd = random_state_dict(tiny_config(tie_word_embeddings=False), "lm", seed=0, std=0.3)
    with pytest.raises(naming.CheckpointError, match="tie_word_embeddings"):
        naming.normalize_state_dict(sd, CFG, "lm")


def test_count_parameters_matches_random_state_dict():
    for head in naming.HEADS:
        sd = random_state_dict(CFG, head, seed=0, std=0.3)
        unique = {id(v): v.size for v in sd.values()}
        assert sum(unique.values()) == naming.count_parameters(CFG, head)


def test_head_of_model_reads_the_class_name():
    class GPT2ForSequenceClassification:  # any backend's class (or a user's subclass of it)
        pass

    class Mine(GPT2ForSequenceClassification):
        pass

    assert naming.head_of_model(Mine()) == "sequence_classification"
    with pytest.raises(TypeError, match="not one of the GPT-2 classes"):
        naming.head_of_model(object())
    assert naming.is_transposed("score.weight") and not naming.is_transposed("score.bias")
    assert not naming.is_transposed("transformer.h.0.attn.c_attn.weight")


def test_missing_weights_follow_transformers_init_and_are_seeded_per_key():
    cfg = tiny_config(num_labels=3, initializer_range=0.05)
    keys = ["classifier.weight", "classifier.bias"]
    new = missing_weights(cfg, "token_classification", keys, seed=1)
    assert new["classifier.weight"].shape == (3, E) and new["classifier.weight"].dtype == np.float32
    assert np.all(new["classifier.bias"] == 0)
    big = missing_weights(
        tiny_config(n_embd=300, n_head=3), "base", ["h.0.mlp.c_fc.weight", "h.0.ln_1.weight"]
    )
    assert abs(big["h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    assert np.all(big["h.0.ln_1.weight"] == 1)
    # a key's values depend on the seed and its own name only, not on the other keys
    alone = missing_weights(cfg, "token_classification", ["classifier.weight"], seed=1)
    np.testing.assert_array_equal(alone["classifier.weight"], new["classifier.weight"])
    other = missing_weights(cfg, "token_classification", ["classifier.weight"], seed=2)
    assert not np.array_equal(other["classifier.weight"], new["classifier.weight"])
