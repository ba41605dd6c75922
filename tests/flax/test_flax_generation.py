"""Compiled generation: consistency with the forward pass, buckets, sampling, streaming.

Exact equality with transformers' greedy / beam (num_return_sequences, length penalty, early
stopping) / repetition-penalty + no-repeat-ngram + min_new_tokens / EOS-list sequences is in
tests/test_backends.py.
"""

import jax
import numpy as np
from flax_helpers import jrun

import gpt2_flax as gf
from gpt2_core.streamers import CallbackStreamer

PROMPT = np.array([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
MASK = (PROMPT != 0).astype(np.int32)


def test_greedy_tokens_are_argmax_of_the_full_forward(lm):
    _, _, model = lm
    out = np.asarray(
        model.generate(PROMPT, attention_mask=MASK, max_new_tokens=6, eos_token_id=None)
    )
    assert out.shape == (2, 11)
    mask = np.concatenate([MASK, np.ones((2, 6), np.int32)], 1)
    pos = np.where(mask, np.cumsum(mask, 1) - 1, 1)
    logits = np.asarray(jrun(model, input_ids=out, attention_mask=mask, position_ids=pos).logits)
    np.testing.assert_array_equal(out[:, 5:], logits[:, 4:-1].argmax(-1))


def test_two_prompt_lengths_in_one_bucket_compile_once(lm):
    _, _, model = lm
    model.generate(np.array([[5, 6, 7]]), max_new_tokens=4, eos_token_id=None)
    before = gf.trace_count()
    a = model.generate(np.array([[5, 6, 7, 8, 9, 10, 11]]), max_new_tokens=4, eos_token_id=None)
    b = model.generate(np.array([[1, 2]]), max_new_tokens=3, eos_token_id=None)
    assert gf.trace_count() == before  # same bucket (16), max_new_tokens is a traced value
    assert a.shape == (1, 11) and b.shape == (1, 5)
    assert gf.bucket(5) == gf.bucket(16) == 16 and gf.bucket(17) == 32


def test_sampling_is_seeded_and_top_k_1_is_greedy(lm):
    _, _, model = lm
    greedy = model.generate(PROMPT, attention_mask=MASK, max_new_tokens=5, eos_token_id=None)
    kw = dict(
        attention_mask=MASK,
        max_new_tokens=5,
        eos_token_id=None,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
    )
    s1 = model.generate(PROMPT, prng_key=jax.random.key(1), top_k=1, **kw)
    np.testing.assert_array_equal(s1, greedy)
    r1 = model.generate(PROMPT, prng_key=jax.random.key(3), top_k=0, **kw)
    r2 = model.generate(PROMPT, prng_key=jax.random.key(3), top_k=0, **kw)
    r3 = model.generate(
        PROMPT,
        prng_key=jax.random.key(4),
        top_k=0,
        temperature=3.0,
        **{k: v for k, v in kw.items() if k != "temperature"},
    )
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)


def test_eos_list_stops_and_pads_and_min_new_tokens(lm):
    _, _, model = lm
    free = np.asarray(
        model.generate(PROMPT, attention_mask=MASK, max_new_tokens=6, eos_token_id=None)
    )
    stop = int(free[1, 6])  # row 1's second new token becomes an EOS id
    out = np.asarray(
        model.generate(
            PROMPT, attention_mask=MASK, max_new_tokens=6, eos_token_id=[stop, 255], pad_token_id=0
        )
    )
    assert out[1, 6] == stop and (out[1, 7:] == 0).all()
    late = np.asarray(
        model.generate(
            PROMPT,
            attention_mask=MASK,
            max_new_tokens=6,
            eos_token_id=[stop, 255],
            pad_token_id=0,
            min_new_tokens=6,
        )
    )
    assert stop not in late[:, 5:] and 255 not in late[:, 5:]


def test_streamer_gets_prompt_then_each_token(lm):
    _, _, model = lm
    got = []
    streamer = CallbackStreamer(got.append)
    out = np.asarray(
        model.generate(PROMPT[1:], max_new_tokens=5, eos_token_id=None, streamer=streamer)
    )
    assert [t for piece in got for t in piece] == out[0, 5:].tolist()


def test_double_heads_model_generates_as_the_lm_head():
    """GPT2DoubleHeadsModel has generate (its LM head is the LM model's), as in torch and TF."""
    from flax_helpers import build

    cfg, sd, dh = build("double_heads", seed=1, pad_token_id=0)
    lm = gf.GPT2LMHeadModel.from_state_dict(
        cfg, {k: v for k, v in sd.items() if not k.startswith("multiple_choice_head")}
    )
    for kw in ({}, {"num_beams": 2}):
        a = np.asarray(lm.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, **kw))
        b = np.asarray(dh.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, **kw))
        np.testing.assert_array_equal(a, b)


def test_generate_inside_jax_jit_as_transformers_recipe(lm):
    """transformers' Flax recipe, ``jax.jit(model.generate)``, and ``nnx.jit`` with the model
    as an argument: the eager call's tokens; rows that stop early are padded to
    Tu + max_new_tokens (as transformers' Flax generate); beams and sampling run traced too."""
    import pytest
    from flax import nnx

    _, _, model = lm
    kw = dict(max_new_tokens=6, eos_token_id=None)
    eager = np.asarray(model.generate(PROMPT, attention_mask=MASK, **kw))
    jitted = jax.jit(lambda ids, mask: model.generate(ids, attention_mask=mask, **kw))
    np.testing.assert_array_equal(np.asarray(jitted(PROMPT, MASK)), eager)
    # the pad id (0) occurs and differs from EOS: the mask is inferred in the graph too
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda ids: model.generate(ids, **kw))(PROMPT)), eager
    )
    # EOS = row 1's 2nd generated token: row 1 stops there and is padded, the shape stays
    eos = int(eager[1, 6])
    stopped = np.asarray(
        nnx.jit(
            lambda m, ids: m.generate(
                ids, attention_mask=MASK, max_new_tokens=6, eos_token_id=eos, pad_token_id=3
            )
        )(model, PROMPT)
    )
    assert stopped.shape == (2, 11)
    np.testing.assert_array_equal(stopped[1, :7], eager[1, :7])
    assert stopped[1, 7:].tolist() == [3, 3, 3, 3]
    beam = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, eos_token_id=None)
    want = np.asarray(model.generate(PROMPT[1:], **beam))
    got = np.asarray(jax.jit(lambda ids: model.generate(ids, **beam))(PROMPT[1:]))
    np.testing.assert_array_equal(got, want)
    sample = dict(max_new_tokens=4, do_sample=True, top_k=5, seed=3, eos_token_id=None)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda ids: model.generate(ids, **sample))(PROMPT[1:])),
        np.asarray(model.generate(PROMPT[1:], **sample)),
    )
    with pytest.raises(ValueError, match="streamer needs eager"):
        jax.jit(
            lambda ids: model.generate(ids, max_new_tokens=2, streamer=CallbackStreamer(print))
        )(PROMPT[1:])
