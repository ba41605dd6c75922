"""The fp32 CPU decoding kernels (gpt2_torch/csrc/gemv.c): equal to torch ops, used only where
they may be, and optional (a missing compiler falls back to torch)."""

import contextlib

import pytest
import torch
from conftest import make_model

from gpt2_core import cpu_kernels as core
from gpt2_torch import _cpu_kernels as K
from gpt2_torch.generation import _Decoder
from gpt2_torch.modeling import StaticCache

pytestmark = pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")


@contextlib.contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("nt", [1, 2, 3])
@pytest.mark.parametrize("M", [1, 2, 5, 16])
@pytest.mark.parametrize("K_, N", [(36, 108), (37, 19), (5, 3), (144, 36), (300, 1000)])
def test_linear_kernels_equal_torch(nt, M, K_, N):
    g = torch.Generator().manual_seed(M * 1000 + K_ + N)
    x = torch.randn(M, K_, generator=g)
    w = torch.randn(K_, N, generator=g)
    b = torch.randn(N, generator=g)
    with threads(nt), torch.no_grad():
        assert _rel(K.linear_kn(x, w, b), torch.addmm(b, x, w)) < 2e-6
        assert _rel(K.linear_kn(x, w, None), x @ w) < 2e-6
        wt = w.t().contiguous()
        assert _rel(K.linear_nk(x, wt), x @ w) < 2e-6
        # leading dims are kept
        y = K.linear_kn(x.view(M, 1, K_), w, b)
        assert y.shape == (M, 1, N)


def test_linear_kernels_reject_mismatched_shapes():
    with torch.no_grad(), pytest.raises(ValueError, match="features"):
        K.linear_kn(torch.randn(1, 5), torch.randn(6, 3), None)
    with torch.no_grad(), pytest.raises(ValueError, match="bias"):
        K.linear_kn(torch.randn(1, 6), torch.randn(6, 3), torch.randn(4))
    with torch.no_grad(), pytest.raises(ValueError, match="features"):
        K.linear_nk(torch.randn(1, 5), torch.randn(3, 6))


def test_usable_only_for_few_rows_fp32_cpu_without_autograd():
    w = torch.randn(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert K.usable(x, w)
        assert not K.usable(torch.randn(K.MAX_ROWS + 1, 8), w)  # GEMM territory
        assert not K.usable(x.double(), w.double())
        assert not K.usable(x, w.t())  # not contiguous
        with K.disabled():
            assert not K.usable(x, w)
    assert not K.usable(x, w)  # autograd on


def test_modeling_has_no_kernel_branch():
    """The kernels sit behind generation's one seam: Conv1D is plain torch in every mode."""
    import inspect

    from gpt2_torch import modeling

    assert "_cpu_kernels" not in inspect.getsource(modeling)
    conv = make_model("lm").transformer.h[0].mlp.c_fc
    x = torch.randn(1, 1, conv.weight.shape[0])
    with torch.no_grad():
        assert torch.equal(conv(x), torch.addmm(conv.bias, x[0], conv.weight)[None])


def _decode_both(model, ids, mask, steps=4, nt=1):
    """Logits of ``steps`` greedy steps from the fused kernel and from the torch modules."""
    B, T0 = ids.shape
    outs = []
    with threads(nt), torch.inference_mode():
        for fused in (True, False):
            d = _Decoder(model, B, T0 + steps + 1, mask, compile=False)
            if not fused:
                d.fused = None
            else:
                assert d.fused is not None, K.DecodeStep.unsupported_reason(model, d.cache, B)
            logits = [d.prefill(ids)]
            tok = logits[-1].argmax(-1)
            for _ in range(steps):
                logits.append(d.step(tok))
                tok = logits[-1].argmax(-1)
            outs.append((torch.stack(logits), [k.clone() for k in d.cache.keys]))
    return outs


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation_function": "gelu"},
        {"activation_function": "relu", "scale_attn_by_inverse_layer_idx": True},
        {"activation_function": "quick_gelu", "scale_attn_weights": False},
        {
            "activation_function": "silu",
            "reorder_and_upcast_attn": True,
            "layer_norm_epsilon": 1e-3,
        },
        {"n_inner": 50, "activation_function": "tanh"},
        {"tie_word_embeddings": False},
    ],
)
def test_fused_step_equals_torch_modules(nt, overrides):
    model = make_model("lm", **overrides)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 257, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :6] = 0
    (fast, fast_k), (ref, ref_k) = _decode_both(model, ids, mask, nt=nt)
    # same greedy path, so the logits and the written cache are comparable step by step
    assert torch.equal(fast.argmax(-1), ref.argmax(-1))
    assert _rel(fast, ref) < 1e-5
    for a, b in zip(fast_k, ref_k):
        assert _rel(a, b) < 1e-5


def test_fused_step_not_used_where_unsupported():
    model = make_model("lm")
    cache = StaticCache.allocate(model.config, 1, 8)
    assert K.DecodeStep.unsupported_reason(model, cache, 1) is None
    assert "rows" in K.DecodeStep.unsupported_reason(model, cache, K.MAX_ROWS + 1)
    model.train()
    assert "training" in K.DecodeStep.unsupported_reason(model, cache, 1)
    model.eval()
    assert "cross" in K.DecodeStep.unsupported_reason(
        make_model("lm", add_cross_attention=True), cache, 1
    )
    assert K.DecodeStep.unsupported_reason(make_model("lm").to(torch.bfloat16), cache, 1) is None
    bf16_cache = StaticCache.allocate(model.config, 1, 8, torch.bfloat16)
    assert "cache not float32" in K.DecodeStep.unsupported_reason(model, bf16_cache, 1)
    assert "float32 or all bfloat16" in K.DecodeStep.unsupported_reason(
        make_model("lm").to(torch.float16), cache, 1
    )
    mixed = make_model("lm")
    mixed.transformer.h[0].mlp.c_fc.weight.data = mixed.transformer.h[0].mlp.c_fc.weight.data.to(
        torch.bfloat16
    )
    assert "float32 or all bfloat16" in K.DecodeStep.unsupported_reason(mixed, cache, 1)
    with K.disabled():
        assert "disabled" in K.DecodeStep.unsupported_reason(model, cache, 1)


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=10),
        dict(max_new_tokens=8, num_beams=3, num_return_sequences=2),
        dict(max_new_tokens=8, repetition_penalty=1.5, no_repeat_ngram_size=2),
    ],
)
def test_generate_same_tokens_with_and_without_kernels(kw):
    model = make_model("lm")
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 257, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with threads(2):
        fast = model.generate(ids, attention_mask=mask, **kw)
        with K.disabled():
            ref = model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(fast, ref)


def test_missing_compiler_falls_back_to_torch(monkeypatch, tmp_path):
    model = make_model("lm")
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    expected = model.generate(ids, max_new_tokens=6)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("GPT2_ZOO_CACHE", str(tmp_path / "cache"))
    core._reset()
    try:
        assert K.load() is None
        assert "unavailable" in K.status()
        with torch.no_grad():
            assert not K.usable(torch.randn(1, 4), torch.randn(4, 4))
        assert torch.equal(model.generate(ids, max_new_tokens=6), expected)
    finally:
        monkeypatch.undo()
        core._reset()
        assert K.load() is not None


def test_env_switch_disables(monkeypatch):
    monkeypatch.setenv("GPT2_ZOO_CPU_KERNELS", "0")
    core._reset()
    try:
        assert K.load() is None
        assert "disabled" in K.status()
    finally:
        monkeypatch.undo()
        core._reset()


def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2_ZOO_CACHE", str(tmp_path))
    core._reset()
    try:
        assert K.load() is not None
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"  # no temporary files left
        mtime = built[0].stat().st_mtime_ns
        core._reset()
        assert K.load() is not None
        assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
    finally:
        monkeypatch.undo()
        core._reset()


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False, "n_inner": 50}])
def test_bf16_model_decodes_on_the_kernel_equal_to_fp32_modules_over_its_weights(nt, overrides):
    """A bf16 model's steps run on the fused kernel (bf16 weights, fp32 cache and sums). From
    the same cache, its logits equal the fp32 torch modules over the same (widened) weights up
    to fp32 summation order: the kernel adds no rounding beyond the weights' own."""
    model = make_model("lm", **overrides).to(torch.bfloat16)
    wide = make_model("lm", **overrides)
    wide.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, 257, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    with threads(nt), torch.no_grad():
        fast = _Decoder(model, 2, 9, mask, compile=False)
        assert fast.fused is not None and fast.cache.keys[0].dtype == torch.float32
        with K.disabled():
            ref = _Decoder(wide, 2, 9, mask, compile=False)
        assert ref.fused is None
        tok = fast.prefill(ids).float().argmax(-1)
        ref.prefill(ids)
        for a, b in zip(
            [*fast.cache.keys, *fast.cache.values], [*ref.cache.keys, *ref.cache.values]
        ):
            b.copy_(a)  # the same state: only the steps are compared
        for _ in range(3):
            got = fast.step(tok)
            with K.disabled():
                want = ref.step(tok)
            assert got.dtype == torch.float32
            assert _rel(got, want) < 1e-5
            tok = want.argmax(-1)


def test_bf16_generate_runs_on_the_kernel():
    model = make_model("lm").to(torch.bfloat16)
    ids = torch.randint(1, 257, (1, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        d = _Decoder(model, 1, 8, torch.ones_like(ids), compile=False)
        assert d.fused is not None
        with K.disabled():
            d = _Decoder(model, 1, 8, torch.ones_like(ids), compile=False)
        assert d.fused is None and d.cache.keys[0].dtype == torch.bfloat16  # the modules' dtype
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)


def test_bf16_prompt_runs_on_the_kernel_prefill_without_native_bf16(monkeypatch):
    """Without native bf16 products the prompt of a bf16 model goes through the kernel's
    prefill (one call): its logits and cache equal the fp32 modules' over the widened weights."""
    monkeypatch.setattr(K.core, "native_bf16", lambda: False)
    model = make_model("lm").to(torch.bfloat16)
    wide = make_model("lm")
    wide.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ids = torch.randint(1, 257, (2, 6), generator=torch.Generator().manual_seed(9))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        fast = _Decoder(model, 2, 10, mask, compile=False)
        assert fast.fused_prompt
        with K.disabled():
            ref = _Decoder(wide, 2, 10, mask, compile=False)
            want = ref.prefill(ids)
        got = fast.prefill(ids)
        assert got.dtype == torch.float32 and _rel(got, want) < 1e-5
        fast.step(ids[:, -1])
        assert fast._head_w is None  # no transposed bf16 head copy (0.1 s) when unused
        for a, b in zip(fast.cache.keys, ref.cache.keys):
            assert _rel(a[1, :, :6], b[1, :, :6]) < 1e-5  # the unpadded row's keys
            assert _rel(a[0, :, 4:6], b[0, :, 4:6]) < 1e-5
    # with native bf16 only short prompts (batch x length <= 32 rows) stay on the kernel
    monkeypatch.setattr(K.core, "native_bf16", lambda: True)
    with torch.no_grad():
        assert _Decoder(model, 2, 10, mask, compile=False).fused_prompt
        long_mask = torch.ones(2, 17, dtype=torch.long)
        assert not _Decoder(model, 2, 20, long_mask, compile=False).fused_prompt
