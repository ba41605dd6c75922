"""Each backend's process_logits / warp_logits / beam_step equals the numpy reference in
gpt2_core.generation, on the same inputs (one step, several settings)."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_core import generation as G
from gpt2_core.generation_config import GenerationConfig

R, T, V, K = 4, 7, 11, 2  # rows, tokens so far, vocab, beams (B = R // K prompts)
GENS = [
    GenerationConfig(repetition_penalty=1.7, eos_token_id=[3, 5]),
    GenerationConfig(no_repeat_ngram_size=2, eos_token_id=4),
    GenerationConfig(no_repeat_ngram_size=3, repetition_penalty=0.6),
]
WARPS = [
    GenerationConfig(do_sample=True, temperature=0.7, top_k=4),
    GenerationConfig(do_sample=True, top_k=0, top_p=0.6),
    GenerationConfig(do_sample=True, temperature=1.3, top_k=6, top_p=0.8),
]
BEAMS = [
    GenerationConfig(num_beams=K, eos_token_id=3, length_penalty=0.8),
    GenerationConfig(num_beams=K, eos_token_id=[3, 7], early_stopping=True),
    GenerationConfig(num_beams=K, early_stopping="never", length_penalty=1.5),
]


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, (R, T))  # small ids: n-grams repeat
    scores = rng.normal(0, 2, (R, V)).astype(np.float32)
    return ids, scores


def _beam_state(gen, seed=0):
    """A mid-search state: two steps of the reference from random log-probs."""
    rng = np.random.default_rng(seed)
    T0, L = 3, 9
    state = G.init_beam_state(rng.integers(0, V, (R, T0)), K, L, G.beam_filler(gen))
    for cur in (T0, T0 + 1):
        state = G.beam_step(state, G.log_softmax(rng.normal(0, 2, (R, V))), cur, T0, L, gen)
    return state, G.log_softmax(rng.normal(0, 2, (R, V))), T0 + 2, T0, L


def _same_finite(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
    np.testing.assert_allclose(
        np.where(np.isfinite(a), a, 0), np.where(np.isfinite(b), b, 0), rtol=1e-5, atol=1e-5
    )


def _check_beam(ref, out):
    """Equal states; in the finished set only the real hypotheses (score above -1e9/2): the
    order of the placeholder entries (all -1e9) is up to each framework's top-k on ties."""
    real = ref["beam_scores"] > G.BEAM_NEG / 2
    for k in ref:
        got, want = np.asarray(out[k]), ref[k]
        if k in ("sequences", "beam_scores", "beam_indices", "is_sent_finished"):
            got, want = got[real], want[real]
        if want.dtype == np.float32:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3, err_msg=k)
        else:
            np.testing.assert_array_equal(got, want, err_msg=k)


# ----------------------------------------------------------------------------- torch
@pytest.mark.parametrize("gen", GENS)
def test_torch_process_logits(gen):
    torch = pytest.importorskip("torch")
    from gpt2_torch import generation as TG

    ids, scores = _inputs()
    for new in (0, 2):
        out = TG.process_logits(torch.as_tensor(ids), torch.as_tensor(scores), gen, new, 1)
        _same_finite(out.numpy(), G.process_logits(ids, scores, gen, new, 1))


@pytest.mark.parametrize("gen", WARPS)
def test_torch_warp_logits(gen):
    torch = pytest.importorskip("torch")
    from gpt2_torch import generation as TG

    _, scores = _inputs(1)
    _same_finite(TG.warp_logits(torch.as_tensor(scores), gen).numpy(), G.warp_logits(scores, gen))


@pytest.mark.parametrize("gen", BEAMS)
def test_torch_beam_step(gen):
    torch = pytest.importorskip("torch")
    from gpt2_torch import generation as TG

    state, log_probs, cur, T0, L = _beam_state(gen)
    ref = G.beam_step(state, log_probs, cur, T0, L, gen)
    t_state = {k: torch.as_tensor(v) for k, v in state.items()}
    out = TG.beam_step(t_state, torch.as_tensor(log_probs), cur, T0, L, gen)
    _check_beam(ref, {k: v.numpy() for k, v in out.items()})
    assert TG.beam_search_finished(out, gen) == G.beam_search_finished(ref, gen)


# ----------------------------------------------------------------------------- flax
def _flax_opts(gen, n_eos):
    from gpt2_flax.generation import _Options

    return _Options(
        mode="beam" if gen.num_beams > 1 else "sample",
        cache_len=T,
        vocab_size=V,
        n_eos=n_eos,
        use_temperature=gen.temperature != 1.0,
        top_k=gen.top_k,
        use_top_p=gen.top_p < 1.0,
        use_repetition_penalty=gen.repetition_penalty != 1.0,
        no_repeat_ngram_size=gen.no_repeat_ngram_size,
        num_beams=gen.num_beams,
        early_stopping=gen.early_stopping,
        positive_length_penalty=gen.length_penalty > 0,
    )


@pytest.mark.parametrize("gen", GENS)
def test_flax_process_logits(gen):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from gpt2_flax import generation as FG

    ids, scores = _inputs()
    eos = tuple(gen.eos_token_ids)
    opts, params = _flax_opts(gen, len(eos)), FG._params(gen, eos, 0)
    valid = jnp.ones((R, T), bool)
    for new in (0, 2):
        out = FG.process_logits(
            jnp.asarray(scores),
            jnp.asarray(ids, jnp.int32),
            valid,
            jnp.int32(T),
            jnp.int32(new),
            jnp.int32(1),
            opts,
            params,
        )
        _same_finite(out, G.process_logits(ids, scores, gen, new, 1))


@pytest.mark.parametrize("gen", WARPS)
def test_flax_warp_logits(gen):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from gpt2_flax import generation as FG

    _, scores = _inputs(1)
    out = FG.warp_logits(jnp.asarray(scores), _flax_opts(gen, 0), FG._params(gen, (), 0))
    _same_finite(out, G.warp_logits(scores, gen))


@pytest.mark.parametrize("gen", BEAMS)
def test_flax_beam_step(gen):
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from gpt2_flax import generation as FG

    state, log_probs, cur, T0, L = _beam_state(gen)
    ref = G.beam_step(state, log_probs, cur, T0, L, gen)
    eos = tuple(gen.eos_token_ids)
    j_state = {
        k: jnp.asarray(v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in state.items()
    }
    out = FG.beam_step(
        j_state,
        jnp.asarray(log_probs),
        jnp.int32(cur - T0),
        T0,
        jnp.int32(L - T0),
        _flax_opts(gen, len(eos)),
        FG._params(gen, eos, 0),
    )
    _check_beam(ref, out)


# ----------------------------------------------------------------------------- tf
def _tf_model_and_sc(gen, n_eos, beam):
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from gpt2_core.init import tiny_config
    from gpt2_tf import GPT2LMHeadModel
    from gpt2_tf.generation import _Spec

    model = GPT2LMHeadModel(tiny_config(vocab_size=V))
    sc = {
        "temperature": tf.constant(gen.temperature, tf.float32),
        "top_p": tf.constant(gen.top_p, tf.float32),
        "repetition_penalty": tf.constant(gen.repetition_penalty, tf.float32),
        "length_penalty": tf.constant(gen.length_penalty, tf.float32),
        "eos": tf.constant(np.asarray(gen.eos_token_ids, np.int32).reshape(-1)),
        "min_new": tf.constant(1),
        "start": tf.constant(0),
    }
    return model, sc, _Spec


@pytest.mark.parametrize("gen", GENS)
def test_tf_process_logits(gen):
    model, sc, _Spec = _tf_model_and_sc(gen, len(gen.eos_token_ids), False)
    import tensorflow as tf

    ids, scores = _inputs()
    T0 = 3  # tokens after T0 are "generated"; processors see them all
    spec = _Spec(
        batch=R,
        expand=1,
        prompt_len=T0,
        slots=T,
        mode="greedy",
        top_k=0,
        top_p=False,
        repetition=gen.repetition_penalty != 1.0,
        ngram=gen.no_repeat_ngram_size,
        n_eos=len(gen.eos_token_ids),
        early_stopping=False,
    )
    presence = model._presence(tf.constant(ids, tf.int32), 0, T)
    for new in (0, 2):
        # the processors see slots [0, T0 + step): put the step at the end of the ids
        step = T - T0
        sc["min_new"] = tf.constant(step + 1 if new == 0 else 0)
        out = model.process_logits(
            spec, sc, tf.constant(scores), tf.constant(ids, tf.int32), tf.constant(step), presence
        )
        _same_finite(out.numpy(), G.process_logits(ids, scores, gen, new, 1))


@pytest.mark.parametrize("gen", WARPS)
def test_tf_warp_logits(gen):
    model, sc, _Spec = _tf_model_and_sc(gen, 0, False)
    import tensorflow as tf

    _, scores = _inputs(1)
    spec = _Spec(
        batch=R,
        expand=1,
        prompt_len=1,
        slots=T,
        mode="sample",
        top_k=min(gen.top_k, V),
        top_p=gen.top_p < 1.0,
        repetition=False,
        ngram=0,
        n_eos=0,
        early_stopping=False,
    )
    _same_finite(
        model.warp_logits(spec, sc, tf.constant(scores)).numpy(), G.warp_logits(scores, gen)
    )


@pytest.mark.parametrize("gen", BEAMS)
def test_tf_beam_step(gen):
    model, sc, _Spec = _tf_model_and_sc(gen, len(gen.eos_token_ids), True)
    import tensorflow as tf

    state, log_probs, cur, T0, L = _beam_state(gen)
    ref = G.beam_step(state, log_probs, cur, T0, L, gen)
    spec = _Spec(
        batch=R // K,
        expand=K,
        prompt_len=T0,
        slots=L,
        mode="beam",
        top_k=0,
        top_p=False,
        repetition=False,
        ngram=0,
        n_eos=len(gen.eos_token_ids),
        early_stopping=gen.early_stopping,
    )
    sc["max_new"] = tf.constant(L - T0)
    t_state = {
        k: tf.constant(v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in state.items()
    }
    t_state["step"] = tf.constant(cur - T0)
    out = model.beam_step(spec, sc, t_state, tf.constant(log_probs))
    _check_beam(ref, {k: v.numpy() for k, v in out.items()})
