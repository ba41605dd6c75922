"""generate(): greedy, sampling, beam search, processors, padding, streaming, errors."""

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from gpt2_core.generation_config import GenerationConfig
from gpt2_core.streamers import CallbackStreamer
from gpt2_torch.generation import generate


def _greedy_reference(model, ids, n, penalty=1.0):
    """Greedy decoding by full forward passes (no cache), optional repetition penalty."""
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq).logits[:, -1].float()
            if penalty != 1.0:
                s = logits.gather(1, seq)
                logits = logits.scatter(1, seq, torch.where(s < 0, s * penalty, s / penalty))
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq


def test_greedy_equals_full_forward_argmax(lm, ids):
    out = lm.generate(ids, max_new_tokens=8)
    assert out.shape == (3, 17)
    assert torch.equal(out, _greedy_reference(lm, ids, 8))


def test_repetition_penalty_matches_reference(lm, ids):
    out = lm.generate(ids[:1], max_new_tokens=8, repetition_penalty=1.8)
    assert torch.equal(out, _greedy_reference(lm, ids[:1], 8, penalty=1.8))


def test_left_padded_batch_equals_single_prompts(lm, ids):
    prompts = [ids[0, :7], ids[1, :4], ids[2, :6]]
    batch = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 7 - len(p) :] = p
        mask[i, 7 - len(p) :] = 1
    out = lm.generate(batch, attention_mask=mask, max_new_tokens=6)
    for i, p in enumerate(prompts):
        single = lm.generate(p[None], max_new_tokens=6)
        assert torch.equal(out[i, 7:], single[0, len(p) :]), i


def test_eos_stops_and_pads(lm, ids):
    free = lm.generate(ids, max_new_tokens=8)
    eos = int(free[0, 9 + 2])  # row 0 emits this at its third step
    out = lm.generate(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=5)
    row0 = out[0, 9:]
    stop = (row0 == eos).nonzero()[0].item()
    assert stop <= 2 and torch.all(row0[stop + 1 :] == 5)
    for i in range(3):  # rows are the free run up to their first EOS
        gen = out[i, 9:]
        hit = (free[i, 9 : 9 + gen.shape[0]] == eos).nonzero()
        end = hit[0].item() + 1 if len(hit) else gen.shape[0]
        assert torch.equal(gen[:end], free[i, 9 : 9 + end])
    # a list of EOS ids; stops as soon as every row has finished
    eos_list = [int(free[i, 9]) for i in range(3)]
    out = lm.generate(ids, max_new_tokens=8, eos_token_id=eos_list)
    assert out.shape == (3, 10)


def test_min_new_tokens_suppresses_eos(lm, ids):
    free = lm.generate(ids[:1], max_new_tokens=6)
    eos = int(free[0, 9])
    out = lm.generate(ids[:1], max_new_tokens=6, eos_token_id=eos, min_new_tokens=3)
    assert out.shape[1] >= 9 + 3 and eos not in out[0, 9:11].tolist()


def test_max_length_and_no_repeat_ngram(lm, ids):
    assert lm.generate(ids, max_length=12).shape == (3, 12)
    out = lm.generate(ids[:1], max_new_tokens=20, no_repeat_ngram_size=2)[0].tolist()
    grams = list(zip(out, out[1:]))
    assert len(grams) == len(set(grams))


def test_sampling_is_seeded_and_warpers_behave(lm, ids):
    a = lm.generate(ids, do_sample=True, max_new_tokens=10, seed=7)
    b = lm.generate(ids, do_sample=True, max_new_tokens=10, seed=7)
    c = lm.generate(ids, do_sample=True, max_new_tokens=10, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = lm.generate(ids, max_new_tokens=10)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4, "top_k": 0}):
        assert torch.equal(
            lm.generate(ids, do_sample=True, max_new_tokens=10, seed=1, **kw), greedy
        )
    many = lm.generate(ids[:1], do_sample=True, max_new_tokens=5, num_return_sequences=4, seed=0)
    assert many.shape == (4, 14) and torch.all(many[:, :9] == ids[:1])


def _sequence_scores(model, seqs, prompt_len, length_penalty):
    with torch.no_grad():
        logp = F.log_softmax(model(seqs).logits[:, :-1].float(), -1)
    tok = logp.gather(2, seqs[:, 1:, None])[..., 0][:, prompt_len - 1 :]
    return tok.sum(-1) / (seqs.shape[1] - prompt_len) ** length_penalty


def test_beam_search_returns_sorted_beams_better_than_greedy(lm, ids):
    out = lm.generate(
        ids[:1], num_beams=4, num_return_sequences=3, max_new_tokens=5, length_penalty=1.0
    )
    assert out.shape == (3, 14) and torch.all(out[:, :9] == ids[:1])
    scores = _sequence_scores(lm, out, 9, 1.0)
    assert torch.all(scores[:-1] >= scores[1:] - 1e-5)
    greedy = lm.generate(ids[:1], max_new_tokens=5)
    assert scores[0] >= _sequence_scores(lm, greedy, 9, 1.0)[0] - 1e-5
    batched = lm.generate(
        ids,
        num_beams=3,
        max_new_tokens=4,
        early_stopping=True,
        eos_token_id=[int(greedy[0, 10])],
        pad_token_id=0,
    )
    assert batched.shape[0] == 3


def test_streamer_sees_every_new_token(lm, ids):
    pieces = []
    out = lm.generate(ids[:1], max_new_tokens=6, streamer=CallbackStreamer(pieces.append))
    assert sum(pieces, []) == out[0, 9:].tolist()


def test_generation_config_and_double_heads(ids):
    model = make_model("double_heads")
    gen = GenerationConfig(max_new_tokens=4)
    assert model.generate(ids, generation_config=gen).shape == (3, 13)
    assert model.generate(ids, generation_config=gen, max_new_tokens=2).shape == (3, 11)


def test_generation_errors(lm, ids):
    with pytest.raises(TypeError, match="unknown generation argument"):
        lm.generate(ids, max_new_tokens=2, beams=3)
    with pytest.raises(ValueError, match="top_p"):
        lm.generate(ids, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="n_positions"):
        lm.generate(ids, max_new_tokens=30)
    with pytest.raises(ValueError, match="batch size 1|one prompt"):
        lm.generate(ids, max_new_tokens=2, streamer=CallbackStreamer(print))
    with pytest.raises(TypeError, match="integer"):
        lm.generate(ids.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match="contains 300"):
        lm.generate(torch.tensor([[1, 300]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask"):
        lm.generate(ids, attention_mask=torch.ones(3, 4), max_new_tokens=2)
    with pytest.raises(TypeError, match="LM head"):
        generate(make_model("base"), ids)
    assert torch.equal(lm.generate(ids, max_new_tokens=0), ids)


@pytest.mark.skipif(
    not os.environ.get("GPT2_TEST_COMPILE"),
    reason="torch.compile takes ~1-2 min on 2 CPU cores; set GPT2_TEST_COMPILE=1",
)
def test_compiled_step_matches_eager(lm, ids):
    eager = lm.generate(ids, max_new_tokens=5)
    assert torch.equal(lm.generate(ids, max_new_tokens=5, compile=True), eager)


def test_generated_ids_can_feed_training(ids):
    model = make_model("lm")
    out = model.generate(ids, max_new_tokens=3)
    model.train()
    model(out, labels=out).loss.backward()  # not an inference tensor
    assert model.transformer.wte.weight.grad is not None


@pytest.mark.parametrize("num_beams", [1, 2])
def test_cross_attention_generate_equals_full_forwards(num_beams):
    """The step runs GPT2Model.forward over the static cache, cross-attention included."""
    model = make_model("lm", add_cross_attention=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 257, (2, 4), generator=g)
    enc = torch.randn(2, 3, model.config.n_embd, generator=g)
    enc_mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    out = model.generate(
        ids,
        max_new_tokens=4,
        num_beams=num_beams,
        eos_token_id=None,
        encoder_hidden_states=enc,
        encoder_attention_mask=enc_mask,
    )
    if num_beams == 1:  # greedy: each token is the argmax of a full no-cache forward
        seq = ids
        with torch.no_grad():
            for _ in range(4):
                logits = model(
                    seq, encoder_hidden_states=enc, encoder_attention_mask=enc_mask
                ).logits[:, -1]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(out, seq)
    else:
        assert out.shape == (2, 8)
    with pytest.raises(ValueError, match="add_cross_attention"):
        make_model("lm").generate(ids, max_new_tokens=2, encoder_hidden_states=enc)
