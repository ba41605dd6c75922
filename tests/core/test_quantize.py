"""gpt2_core.quantize (int8 weight-only, per-output-channel scales) and the int8 paths of the
CPU kernels, against numpy: the kernels' int8 products equal fp32 products with the dequantized
weights up to fp32 summation order, so those comparisons are tight."""

import numpy as np
import pytest

from gpt2_core import cpu_kernels as K
from gpt2_core import quantize as Q
from gpt2_core import reference
from gpt2_core.init import random_state_dict, tiny_config

kernels = pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")


@pytest.mark.parametrize("axis", [0, 1])
def test_round_trip_error_is_at_most_half_a_step_per_channel(axis):
    rng = np.random.default_rng(0)
    w = (
        rng.standard_normal((37, 19)).astype(np.float32)
        * rng.uniform(0.01, 3, 19 if axis == 0 else 37)[
            None if axis == 0 else slice(None), slice(None) if axis == 0 else None
        ]
    )
    w[:, 3] = 0.0 if axis == 0 else w[:, 3]  # an all-zero channel
    q, s = Q.quantize_int8(w, axis)
    assert q.dtype == np.int8 and q.flags.c_contiguous and s.dtype == np.float32
    assert s.shape == (w.shape[1 - axis],)
    err = np.abs(Q.dequantize_int8(q, s, axis).astype(np.float64) - w)
    step = s[None, :] if axis == 0 else s[:, None]
    assert (err <= step / 2 * (1 + 1e-6)).all()
    assert np.abs(q).max() == 127  # the largest |w| of a channel maps to +-127
    assert q.min() >= -127
    if axis == 0:
        assert s[3] == 1.0 and not q[:, 3].any()


def test_which_keys_are_quantized_and_ties_stay_shared():
    cfg = tiny_config()
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied: the same array
    qsd = Q.quantize_state_dict(sd)
    int8 = sorted(k for k, v in qsd.items() if v.dtype == np.int8)
    assert int8 == sorted(
        ["transformer.wte.weight", "lm_head.weight"]
        + [
            f"transformer.h.{i}.{m}.weight"
            for i in range(cfg.n_layer)
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ]
    )
    assert qsd["lm_head.weight"] is qsd["transformer.wte.weight"]
    assert qsd["transformer.wte.weight_scale"].shape == (cfg.vocab_size,)
    assert qsd["transformer.h.0.attn.c_attn.weight_scale"].shape == (3 * cfg.n_embd,)
    assert qsd["transformer.wpe.weight"].dtype == np.float32
    assert Q.is_quantized(qsd) and not Q.is_quantized(sd)
    back = Q.dequantize_state_dict(qsd)
    assert set(back) == set(sd)
    for k in int8:
        assert np.abs(back[k] - sd[k]).max() <= Q.max_abs_error(qsd[k + "_scale"]) * 1.0001


def test_bad_input():
    with pytest.raises(ValueError, match=r"quantize='int4' is not supported.*int8"):
        Q.check_scheme("int4")
    assert Q.check_scheme(None) is None and Q.check_scheme("INT8") == "int8"
    with pytest.raises(ValueError, match="2-D float"):
        Q.quantize_int8(np.ones(3, np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize_int8(np.array([[np.nan, 1.0]], np.float32), 0)
    cfg = tiny_config()
    qsd = Q.quantize_state_dict(random_state_dict(cfg, "lm", seed=0, std=0.3))
    with pytest.raises(ValueError, match="already quantized"):
        Q.quantize_state_dict(qsd)


@kernels
@pytest.mark.parametrize("nt", [1, 2])
def test_int8_gemv_equal_the_dequantized_product(nt):
    rng = np.random.default_rng(1)
    for M, Kd, N in [(1, 37, 19), (1, 64, 47), (3, 36, 108), (16, 300, 1000)]:
        x = rng.standard_normal((M, Kd), dtype=np.float32)
        w = rng.standard_normal((Kd, N), dtype=np.float32)
        b = rng.standard_normal(N, dtype=np.float32)
        q, s = Q.quantize_int8(w, 0)
        want = x.astype(np.float64) @ Q.dequantize_int8(q, s, 0, np.float64) + b
        np.testing.assert_allclose(
            K.linear_kn(x, q, b, nt=nt, scale=s), want, rtol=0, atol=2e-6 * np.abs(want).max()
        )
        qt, st = Q.quantize_int8(np.ascontiguousarray(w.T), 1)  # (N, K), a scale per row
        want = x.astype(np.float64) @ Q.dequantize_int8(qt, st, 1, np.float64).T
        np.testing.assert_allclose(
            K.linear_nk(x, qt, nt=nt, scale=st), want, rtol=0, atol=2e-6 * np.abs(want).max()
        )
    with pytest.raises(ValueError, match="scales are required"):
        K.linear_kn(x, q, b)
    with pytest.raises(ValueError, match="int8 weights only"):
        K.linear_kn(x, w, b, scale=s)


def _step_logits(cfg, sd, nt, head_transposed=False):
    rng = np.random.default_rng(3)
    B, T, L = 2, 6, 8
    ids = rng.integers(0, cfg.vocab_size, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0
    positions = np.where(mask == 1, np.cumsum(mask, 1) - 1, 1)
    H, D = cfg.n_head, cfg.n_embd // cfg.n_head
    keys = [np.zeros((B, H, L, D), np.float32) for _ in range(cfg.n_layer)]
    values = [np.zeros((B, H, L, D), np.float32) for _ in range(cfg.n_layer)]
    step = K.DecodeStep(cfg, sd, keys, values, B, nt=nt, head_transposed=head_transposed)
    bias = np.where(
        np.pad(mask, [(0, 0), (0, L - T)], constant_values=1) == 1,
        0.0,
        np.finfo(np.float32).min / 2,
    ).astype(np.float32)
    out = [step(ids[:, t], positions[:, t], bias, t).copy() for t in range(T)]
    return step, ids, mask, positions, out


@kernels
@pytest.mark.parametrize("nt", [1, 2])
@pytest.mark.parametrize(
    "overrides", [{}, {"tie_word_embeddings": False, "n_inner": 50, "activation_function": "gelu"}]
)
def test_int8_decode_steps_equal_the_dequantized_reference(nt, overrides):
    """The fused int8 step equals the float64 reference run on the dequantized weights as
    tightly as the fp32 step equals it on fp32 weights (2e-5 of the logits' range)."""
    cfg = tiny_config(**overrides)
    sd = random_state_dict(cfg, "lm", seed=3, std=0.3)
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    qsd = Q.quantize_state_dict(sd)
    step, ids, mask, positions, out = _step_logits(cfg, qsd, nt)
    assert step.wq == K.INT8
    ref = reference.lm_logits(
        Q.dequantize_state_dict(qsd), cfg, ids, attention_mask=mask, position_ids=positions
    )
    for t, logits in enumerate(out):
        for b in range(2):
            if mask[b, t]:
                want = ref[b, t]
                assert np.abs(logits[b] - want).max() <= 2e-5 * np.abs(want).max(), (t, b)


@kernels
def test_int8_head_stored_transposed_and_missing_scales():
    cfg = tiny_config(tie_word_embeddings=False)
    sd = random_state_dict(cfg, "lm", seed=1, std=0.3)
    qsd = Q.quantize_state_dict(sd)
    plain = _step_logits(cfg, qsd, 2)[-1]
    flipped = dict(qsd, **{"lm_head.weight": np.ascontiguousarray(qsd["lm_head.weight"].T)})
    transposed = _step_logits(cfg, flipped, 2, head_transposed=True)[-1]
    for a, b in zip(plain, transposed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    missing = {k: v for k, v in qsd.items() if k != "transformer.h.1.mlp.c_fc.weight_scale"}
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight is int8: its per-channel"):
        _step_logits(cfg, missing, 1)
