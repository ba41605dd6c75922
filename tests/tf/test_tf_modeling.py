"""GPT-2 Keras models: shapes, weights round trip, causality, cache, padding, flags, losses, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import HEADS, ids_like, make_model

from gpt2_core import naming
from gpt2_tf import to_canonical


def _inputs(head, ids):
    return ids[None] if head == "double_heads" else ids


@pytest.mark.parametrize("head", HEADS)
def test_head_shapes_and_weight_round_trip(head, rng):
    model, sd = make_model(head)
    cfg = model.config
    ids = ids_like(rng, (2, 5))
    out = model(input_ids=_inputs(head, ids), output_attentions=True, output_hidden_states=True)
    first = {"base": ("last_hidden_state", (2, 5, 36)), "lm": ("logits", (2, 5, 257)),
             "double_heads": ("mc_logits", (1, 2)), "sequence_classification": ("logits", (2, 3)),
             "token_classification": ("logits", (2, 5, 3)),
             "question_answering": ("start_logits", (2, 5))}[head]
    assert tuple(out[first[0]].shape) == first[1]
    assert len(out.hidden_states) == cfg.n_layer + 1 and len(out.attentions) == cfg.n_layer
    assert tuple(out.attentions[0].shape) == (2, 3, 5, 5)
    back = to_canonical(model)
    assert set(back) == set(naming.expected_shapes(cfg, head))
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # tuple outputs (return_dict=False) keep transformers' order
    tup = model(input_ids=_inputs(head, ids), return_dict=False)
    assert isinstance(tup, tuple)
    np.testing.assert_array_equal(tup[0], out[0])


def test_variable_names_are_canonical(lm):
    paths = {v.path.split("/", 1)[1] for v in lm.weights}  # drop the model's own name
    assert {"transformer/wte/embeddings", "transformer/h_0/attn/c_attn/weight",
            "transformer/h_1/mlp/c_proj/bias", "transformer/ln_f/gamma"} <= paths
    assert len(lm.weights) == len(naming.expected_shapes(lm.config, "lm")) - 1  # tied lm_head


def test_causality_and_cache_equals_full_pass(lm, rng):
    ids = ids_like(rng, (2, 9))
    full = lm(input_ids=ids).logits.numpy()
    changed = ids.copy()
    changed[:, 6:] = (changed[:, 6:] + 7) % 250 + 1
    np.testing.assert_allclose(lm(input_ids=changed).logits.numpy()[:, :6], full[:, :6],
                               atol=1e-5)
    # prefix then one token at a time with the returned cache
    out = lm(input_ids=ids[:, :4], use_cache=True)
    past, steps = out.past_key_values, [out.logits.numpy()]
    for t in range(4, 9):
        out = lm(input_ids=ids[:, t:t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits.numpy())
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-4, rtol=1e-4)
    assert tuple(past[0][0].shape) == (2, 3, 9, 12)


def test_left_and_right_padding(lm, rng):
    ids = ids_like(rng, (1, 6))
    ref = lm(input_ids=ids).logits.numpy()[0]
    left = np.concatenate([[[0, 0, 0]], ids], axis=1)
    mask = (left != 0).astype(np.int32)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    out = lm(input_ids=left, attention_mask=mask, position_ids=pos).logits.numpy()[0]
    np.testing.assert_allclose(out[3:], ref, atol=1e-4, rtol=1e-4)
    assert np.isfinite(out).all()  # fully masked pad rows attend uniformly, no NaN
    right = np.concatenate([ids, [[0, 0]]], axis=1)
    out = lm(input_ids=right, attention_mask=(right != 0).astype(np.int32)).logits.numpy()[0]
    np.testing.assert_allclose(out[:6], ref, atol=1e-4, rtol=1e-4)


def test_sequence_classification_pools_last_non_pad(rng):
    model, _ = make_model("sequence_classification")
    ids = ids_like(rng, (1, 5))
    ref = model(input_ids=ids).logits.numpy()
    left = np.concatenate([[[0, 0]], ids], axis=1)
    right = np.concatenate([ids, [[0, 0]]], axis=1)
    pos = np.array([[0, 0, 0, 1, 2, 3, 4]])
    out_l = model(input_ids=left, attention_mask=(left != 0).astype(np.int32), position_ids=pos)
    out_r = model(input_ids=right, attention_mask=(right != 0).astype(np.int32))
    np.testing.assert_allclose(out_l.logits.numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(out_r.logits.numpy(), ref, atol=1e-4)
    nopad, _ = make_model("sequence_classification", pad_token_id=None)
    with pytest.raises(ValueError, match="batch sizes > 1"):
        nopad(input_ids=ids_like(rng, (2, 5)))


def test_losses_match_numpy(rng):
    def ce(logits, labels):
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]

    lm, _ = make_model("lm")
    ids = ids_like(rng, (2, 6))
    labels = ids.copy()
    labels[0, 2] = -100
    out = lm(input_ids=ids, labels=labels)
    lg, lb = out.logits.numpy()[:, :-1], labels[:, 1:]
    keep = lb != -100
    np.testing.assert_allclose(out.loss.numpy(), ce(lg[keep], lb[keep]).mean(), rtol=1e-5)

    qa, _ = make_model("question_answering")
    out = qa(input_ids=ids, start_positions=[1, 99], end_positions=[3, 2])
    s, e = out.start_logits.numpy(), out.end_logits.numpy()
    want = (ce(s[:1], np.array([1])).mean() + ce(e, np.array([3, 2])).mean()) / 2  # 99 -> ignored
    np.testing.assert_allclose(out.loss.numpy(), want, rtol=1e-5)

    sc, _ = make_model("sequence_classification")
    out = sc(input_ids=ids, labels=np.array([0, 2]))
    np.testing.assert_allclose(out.loss.numpy(), ce(out.logits.numpy(), np.array([0, 2])).mean(),
                               rtol=1e-5)
    multi = sc(input_ids=ids, labels=np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32))
    x = multi.logits.numpy()
    y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(multi.loss.numpy(), bce.mean(), rtol=1e-5)

    dh, _ = make_model("double_heads")
    out = dh(input_ids=ids[None], mc_token_ids=[[5, 3]], labels=ids[None], mc_labels=[1])
    np.testing.assert_allclose(out.mc_loss.numpy(), ce(out.mc_logits.numpy(), np.array([1]))[0],
                               rtol=1e-5)
    assert out.loss.shape == ()


def test_flags_and_head_mask(rng):
    cfg_flags = dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True,
                     activation_function="quick_gelu", layer_norm_epsilon=1e-3, n_inner=50)
    a, _ = make_model("lm")
    b, _ = make_model("lm", **cfg_flags)
    ids = ids_like(rng, (1, 5))
    assert not np.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-3)
    hm = np.ones((2, 3), np.float32)
    hm[1, 2] = 0.0
    out = a(input_ids=ids, head_mask=hm, output_attentions=True)
    assert np.all(out.attentions[1].numpy()[:, 2] == 0) and np.any(out.attentions[0].numpy()[:, 2])
    cfg = a.config
    assert cfg.output_attentions is False
    assert a(input_ids=ids, use_cache=False).past_key_values is None


def test_mixed_precision_close_to_fp32(rng):
    fp32, _ = make_model("lm")
    mixed, _ = make_model("lm", dtype="mixed_bfloat16")
    ids = ids_like(rng, (2, 6))
    a = fp32(input_ids=ids, labels=ids)
    b = mixed(input_ids=ids, labels=ids)
    assert b.logits.dtype == tf.bfloat16 and b.loss.dtype == tf.float32
    assert mixed.weights[0].dtype == "float32"
    scale = np.abs(a.logits.numpy()).max()
    assert np.abs(b.logits.numpy().astype(np.float32) - a.logits.numpy()).max() < 0.05 * scale
    np.testing.assert_allclose(b.loss.numpy(), a.loss.numpy(), rtol=0.05)
    mask = np.ones((2, 6), np.int32)
    mask[0, :3] = 0
    assert np.isfinite(mixed(input_ids=ids, attention_mask=mask).logits.numpy()).all()


def test_bad_inputs_raise_clear_errors(lm, rng):
    bad = np.array([[1, 2, 257]], np.int32)
    with pytest.raises(ValueError, match="input_ids contains 257"):
        lm(input_ids=bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        tf.function(lambda x: lm(input_ids=x).logits)(tf.constant(bad))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.jit_call(input_ids=bad)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.generate(bad, max_new_tokens=2)
    # a user's own XLA function cannot raise (XLA drops Assert): the bad row becomes NaN
    xla_out = tf.function(lambda x: lm(input_ids=x).logits, jit_compile=True)(
        tf.constant(np.array([[1, 2, 3], [1, 2, 300]], np.int32)))
    assert np.isfinite(xla_out[0]).all() and np.isnan(xla_out[1]).all()
    with pytest.raises(TypeError, match="integer"):
        lm(input_ids=np.array([[1.0, 2.0]], np.float32))
    with pytest.raises(ValueError, match="n_positions"):
        lm(input_ids=ids_like(rng, (1, 33)))
    with pytest.raises(ValueError, match="batch"):
        lm(input_ids=np.array([1, 2, 3], np.int32))
    with pytest.raises(ValueError, match="position_ids contains"):
        lm(input_ids=np.array([[1, 2]], np.int32), position_ids=[[0, 40]])
    with pytest.raises(ValueError, match="labels contains"):
        lm(input_ids=np.array([[1, 2]], np.int32), labels=[[1, 999]])
    with pytest.raises(ValueError, match="both input_ids and inputs_embeds"):
        lm(input_ids=np.array([[1]], np.int32), inputs_embeds=np.zeros((1, 1, 36), np.float32))
    with pytest.raises(ValueError, match="cross-attention"):
        lm(input_ids=np.array([[1]], np.int32),
           encoder_hidden_states=np.zeros((1, 2, 36), np.float32))


def test_jit_call_matches_eager(lm, rng):
    ids = ids_like(rng, (2, 7))
    np.testing.assert_allclose(lm.jit_call(input_ids=ids).logits.numpy(),
                               lm(input_ids=ids).logits.numpy(), atol=1e-4, rtol=1e-4)


def test_inputs_embeds_and_token_types(lm, rng):
    ids = ids_like(rng, (1, 4))
    emb = tf.gather(lm.transformer.wte.embeddings, ids)
    np.testing.assert_allclose(lm(inputs_embeds=emb).logits.numpy(),
                               lm(input_ids=ids).logits.numpy(), atol=1e-5)
    tt = np.ones_like(ids)
    assert not np.allclose(lm(input_ids=ids, token_type_ids=tt).logits, lm(input_ids=ids).logits)
