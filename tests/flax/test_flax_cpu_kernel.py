"""generate() on a CPU runs each decode step of its jitted loop through the fused C step as an
XLA FFI call (gpt2_flax._cpu_kernels): exactly the tokens of the all-XLA loop for every decoding
mode, and the all-XLA loop wherever the kernel cannot run or is switched off."""

from __future__ import annotations

import numpy as np
import pytest
from flax_helpers import build

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import gpt2_flax as gf  # noqa: E402
from gpt2_core import cpu_kernels  # noqa: E402
from gpt2_core.streamers import CallbackStreamer  # noqa: E402
from gpt2_flax import _cpu_kernels as K  # noqa: E402
from gpt2_flax import generation  # noqa: E402

pytestmark = pytest.mark.skipif(K.load() is None, reason=f"Flax CPU kernel: {K.status()}")

PROMPT = np.array([[5, 9, 100, 3, 44, 7], [0, 0, 7, 7, 1, 200]])
MASK = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


@pytest.fixture(autouse=True)
def fp32_on_kernel(monkeypatch):
    """These tests check the kernel on fp32 models (the default; the variable could say 0)."""
    monkeypatch.delenv(K.FP32_KERNEL_ENV, raising=False)


@pytest.fixture(scope="module")
def model():
    return build("lm", seed=3)[2]


def _both(model, monkeypatch, *args, **kw):
    """(kernel tokens, all-XLA tokens); fails if the kernel path was not compiled in."""
    built = []
    real = K.decode_forward
    monkeypatch.setattr(K, "decode_forward", lambda *a: built.append(a) or real(*a))
    generation._program.clear_cache()  # trace again, so the spy sees the program being built
    fast = np.asarray(model.generate(*args, **kw))
    assert built, "the kernel path did not run"
    with cpu_kernels.disabled():
        ref = np.asarray(model.generate(*args, **kw))
    return fast, ref


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=9, eos_token_id=None),
        dict(max_new_tokens=9, eos_token_id=[7, 11], min_new_tokens=3, pad_token_id=2),
        dict(max_new_tokens=8, repetition_penalty=1.4, no_repeat_ngram_size=2, eos_token_id=None),
        dict(
            max_new_tokens=8,
            do_sample=True,
            top_k=20,
            top_p=0.9,
            temperature=0.7,
            seed=3,
            eos_token_id=None,
        ),
        dict(max_new_tokens=8, do_sample=True, num_return_sequences=2, seed=5, eos_token_id=None),
        dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, eos_token_id=None),
        dict(max_new_tokens=7, num_beams=2, eos_token_id=5, length_penalty=0.5),
    ],
)
def test_kernel_generation_equals_xla_loop(model, monkeypatch, kw):
    fast, ref = _both(model, monkeypatch, PROMPT, attention_mask=MASK, **kw)
    np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},  # the LM head is an nnx.Linear kernel stored (C, V)
        {"activation_function": "gelu", "scale_attn_by_inverse_layer_idx": True},
        {
            "activation_function": "quick_gelu",
            "scale_attn_weights": False,
            "n_inner": 50,
            "layer_norm_epsilon": 1e-3,
            "attn_implementation": "sdpa",
        },
    ],
)
def test_kernel_generation_honours_config(monkeypatch, overrides):
    m = build("lm", seed=4, **overrides)[2]
    for kw in (dict(), dict(num_beams=2)):
        fast, ref = _both(m, monkeypatch, PROMPT[:1], max_new_tokens=8, eos_token_id=None, **kw)
        np.testing.assert_array_equal(fast, ref)


def test_bf16_weights_decode_on_the_kernel(monkeypatch):
    cfg, sd, _ = build("lm", seed=3)
    # without native bf16 products the prompt goes through the kernel's prefill handler too
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: False)
    prefills = []
    real = K.prefill_forward
    monkeypatch.setattr(K, "prefill_forward", lambda *a: prefills.append(a[1:]) or real(*a))
    # bf16 weights, fp32 compute: XLA widens each weight as the kernel does, so same tokens
    m = gf.GPT2LMHeadModel.from_state_dict(cfg, sd, param_dtype=jnp.bfloat16)
    fast, ref = _both(
        m, monkeypatch, PROMPT, attention_mask=MASK, max_new_tokens=8, eos_token_id=None
    )
    np.testing.assert_array_equal(fast, ref)
    assert prefills and prefills[0][0] == 2  # (rows, cache length): the 2 prompts at once
    # bf16 compute too: the kernel keeps fp32 activations (as torch's), XLA rounds them
    m = gf.GPT2LMHeadModel.from_state_dict(cfg, sd, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert K.unsupported_reason(m, 2, 32) is None
    assert np.asarray(
        m.generate(PROMPT, attention_mask=MASK, max_new_tokens=4, eos_token_id=None)
    ).shape == (2, 10)


def test_kernel_generation_streams_each_token(model):
    pieces = []
    out = np.asarray(
        model.generate(
            PROMPT[:1],
            max_new_tokens=5,
            eos_token_id=None,
            streamer=CallbackStreamer(pieces.append),
        )
    )[0]
    assert [int(p[0]) for p in pieces] == out[6:].tolist()


def test_kernel_steps_aside(model):
    cfg, sd, _ = build("lm", seed=3)
    assert K.unsupported_reason(model, 1, 32) is None
    assert "rows" in K.unsupported_reason(model, cpu_kernels.MAX_ROWS + 1, 32)
    with cpu_kernels.disabled():
        assert "disabled" in K.unsupported_reason(model, 1, 32)
    f16 = gf.GPT2LMHeadModel.from_state_dict(cfg, sd, param_dtype=jnp.float16)
    assert "float16" in K.unsupported_reason(f16, 1, 32)
    bf16_compute = gf.GPT2LMHeadModel.from_state_dict(cfg, sd, dtype=jnp.bfloat16)
    assert "compute dtype" in K.unsupported_reason(bf16_compute, 1, 32)
    cross = build("lm", seed=3, add_cross_attention=True)[2]
    assert "cross" in K.unsupported_reason(cross, 1, 32)
    # many rows take the XLA loop and still work
    many = np.tile(PROMPT[:1], (cpu_kernels.MAX_ROWS + 1, 1))
    out = np.asarray(model.generate(many, max_new_tokens=2, eos_token_id=None))
    assert out.shape == (cpu_kernels.MAX_ROWS + 1, 8)


def test_no_compiler_falls_back_with_a_reason(model, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_ZOO_CACHE", str(tmp_path))  # nothing cached: must build
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    K._reset()
    try:
        assert K.load() is None
        assert "unavailable" in K.status()
        assert K.unsupported_reason(model, 1, 32) == K.status()
        out = np.asarray(model.generate(PROMPT[:1], max_new_tokens=3, eos_token_id=None))
        assert out.shape == (1, 9)
    finally:
        monkeypatch.undo()
        K._reset()
    assert K.load() is not None


def test_kernel_rejects_out_of_range_ids(model):
    """The handler checks what indexes memory (ids, positions, the slot) at run time."""
    from gpt2_flax.modeling import StaticCache

    cfg = model.config
    graphdef, state = generation.nnx.split(model)

    @jax.jit
    def step(state, tok):
        fwd = K.decode_forward(generation.nnx.merge(graphdef, state), 1, 16)
        cache = StaticCache.allocate(cfg, 1, 16)
        return fwd(tok, cache, jnp.zeros((1,), jnp.int32), jnp.ones((1, 16), jnp.int32))[0]

    assert step(state, jnp.array([3])).shape == (1, cfg.vocab_size)
    with pytest.raises(Exception, match="out of range"):
        step(state, jnp.array([cfg.vocab_size + 5])).block_until_ready()


def test_prefill_handler_checks_ids_and_prompt_length(model):
    """The prefill handler checks every prompt token and position at run time, and that the
    prompt fits the cache."""
    from gpt2_flax.modeling import StaticCache

    cfg = model.config
    graphdef, state = generation.nnx.split(model)

    def run(ids, slots=16):
        @jax.jit
        def prefill(state, ids):
            fwd = K.prefill_forward(generation.nnx.merge(graphdef, state), 1, slots)
            cache = StaticCache.allocate(cfg, 1, slots, jnp.float32)
            pos = jnp.arange(ids.shape[1])[None]
            return fwd(ids, cache, pos, jnp.ones((1, slots), jnp.int32))[0]

        return prefill(state, jnp.asarray(ids)).block_until_ready()

    assert run([[3, 4, 5]]).shape == (1, cfg.vocab_size)
    with pytest.raises(Exception, match="gpt2_prefill: token id 1000 or position 1 out of range"):
        run([[3, 1000, 5]])
    with pytest.raises(Exception, match="prompt of 5 tokens does not fit 4 cache slots"):
        run([[1, 2, 3, 4, 5]], slots=4)


def test_fp32_weights_take_the_kernel_by_default(model, monkeypatch):
    """The measured default: fp32 and bf16 weights decode on the kernel; the environment
    variable at 0 sends fp32 to XLA's loop. The reason computed from the split state is the
    one computed from the module."""
    assert K.unsupported_reason(model, 1, 32) is None
    assert generation.decode_engine(model) == "cpu kernel"
    monkeypatch.setenv(K.FP32_KERNEL_ENV, "0")
    assert "float32 weights" in K.unsupported_reason(model, 1, 32)
    state = generation.nnx.split(model)[1]
    assert K.unsupported_reason(model, 1, 32, state) == K.unsupported_reason(model, 1, 32)
    assert set(K._weights(model, state)) == set(K._weights(model))
    monkeypatch.delenv(K.FP32_KERNEL_ENV)
    cfg, sd, _ = build("lm", seed=3)
    bf16 = gf.GPT2LMHeadModel.from_state_dict(cfg, sd, param_dtype=jnp.bfloat16)
    assert K.unsupported_reason(bf16, 1, 32) is None
