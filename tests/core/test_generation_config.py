"""GenerationConfig: transformers' defaults, validation with named errors, resolution rules."""

import pytest

from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig


def test_defaults_match_transformers_4():
    g = GenerationConfig()
    assert (g.max_length, g.top_k, g.top_p, g.temperature, g.num_beams) == (20, 50, 1.0, 1.0, 1)
    assert not g.do_sample and g.repetition_penalty == 1.0 and g.no_repeat_ngram_size == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_length": 0}, "max_length"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2, "num_return_sequences": 3}, "must be <= num_beams"),
        ({"num_return_sequences": 2}, "greedy search returns one sequence"),
        ({"do_sample": True, "num_beams": 2}, "beam sampling"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"eos_token_id": []}, "eos_token_id"),
        ({"eos_token_id": [1, -1]}, "eos_token_id"),
        ({"pad_token_id": "0"}, "pad_token_id"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"do_sample": 1}, "do_sample must be a bool"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_update_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="unknown generation argument.*max_tokens"):
        GenerationConfig().update(max_tokens=3)
    g = GenerationConfig().update(max_new_tokens=3, eos_token_id=(1, 2))
    assert g.max_new_tokens == 3 and g.eos_token_ids == [1, 2]


def test_from_model_config_and_resolution():
    cfg = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=300, pad_token_id=7)
    g = GenerationConfig.resolve(None, cfg, max_new_tokens=4)
    assert g.eos_token_ids == [50256] and g.pad_token_id == 7 and g.max_new_tokens == 4
    assert GenerationConfig(eos_token_id=[3, 4]).effective_pad_token_id == 3


def test_unreachable_eos_is_dropped_with_one_warning(caplog, monkeypatch):
    # transformers keeps bos/eos 50256 in a model saved with vocab_size 300 and generates
    # the warning is once per process: forget what earlier tests in this worker triggered
    from gpt2_core import generation_config

    monkeypatch.setattr(generation_config, "_WARNED_UNREACHABLE", set())
    cfg = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=300, pad_token_id=7)
    g = GenerationConfig.resolve(None, cfg, max_new_tokens=4)
    with caplog.at_level("WARNING"):
        m = g.for_model(cfg.vocab_size)
        g.for_model(cfg.vocab_size)
    assert m.eos_token_ids == [] and m.pad_token_id == 7
    assert g.eos_token_ids == [50256]  # the caller's config is untouched
    assert (
        sum("eos_token_id 50256 is outside the vocabulary" in r.message for r in caplog.records)
        == 1
    )
    # a reachable EOS is kept; pad (used after it) must then fit
    m = GenerationConfig(eos_token_id=[50256, 5], pad_token_id=None).for_model(300)
    assert m.eos_token_ids == [5] and m.pad_token_id == 5
    with pytest.raises(ValueError, match="pad_token_id 400 is outside the vocabulary"):
        GenerationConfig(eos_token_id=5, pad_token_id=400).for_model(300)
    # bos matters only without a prompt
    GenerationConfig(bos_token_id=50256, eos_token_id=5).for_model(300)
    with pytest.raises(ValueError, match="bos_token_id 50256 is outside"):
        GenerationConfig(bos_token_id=50256, eos_token_id=5).for_model(300, has_prompt=False)


def test_lengths():
    g = GenerationConfig(max_length=10)
    assert g.max_new_tokens_for(4) == 6
    with pytest.raises(ValueError, match="max_length is 10"):
        g.max_new_tokens_for(10)
    with pytest.raises(ValueError, match="exceeds the model's n_positions"):
        GenerationConfig(max_new_tokens=10).max_new_tokens_for(30, n_positions=32)
    assert GenerationConfig(min_length=7).min_new_tokens_for(4) == 3
    assert GenerationConfig(min_new_tokens=2, min_length=50).min_new_tokens_for(4) == 2


def test_json_round_trip(tmp_path):
    g = GenerationConfig(num_beams=4, length_penalty=0.5, eos_token_id=[1, 2], seed=3)
    g.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path) == g
    (tmp_path / "generation_config.json").write_text(
        '{"max_length": 30, "transformers_version": "4.57.6"}'
    )
    assert GenerationConfig.from_pretrained(tmp_path).max_length == 30
