"""gpt2_core.generation: the shared generate rules and the numpy reference of one step."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from gpt2_core import generation as G
from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig


# ----------------------------------------------------------------------------- prepare_inputs
def test_prepare_inputs_shapes_and_bos():
    ids, mask = G.prepare_inputs([3, 4], None, GenerationConfig(), 10)
    assert ids.tolist() == [[3, 4]] and mask.tolist() == [[1, 1]] and ids.dtype == np.int64
    ids, mask = G.prepare_inputs(None, None, GenerationConfig(bos_token_id=7), 10)
    assert ids.tolist() == [[7]] and mask.tolist() == [[1]]
    with pytest.raises(ValueError, match="bos_token_id"):
        G.prepare_inputs(None, None, GenerationConfig(), 10)


@pytest.mark.parametrize(
    "bad, err, match",
    [
        ([[1.0, 2.0]], TypeError, "integer"),
        ([[True, False]], TypeError, "integer"),
        ([[1, 10]], ValueError, "contains 10, outside the vocabulary"),
        ([[-1, 2]], ValueError, "contains -1"),
        (np.zeros((1, 0), np.int64), ValueError, "at least one token"),
        (np.zeros((1, 2, 3), np.int64), ValueError, r"\(batch, seq_len\)"),
    ],
)
def test_prepare_inputs_refuses_bad_ids(bad, err, match):
    with pytest.raises(err, match=match):
        G.prepare_inputs(bad, None, GenerationConfig(), 10)


def test_prepare_inputs_refuses_bad_mask():
    with pytest.raises(ValueError, match="shape"):
        G.prepare_inputs([[1, 2]], [[1, 1, 1]], GenerationConfig(), 10)
    with pytest.raises(ValueError, match="only 0 and 1"):
        G.prepare_inputs([[1, 2]], [[2, 1]], GenerationConfig(), 10)
    _, mask = G.prepare_inputs([[1, 2]], [[False, True]], GenerationConfig(), 10)
    assert mask.tolist() == [[0, 1]] and mask.dtype == np.int64
    assert G.prepare_inputs([1, 2], [0.0, 1.0], GenerationConfig(), 10)[1].tolist() == [[0, 1]]


@pytest.mark.parametrize(
    "gen, expected",
    [
        # an explicit pad, present and not an EOS: inferred
        (GenerationConfig(pad_token_id=0, eos_token_id=9), [[0, 1, 1]]),
        # pad == EOS: not inferred (transformers)
        (GenerationConfig(pad_token_id=9, eos_token_id=9), [[1, 1, 1]]),
        # no pad and no EOS: token 0 is a token, not padding (TF used to treat it as padding)
        (GenerationConfig(), [[1, 1, 1]]),
        # implicit pad = first EOS: never inferred
        (GenerationConfig(eos_token_id=0), [[1, 1, 1]]),
    ],
)
def test_mask_inference(gen, expected):
    assert G.prepare_inputs([[0, 4, 5]], None, gen, 10)[1].tolist() == expected


def test_right_padding_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2_core.generation"):
        G.prepare_inputs([[4, 5]], [[1, 0]], GenerationConfig(), 10)
    assert "right-padding" in caplog.text


# ----------------------------------------------------------------------------- small rules
def test_prompt_position_ids():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert G.prompt_position_ids(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize(
    "gen, filler",
    [
        (GenerationConfig(), -1),
        (GenerationConfig(eos_token_id=[5, 6]), 5),
        (GenerationConfig(eos_token_id=5, pad_token_id=3), 3),
        (GenerationConfig(eos_token_id=5, pad_token_id=0), 5),  # `pad or eos[0]`
    ],
)
def test_beam_filler(gen, filler):
    assert G.beam_filler(gen) == filler


def test_attention_scale():
    cfg = GPT2Config(n_embd=36, n_head=3, n_layer=2)
    assert G.attention_scale(cfg, 1) == pytest.approx(1 / np.sqrt(12))
    cfg = GPT2Config(
        n_embd=36,
        n_head=3,
        n_layer=2,
        scale_attn_by_inverse_layer_idx=True,
        scale_attn_weights=False,
    )
    assert G.attention_scale(cfg, 1) == 0.5


def test_problem_type():
    cfg = SimpleNamespace(problem_type=None, num_labels=1)
    assert G.problem_type(cfg, True) == "regression"
    cfg.num_labels = 3
    assert G.problem_type(cfg, True) == "single_label_classification"
    assert G.problem_type(cfg, False) == "multi_label_classification"
    cfg.problem_type = "regression"
    assert G.problem_type(cfg, True) == "regression"


def test_sampling_seed_policy():
    assert G.sampling_seed(3) == 3
    assert len({G.sampling_seed(None) for _ in range(4)}) > 1


# ----------------------------------------------------------------------------- processors
def test_process_logits_by_hand():
    scores = np.array([[2.0, -2.0, 1.0, 0.5, 3.0]], np.float32)
    ids = np.array([[0, 1, 2, 0, 1]])
    out = G.process_logits(ids, scores, GenerationConfig(repetition_penalty=2.0), 0, 0)
    assert out.tolist() == [[1.0, -4.0, 0.5, 0.5, 3.0]]
    # bigrams: the row ends with 1 and (1, 2) occurred, so 2 is banned
    out = G.process_logits(ids, scores, GenerationConfig(no_repeat_ngram_size=2), 0, 0)
    assert np.isneginf(out[0, 2]) and np.isfinite(np.delete(out[0], 2)).all()
    gen = GenerationConfig(eos_token_id=[4, 3])
    assert np.isneginf(G.process_logits(ids, scores, gen, 1, 2)[0, [3, 4]]).all()
    assert G.process_logits(ids, scores, gen, 2, 2).tolist() == scores.tolist()


def test_warp_logits_by_hand():
    scores = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
    out = G.warp_logits(scores, GenerationConfig(do_sample=True, top_k=2))
    assert np.isneginf(out[0, :2]).all() and np.isfinite(out[0, 2:]).all()
    out = G.warp_logits(scores, GenerationConfig(do_sample=True, top_k=0, top_p=0.65))
    assert np.isneginf(out[0, :2]).all() and np.isfinite(out[0, 2:]).all()
    out = G.warp_logits(scores, GenerationConfig(do_sample=True, top_k=0, temperature=2.0))
    np.testing.assert_allclose(out, scores / 2, rtol=1e-6)
    out = G.warp_logits(scores, GenerationConfig(do_sample=True, top_k=0, top_p=0.01))
    assert np.isfinite(out[0]).sum() == 1  # min_tokens_to_keep


# ----------------------------------------------------------------------------- beam search
def _toy_beam_search(table, gen, prompt, max_length):
    """Beam search over a 'model' whose next-token log-probs depend on the last token only."""
    K = gen.num_beams
    flat = np.repeat(np.asarray(prompt), K, axis=0)
    T0 = flat.shape[1]
    state = G.init_beam_state(flat, K, max_length, G.beam_filler(gen))
    cur = T0
    while True:
        last = state["running_sequences"][:, :, cur - 1].reshape(-1)
        lp = G.process_logits(
            state["running_sequences"].reshape(-1, max_length)[:, :cur],
            G.log_softmax(table[last]),
            gen,
            cur - T0,
            0,
        )
        state = G.beam_step(state, lp, cur, T0, max_length, gen)
        cur += 1
        if G.beam_search_finished(state, gen):
            return G.finalize_beams(state, gen.num_return_sequences, T0)


def test_beam_step_finds_a_better_path_than_greedy():
    # from 0: greedy takes 1 (p .6) then anything (p <= .34); 2 (p .4) then 3 (p .97) wins
    p = np.full((5, 5), 0.01, np.float32)
    p[0] = [0.0, 0.6, 0.4, 0.0, 0.0]
    p[1] = [0.33, 0.01, 0.32, 0.0, 0.34]
    p[2] = [0.01, 0.01, 0.01, 0.97, 0.0]
    table = np.log(p + 1e-12)
    gen = GenerationConfig(num_beams=2, num_return_sequences=2, length_penalty=1.0)
    seqs, scores = _toy_beam_search(table, gen, [[0]], 3)
    assert seqs[0].tolist() == [0, 2, 3]
    assert scores[0] == pytest.approx(np.log(0.4 * 0.97) / 2, rel=1e-4)
    assert seqs[1].tolist() == [0, 1, 4]


def test_beam_step_eos_finishes_early_and_filler_follows():
    p = np.full((4, 4), 1e-6, np.float32)
    p[0] = [0.0, 0.5, 0.5, 0.0]
    p[1, 3] = 1.0  # 1 -> EOS
    p[2, 2] = 1.0  # 2 -> 2 -> 2 ...
    table = np.log(p + 1e-12)
    gen = GenerationConfig(
        num_beams=2, num_return_sequences=2, eos_token_id=3, pad_token_id=0, early_stopping=True
    )
    seqs, scores = _toy_beam_search(table, gen, [[0]], 6)
    # the EOS hypothesis (length 2) beats the running one once early stopping has 2 finished
    assert [0, 1, 3] in [s[:3].tolist() for s in seqs]
    row = [s.tolist() for s in seqs if s[1] == 1][0]
    assert row[3:] == [3] * (len(row) - 3)  # filler: `pad or eos[0]` with pad 0 -> 3
    state = G.init_beam_state(np.zeros((2, 1), np.int64), 2, 4, G.beam_filler(gen))
    assert state["running_beam_scores"].tolist() == [[0.0, G.BEAM_NEG]]
