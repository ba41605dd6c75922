"""gpt2_core.cpu_kernels with numpy only: the fused decoding step against the float64 numpy
reference (gpt2_core.reference), the GEMVs against numpy, input checks, and the loader's
process-level behaviour (no framework import, OpenMP spin default)."""

import subprocess
import sys

import numpy as np
import pytest

from gpt2_core import cpu_kernels as K
from gpt2_core import reference
from gpt2_core.init import random_state_dict, tiny_config

pytestmark = pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")


def _canonical(cfg, seed=0):
    sd = random_state_dict(cfg, "lm", seed=seed, std=0.3)
    sd = {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    return sd


def _padded_batch(cfg, B, T, L, pads, seed):
    """Left-padded prompts (row b has pads[b] pads): ids, mask, position ids, the kernel's
    additive slot bias (B, L), and zeroed key / value caches (B, H, L, D) per layer."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    for b, n in enumerate(pads):
        mask[b, :n] = 0
    positions = np.where(mask == 1, np.cumsum(mask, 1) - 1, 1)
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    keys = [np.zeros((B, H, L, D), np.float32) for _ in range(cfg.n_layer)]
    values = [np.zeros((B, H, L, D), np.float32) for _ in range(cfg.n_layer)]
    bias = np.where(
        np.pad(mask, [(0, 0), (0, L - T)], constant_values=1) == 1,
        0.0,
        np.finfo(np.float32).min / 2,
    ).astype(np.float32)
    return ids, mask, positions, bias, keys, values


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation_function": "gelu", "scale_attn_by_inverse_layer_idx": True},
        {"activation_function": "relu", "scale_attn_weights": False, "n_inner": 50},
        {"activation_function": "sigmoid", "layer_norm_epsilon": 1e-2},
    ],
)
def test_decode_steps_equal_the_numpy_reference(nt, overrides):
    """Feed a left-padded batch one token per step; the logits of every step equal the float64
    reference's full forward over the same prefix."""
    cfg = tiny_config(**overrides)
    sd = _canonical(cfg)
    B, T, L = 3, 7, 8
    ids, mask, positions, bias, keys, values = _padded_batch(cfg, B, T, L, [0, 2, 5], seed=0)
    step = K.DecodeStep(cfg, sd, keys, values, B, nt=nt)
    ref = reference.lm_logits(sd, cfg, ids, attention_mask=mask, position_ids=positions)
    for t in range(T):
        logits = step(ids[:, t], positions[:, t], bias, t)
        for b in range(B):
            if mask[b, t]:  # padded positions have no meaning of their own
                want = ref[b, t]
                assert np.abs(logits[b] - want).max() <= 2e-5 * np.abs(want).max(), (t, b)


def test_head_stored_transposed():
    cfg = tiny_config(tie_word_embeddings=False)
    sd = _canonical(cfg, seed=1)
    H, D, L = cfg.n_head, cfg.n_embd // cfg.n_head, 4
    kv = lambda: [np.zeros((1, H, L, D), np.float32) for _ in range(cfg.n_layer)]  # noqa: E731
    plain = K.DecodeStep(cfg, sd, kv(), kv(), 1)
    flipped = dict(sd, **{"lm_head.weight": np.ascontiguousarray(sd["lm_head.weight"].T)})
    transposed = K.DecodeStep(cfg, flipped, kv(), kv(), 1, head_transposed=True)
    bias = np.zeros((1, L), np.float32)
    a = plain(np.array([5]), np.array([0]), bias, 0)
    b = transposed(np.array([5]), np.array([0]), bias, 0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("nt", [1, 2])
def test_gemv_equal_numpy(nt):
    rng = np.random.default_rng(1)
    for M, Kd, N in [(1, 37, 19), (3, 36, 108), (16, 300, 1000)]:
        x = rng.standard_normal((M, Kd), dtype=np.float32)
        w = rng.standard_normal((Kd, N), dtype=np.float32)
        b = rng.standard_normal(N, dtype=np.float32)
        want = x.astype(np.float64) @ w + b
        np.testing.assert_allclose(
            K.linear_kn(x, w, b, nt=nt), want, rtol=0, atol=2e-6 * np.abs(want).max()
        )
        want = x.astype(np.float64) @ w
        np.testing.assert_allclose(
            K.linear_nk(x, np.ascontiguousarray(w.T), nt=nt),
            want,
            rtol=0,
            atol=2e-6 * np.abs(want).max(),
        )


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_decoding_gemvs_equal_numpy(nt, kind):
    """One row of X (the decoding loops: a few rows of W per pass, the next block prefetched):
    rows shorter and longer than int8's 1.5 KB switch, row counts that leave 1-3 rows over
    after the passes and each thread's share, column counts off the vector width, and a W
    ending right after the last pass (a prefetch past it would read outside the buffer)."""
    rng = np.random.default_rng(11)
    for Kd, N in [(37, 19), (45, 1601), (70, 2304), (9, 1536), (23, 48)]:
        x = rng.standard_normal((1, Kd), dtype=np.float32)
        w = rng.standard_normal((Kd, N), dtype=np.float32)
        b = rng.standard_normal(N, dtype=np.float32)
        scale = None
        if kind == "bfloat16":
            w = w.astype(K.BF16)
            wide = w.astype(np.float64)
        elif kind == "int8":
            w = rng.integers(-127, 128, (Kd, N), dtype=np.int8)
            scale = rng.uniform(0.5, 2.0, N).astype(np.float32)
            wide = w.astype(np.float64) * scale
        else:
            wide = w.astype(np.float64)
        want = x.astype(np.float64) @ wide + b
        got = K.linear_kn(x, w.copy(), b, nt=nt, scale=scale)
        np.testing.assert_allclose(
            got, want, rtol=0, atol=2e-6 * np.abs(want).max(), err_msg=f"{Kd}x{N}"
        )
        want = x.astype(np.float64) @ wide
        got = K.linear_nk(x, np.ascontiguousarray(w.T), nt=nt, scale=scale)
        np.testing.assert_allclose(
            got, want, rtol=0, atol=2e-6 * np.abs(want).max(), err_msg=f"{N}x{Kd}"
        )


def test_kernel_prefill_rule(monkeypatch):
    """Which prompts run on the kernel's prefill (the rule all three backends call): int8
    always, fp32 never, bf16 always without native bf16 and up to 32 rows with it."""
    for native in (False, True):
        monkeypatch.setattr(K, "native_bf16", lambda native=native: native)
        assert K.kernel_prefill(np.int8, 1) and K.kernel_prefill(np.int8, 4096)
        assert not K.kernel_prefill(np.float32, 1)
        assert K.kernel_prefill(K.BF16, K.NATIVE_BF16_PREFILL_ROWS)
        assert K.kernel_prefill(K.BF16, K.NATIVE_BF16_PREFILL_ROWS + 1) is not native


def test_bad_inputs_are_named():
    cfg = tiny_config()
    sd = _canonical(cfg)
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    kv = [np.zeros((1, H, 4, D), np.float32) for _ in range(cfg.n_layer)]
    with pytest.raises(TypeError, match="float32"):
        K.linear_kn(np.ones((1, 3), np.float32), np.ones((3, 2)))
    with pytest.raises(ValueError, match="features"):
        K.linear_kn(np.ones((1, 4), np.float32), np.ones((3, 2), np.float32))
    bad = dict(sd, **{"transformer.h.0.attn.c_attn.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn\.weight"):
        K.DecodeStep(cfg, bad, kv, kv, 1)
    with pytest.raises(ValueError, match="keys"):
        K.DecodeStep(cfg, sd, [np.zeros((1, H, 4, D + 1), np.float32)] * cfg.n_layer, kv, 1)
    step = K.DecodeStep(cfg, sd, kv, [v.copy() for v in kv], 1)
    with pytest.raises(ValueError, match="slot"):
        step(np.array([1]), np.array([0]), np.zeros((1, 4), np.float32), 4)


# bf16 weights: the kernel widens each weight exactly and sums in fp32, so against a float64
# reference over the *same bf16-rounded weights* the error is the fp32 kernel's (docs/cpu-kernels.md)
def _bf16(sd):
    return {k: v.astype(K.BF16) for k, v in sd.items()}


def _widened(sd):
    return {k: v.astype(np.float32) for k, v in sd.items()}


@pytest.mark.parametrize("nt", [1, 2])
def test_bf16_gemv_equal_numpy_over_the_rounded_weights(nt):
    rng = np.random.default_rng(2)
    for M, Kd, N in [(1, 37, 19), (1, 64, 47), (3, 36, 108), (16, 300, 1000)]:
        x = rng.standard_normal((M, Kd), dtype=np.float32)
        w = rng.standard_normal((Kd, N), dtype=np.float32).astype(K.BF16)
        b = rng.standard_normal(N, dtype=np.float32)
        want = x.astype(np.float64) @ w.astype(np.float64) + b
        np.testing.assert_allclose(
            K.linear_kn(x, w, b, nt=nt), want, rtol=0, atol=2e-6 * np.abs(want).max()
        )
        want = x.astype(np.float64) @ w.astype(np.float64)
        np.testing.assert_allclose(
            K.linear_nk(x, np.ascontiguousarray(w.T), nt=nt),
            want,
            rtol=0,
            atol=2e-6 * np.abs(want).max(),
        )


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize(
    "overrides", [{}, {"tie_word_embeddings": False, "n_inner": 50, "activation_function": "gelu"}]
)
def test_bf16_decode_steps_equal_the_numpy_reference(nt, overrides):
    cfg = tiny_config(**overrides)
    sd = _bf16(_canonical(cfg, seed=3))
    B, T, L = 2, 6, 8
    ids, mask, positions, bias, keys, values = _padded_batch(cfg, B, T, L, [0, 3], seed=3)
    step = K.DecodeStep(cfg, sd, keys, values, B, nt=nt)
    assert step.wbf16 == 1
    ref = reference.lm_logits(_widened(sd), cfg, ids, attention_mask=mask, position_ids=positions)
    for t in range(T):
        logits = step(ids[:, t], positions[:, t], bias, t)
        for b in range(B):
            if mask[b, t]:
                want = ref[b, t]
                assert np.abs(logits[b] - want).max() <= 2e-5 * np.abs(want).max(), (t, b)


def _int8(sd):
    from gpt2_core import quantize as Q

    q = dict(Q.quantize_state_dict({k: v for k, v in sd.items() if k != "lm_head.weight"}))
    deq = dict(Q.dequantize_state_dict(q))
    q["lm_head.weight"], deq["lm_head.weight"] = (
        q["transformer.wte.weight"],
        deq["transformer.wte.weight"],
    )
    return q, deq


@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"activation_function": "gelu", "n_inner": 50, "scale_attn_by_inverse_layer_idx": True}],
)
def test_prefill_equals_the_numpy_reference(nt, kind, overrides):
    """The whole prompt in one call (left-padded rows, odd sizes: 36 channels, 3 heads, vocab
    257, so every GEMM strip has a ragged edge): the last token's logits and the cache equal the
    float64 reference over the same (rounded / dequantized) weights, and decoding steps after
    it continue the reference's sequence."""
    cfg = tiny_config(**overrides)
    sd = _canonical(cfg, seed=5)
    if kind == "bfloat16":
        sd = _bf16(sd)
        ref_sd = _widened(sd)
    elif kind == "int8":
        sd, ref_sd = _int8(sd)
    else:
        ref_sd = sd
    B, T, P, L = 3, 11, 8, 12  # 8 prompt tokens (of 11) then 3 steps; row 2: one real token
    ids, mask, positions, bias, keys, values = _padded_batch(cfg, B, T, L, [0, 2, 7], seed=5)
    step = K.DecodeStep(cfg, sd, keys, values, B, nt=nt)
    ref = reference.lm_logits(ref_sd, cfg, ids, attention_mask=mask, position_ids=positions)
    logits = step.prefill(ids[:, :P], positions[:, :P], bias)
    for b in range(B):
        want = ref[b, P - 1]
        assert np.abs(logits[b] - want).max() <= 2e-5 * np.abs(want).max(), b
    # the cache holds what token-by-token steps write (same weights, another summation order)
    kv2 = [np.zeros_like(k) for k in keys], [np.zeros_like(v) for v in values]
    by_step = K.DecodeStep(cfg, sd, *kv2, B, nt=nt)
    for t in range(P):
        by_step(ids[:, t], positions[:, t], bias, t)
    for a, b in zip(keys + values, kv2[0] + kv2[1]):
        for r in range(B):
            real = mask[r, :P] == 1
            np.testing.assert_allclose(
                a[r][:, :P][:, real], b[r][:, :P][:, real], rtol=0, atol=1e-5 * np.abs(b).max()
            )
    for t in range(P, T):
        logits = step(ids[:, t], positions[:, t], bias, t)
        for b in range(B):
            want = ref[b, t]
            assert np.abs(logits[b] - want).max() <= 2e-5 * np.abs(want).max(), (t, b)


def test_prefill_checks_its_inputs():
    cfg = tiny_config()
    sd = _canonical(cfg)
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    kv = [np.zeros((2, H, 4, D), np.float32) for _ in range(cfg.n_layer)]
    step = K.DecodeStep(cfg, sd, kv, [v.copy() for v in kv], 2)
    bias = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"must both be \(2, T\)"):
        step.prefill(np.ones((1, 3)), np.ones((1, 3)), bias)
    with pytest.raises(ValueError, match=r"prompt of 5 tokens does not fit cache slots \[0, 4\)"):
        step.prefill(np.ones((2, 5)), np.ones((2, 5)), bias)
    ids = np.ones((2, 3), np.int64)
    ids[1, 2] = cfg.vocab_size
    with pytest.raises(ValueError, match=f"token id {cfg.vocab_size} outside the vocabulary"):
        step.prefill(ids, np.zeros((2, 3)), bias)
    with pytest.raises(ValueError, match=r"position -1 outside"):
        step.prefill(np.ones((2, 3)), -np.ones((2, 3)), bias)
    with pytest.raises(ValueError, match=r"token id -3 outside"):
        step(np.array([1, -3]), np.zeros(2), bias, 0)
    with pytest.raises(ValueError, match=f"position {cfg.n_positions} outside"):
        step(np.array([1, 2]), np.full(2, cfg.n_positions), bias, 0)


def test_bf16_matrices_must_not_mix_with_fp32():
    cfg = tiny_config()
    sd = _canonical(cfg)
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    kv = [np.zeros((1, H, 4, D), np.float32) for _ in range(cfg.n_layer)]
    mixed = dict(
        sd,
        **{"transformer.h.1.mlp.c_fc.weight": sd["transformer.h.1.mlp.c_fc.weight"].astype(K.BF16)},
    )
    with pytest.raises(TypeError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight is bfloat16"):
        K.DecodeStep(cfg, mixed, kv, kv, 1)
    with pytest.raises(TypeError, match="float32, bfloat16 or int8"):
        K.linear_nk(np.ones((1, 3), np.float32), np.ones((2, 3), np.float16))


def test_reasons_for_not_running():
    cfg = tiny_config()
    assert K.DecodeStep.unsupported_reason(cfg, 1, 8) is None
    assert "rows" in K.DecodeStep.unsupported_reason(cfg, K.MAX_ROWS + 1, 8)
    assert "n_positions" in K.DecodeStep.unsupported_reason(cfg, 1, cfg.n_positions + 1)
    assert "cross" in K.DecodeStep.unsupported_reason(tiny_config(add_cross_attention=True), 1, 8)
    with K.disabled():
        assert "disabled" in K.DecodeStep.unsupported_reason(cfg, 1, 8)


def _in_subprocess(code, **env):
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_loading_imports_no_framework_and_tames_openmp_spinning():
    code = (
        "import os, sys; from gpt2_core import cpu_kernels as k; assert k.load() is not None;"
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax') if m in sys.modules),"
        " os.environ.get('GOMP_SPINCOUNT'))"
    )
    assert _in_subprocess(code, GOMP_SPINCOUNT=None, OMP_WAIT_POLICY=None) == "[] 10000"
    # a user's own OpenMP setting wins
    assert _in_subprocess(code, GOMP_SPINCOUNT=None, OMP_WAIT_POLICY="active") == "[] None"
