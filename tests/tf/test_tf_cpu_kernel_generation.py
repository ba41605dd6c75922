"""generate() on a CPU in fp32 runs each token's forward through the fused CPU kernel
(gpt2_core.cpu_kernels): it must give exactly the tokens of the all-XLA loop, for every decoding
mode, and step aside where it cannot run (bf16, too many rows, cross-attention)."""

from __future__ import annotations

import numpy as np
import pytest
from tf_helpers import ids_like, make_model

from gpt2_core import cpu_kernels
from gpt2_core.streamers import CallbackStreamer
from gpt2_tf import _cpu_kernels

pytestmark = pytest.mark.skipif(
    cpu_kernels.load() is None, reason=f"CPU kernels: {cpu_kernels.status()}"
)


def _both(model, *args, **kw):
    fast = model.generate(*args, **kw).numpy()
    with cpu_kernels.disabled():
        ref = model.generate(*args, **kw).numpy()
    return fast, ref


def _host_specs(model):
    return [spec for spec in model.__dict__.get("_gen_fns", {}) if spec.host]


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=9, eos_token_id=None),  # plain greedy: chosen on the host
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
        dict(max_new_tokens=7, num_beams=3, num_return_sequences=2, eos_token_id=None),
        dict(max_new_tokens=7, num_beams=2, eos_token_id=5, length_penalty=0.5),
    ],
)
def test_kernel_generation_equals_xla_loop(rng, kw):
    model = make_model("lm")[0]
    batch = ids_like(rng, (2, 6))
    mask = np.ones_like(batch)
    batch[1, :2], mask[1, :2] = 0, 0  # left padding
    fast, ref = _both(model, batch, attention_mask=mask, **kw)
    np.testing.assert_array_equal(fast, ref)
    assert _host_specs(model), "the kernel path did not run"


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False},  # the LM head is a Dense kernel stored (C, V)
        {"activation_function": "gelu", "scale_attn_by_inverse_layer_idx": True},
        {"activation_function": "quick_gelu", "scale_attn_weights": False, "n_inner": 50},
    ],
)
def test_kernel_generation_honours_config(rng, overrides):
    model = make_model("lm", **overrides)[0]
    prompt = ids_like(rng, (1, 5))
    fast, ref = _both(model, prompt, max_new_tokens=8, eos_token_id=None)
    np.testing.assert_array_equal(fast, ref)
    fast, ref = _both(model, prompt, max_new_tokens=6, num_beams=2, eos_token_id=None)
    np.testing.assert_array_equal(fast, ref)


def test_kernel_generation_streams_each_token(rng):
    model = make_model("lm")[0]
    prompt = ids_like(rng, (1, 4))
    for kw in (dict(), dict(repetition_penalty=1.3)):  # host greedy, and XLA token choice
        pieces = []
        out = model.generate(
            prompt,
            max_new_tokens=5,
            eos_token_id=None,
            streamer=CallbackStreamer(pieces.append),
            **kw,
        ).numpy()[0]
        assert [int(p[0]) for p in pieces] == out[4:].tolist()


def test_kernel_path_does_not_retrace_within_a_bucket(rng):
    model = make_model("lm")[0]
    kw = dict(max_new_tokens=5, repetition_penalty=1.2, eos_token_id=None)
    model.generate(ids_like(rng, (1, 3)), **kw)
    traces = model.generation_trace_count
    model.generate(ids_like(rng, (1, 9)), **kw)
    assert model.generation_trace_count == traces


def test_kernel_steps_aside(rng):
    model = make_model("lm")[0]
    assert _cpu_kernels.unsupported_reason(model, 1, 32) is None
    assert "rows" in _cpu_kernels.unsupported_reason(model, cpu_kernels.MAX_ROWS + 1, 32)
    assert "n_positions" in _cpu_kernels.unsupported_reason(model, 1, 10**6)
    with cpu_kernels.disabled():
        assert "disabled" in _cpu_kernels.unsupported_reason(model, 1, 32)
    bf16 = make_model("lm", dtype="mixed_bfloat16")[0]
    assert "bfloat16" in _cpu_kernels.unsupported_reason(bf16, 1, 32)
    cross = make_model("lm", add_cross_attention=True)[0]
    assert "cross" in _cpu_kernels.unsupported_reason(cross, 1, 32)
    # many rows take the XLA loop and still work
    many = ids_like(rng, (cpu_kernels.MAX_ROWS + 1, 3))
    out = model.generate(many, max_new_tokens=2, eos_token_id=None).numpy()
    assert out.shape == (cpu_kernels.MAX_ROWS + 1, 5)


def test_bf16_weights_decode_on_the_kernel(rng, monkeypatch):
    """A "bfloat16"-policy model (bf16 variables) decodes on the kernel, which reads the bf16
    matrices as they are with fp32 activations and cache (mixed policies step aside, above).
    Without native bf16 products the prompt runs through the kernel's prefill too (XLA's bf16
    program is ~3x slower than fp32 there), so the whole generation computes the fp32 model over
    the bf16-rounded weights: the tokens equal that model's."""
    import ml_dtypes

    from gpt2_tf import GPT2LMHeadModel, load_canonical

    built = []
    init = cpu_kernels.DecodeStep.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self.wq)

    monkeypatch.setattr(cpu_kernels.DecodeStep, "__init__", spy)
    monkeypatch.setattr(cpu_kernels, "native_bf16", lambda: False)
    prefills = []
    prefill = cpu_kernels.DecodeStep.prefill
    monkeypatch.setattr(
        cpu_kernels.DecodeStep,
        "prefill",
        lambda self, *a: prefills.append(a[0].shape) or prefill(self, *a),
    )
    bf16, sd = make_model("lm", dtype="bfloat16")
    assert _cpu_kernels.unsupported_reason(bf16, 1, 32) is None
    rounded = {
        k: v.astype(ml_dtypes.bfloat16).astype(np.float32) if v.dtype.kind == "f" else v
        for k, v in sd.items()
    }
    fp32 = GPT2LMHeadModel(bf16.config)
    load_canonical(fp32, rounded)
    prompt = ids_like(rng, (1, 5))
    kw = dict(max_new_tokens=8, eos_token_id=None)
    got = bf16.generate(prompt, **kw).numpy()
    assert built == [1], "the bf16 model did not decode on the kernel (wq 1)"
    assert len(prefills) == 1 and prefills[0][0] == 1, prefills  # one (rows, bucketed T) call
    with cpu_kernels.disabled():
        want = fp32.generate(prompt, **kw).numpy()
    np.testing.assert_array_equal(got, want)
