"""XLA generation: greedy vs an eager reference, bucketing without retracing, stopping rules,
sampling, streaming and errors. (Exact transformers sequences for greedy and
beam search are checked against the golden fixtures in tests/test_backends.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from tf_helpers import ids_like

from gpt2_core.streamers import CallbackStreamer


def _eager_greedy(model, ids, n):
    """Reference: full forward (no cache) + argmax, one token at a time."""
    ids = np.asarray(ids)[None]
    for _ in range(n):
        nxt = model(input_ids=ids, use_cache=False).logits.numpy()[:, -1].argmax(-1)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
    return ids[0]


def test_greedy_left_padded_batch_matches_eager(lm, rng):
    a, b = ids_like(rng, 5), ids_like(rng, 3)
    batch = np.stack([a, np.concatenate([[0, 0], b])])
    mask = (batch != 0).astype(np.int32)
    out = lm.generate(batch, attention_mask=mask, max_new_tokens=6, eos_token_id=None).numpy()
    assert out.shape == (2, 11)
    np.testing.assert_array_equal(out[0], _eager_greedy(lm, a, 6))
    np.testing.assert_array_equal(out[1, 2:], _eager_greedy(lm, b, 6))
    np.testing.assert_array_equal(out[1, :2], [0, 0])  # the caller's padding is kept


def test_same_bucket_does_not_retrace_and_stops_at_eos(lm, rng):
    # one EOS id in every call (the number of EOS ids is static); 0 is never generated here
    first = lm.generate(ids_like(rng, (1, 3)), max_new_tokens=6, eos_token_id=0)
    traces = lm.generation_trace_count
    prompt = ids_like(rng, (1, 7))
    out = lm.generate(prompt, max_new_tokens=6, eos_token_id=0).numpy()[0]
    assert lm.generation_trace_count == traces, "a prompt length in the same bucket retraced"
    assert first.shape == (1, 9) and out.shape == (13,)
    # EOS = the 2nd generated token: the row stops there (same compiled function)
    eos = int(out[8])
    stopped = lm.generate(prompt, max_new_tokens=6, eos_token_id=eos, pad_token_id=5).numpy()[0]
    first_eos = 7 + int(np.argmax(out[7:] == eos))
    np.testing.assert_array_equal(stopped, out[: first_eos + 1])
    # min_new_tokens suppresses EOS until 4 tokens exist
    longer = lm.generate(prompt, max_new_tokens=6, eos_token_id=eos, min_new_tokens=4).numpy()[0]
    assert len(longer) >= 11 and eos not in longer[7:11]
    assert lm.generation_trace_count == traces


def test_sampling_is_seeded_and_processors_apply(lm, rng):
    prompt = ids_like(rng, (1, 4))
    kw = dict(
        do_sample=True,
        max_new_tokens=10,
        top_p=0.9,
        temperature=0.8,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        eos_token_id=None,
    )
    a = lm.generate(prompt, seed=7, **kw).numpy()[0]
    b = lm.generate(prompt, seed=7, **kw).numpy()[0]
    c = lm.generate(prompt, seed=8, **kw).numpy()[0]
    d = lm.generate(prompt, seed=9, **kw).numpy()[0]
    np.testing.assert_array_equal(a, b)
    assert not (np.array_equal(a, c) and np.array_equal(a, d))
    for seq in (a, c, d):
        bigrams = list(zip(seq[:-1].tolist(), seq[1:].tolist()))
        assert len(bigrams) == len(set(bigrams)), "no_repeat_ngram_size=2 violated"


def test_streaming_gets_prompt_then_each_token(lm, rng):
    prompt = ids_like(rng, (1, 5))
    pieces = []
    streamer = CallbackStreamer(pieces.append)
    out = lm.generate(prompt, max_new_tokens=5, streamer=streamer, eos_token_id=None).numpy()[0]
    assert [p[0] for p in pieces] == out[5:].tolist() and all(len(p) == 1 for p in pieces)
    np.testing.assert_array_equal(out, _eager_greedy(lm, prompt[0], 5))


def test_generation_errors(lm, rng):
    with pytest.raises(ValueError, match="batch size 1"):
        lm.generate(ids_like(rng, (2, 3)), max_new_tokens=2, streamer=CallbackStreamer(print))
    with pytest.raises(ValueError, match="n_positions"):
        lm.generate(ids_like(rng, (1, 30)), max_new_tokens=5)
    with pytest.raises(ValueError, match="attention_mask shape"):
        lm.generate(ids_like(rng, (1, 3)), attention_mask=[[1, 1]], max_new_tokens=2)
    with pytest.raises(TypeError, match="integers"):
        lm.generate(np.ones((1, 3), np.float32), max_new_tokens=2)
    with pytest.raises(TypeError, match="unknown generation argument"):
        lm.generate(ids_like(rng, (1, 3)), max_new_tokenz=2)


def test_generate_inside_tf_function_as_transformers_recipe(lm, rng):
    """transformers' TF recipe, ``tf.function(model.generate, jit_compile=True)``: the same
    tokens as the eager call; rows that stop early are padded to T + max_new_tokens (as
    transformers' XLA generate); beam search and a mask work in the graph too."""
    import tensorflow as tf

    xla_generate = tf.function(lm.generate, jit_compile=True)
    a, b = ids_like(rng, 5), ids_like(rng, 3)
    batch = np.stack([a, np.concatenate([[0, 0], b])]).astype(np.int32)
    mask = (batch != 0).astype(np.int32)
    kw = dict(max_new_tokens=6, eos_token_id=None)
    eager = lm.generate(batch, attention_mask=mask, **kw).numpy()
    graph = xla_generate(tf.constant(batch), attention_mask=tf.constant(mask), **kw).numpy()
    np.testing.assert_array_equal(graph, eager)
    # EOS = the 2nd generated token of row 0: row 0 stops at its first occurrence (the 1st
    # generated token may be the same one: the prompts come from the session's shared rng)
    # and is padded after it; the shape stays
    eos = int(eager[0, 6])
    stop = 5 + int(np.argmax(eager[0, 5:] == eos))  # 5 or 6
    stopped = xla_generate(
        tf.constant(batch),
        attention_mask=tf.constant(mask),
        max_new_tokens=6,
        eos_token_id=eos,
        pad_token_id=3,
    ).numpy()
    assert stopped.shape == (2, 11)
    np.testing.assert_array_equal(stopped[0, : stop + 1], eager[0, : stop + 1])
    assert stopped[0, stop + 1 :].tolist() == [3] * (10 - stop)
    # beam search and num_return_sequences, and tf.function without XLA
    beam_kw = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, eos_token_id=None)
    want = lm.generate(a[None], **beam_kw).numpy()
    got = tf.function(lm.generate)(tf.constant(a[None].astype(np.int32)), **beam_kw).numpy()
    np.testing.assert_array_equal(got, want)


def test_generate_inside_tf_function_needs_static_shapes(lm, rng):
    import tensorflow as tf

    fn = tf.function(
        lambda x: lm.generate(x, max_new_tokens=2),
        input_signature=[tf.TensorSpec([None, None], tf.int32)],
    )
    with pytest.raises(ValueError, match="static"):
        fn(tf.constant(ids_like(rng, (1, 3)).astype(np.int32)))
    with pytest.raises(ValueError, match="streamer needs eager"):
        tf.function(lambda x: lm.generate(x, max_new_tokens=2, streamer=CallbackStreamer(print)))(
            tf.constant(ids_like(rng, (1, 3)).astype(np.int32))
        )
