"""GPT-2 Keras models: variable names, tuple outputs, losses, flags, mixed precision, compiled paths.

Shapes, weights, causality, cache, padding and bad input of every backend: tests/test_backends.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import HEADS, ids_like, make_model

from gpt2_core import naming


def _inputs(head, ids):
    return ids[None] if head == "double_heads" else ids


@pytest.mark.parametrize("head", HEADS)
def test_tuple_outputs_keep_transformers_order(head, rng):
    # shapes, weight round trips, causality, cache, padding of every backend: tests/test_backends.py
    model, _ = make_model(head)
    ids = ids_like(rng, (2, 5))
    out = model(input_ids=_inputs(head, ids))
    tup = model(input_ids=_inputs(head, ids), return_dict=False)
    assert isinstance(tup, tuple)
    np.testing.assert_array_equal(tup[0], out[0])


def test_variable_names_are_canonical(lm):
    paths = {v.path.split("/", 1)[1] for v in lm.weights}  # drop the model's own name
    assert {
        "transformer/wte/embeddings",
        "transformer/h_0/attn/c_attn/weight",
        "transformer/h_1/mlp/c_proj/bias",
        "transformer/ln_f/gamma",
    } <= paths
    assert len(lm.weights) == len(naming.expected_shapes(lm.config, "lm")) - 1  # tied lm_head


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
    np.testing.assert_allclose(
        out.loss.numpy(), ce(out.logits.numpy(), np.array([0, 2])).mean(), rtol=1e-5
    )
    multi = sc(input_ids=ids, labels=np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], np.float32))
    x = multi.logits.numpy()
    y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(multi.loss.numpy(), bce.mean(), rtol=1e-5)

    dh, _ = make_model("double_heads")
    out = dh(input_ids=ids[None], mc_token_ids=[[5, 3]], labels=ids[None], mc_labels=[1])
    np.testing.assert_allclose(
        out.mc_loss.numpy(), ce(out.mc_logits.numpy(), np.array([1]))[0], rtol=1e-5
    )
    assert out.loss.shape == ()


def test_flags_and_head_mask(rng):
    cfg_flags = dict(
        scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True,
        activation_function="quick_gelu",
        layer_norm_epsilon=1e-3,
        n_inner=50,
    )
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
    # the checks shared by every backend are in tests/test_backends.py; here the compiled paths
    bad = np.array([[1, 2, 257]], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the vocabulary"):
        tf.function(lambda x: lm(input_ids=x).logits)(tf.constant(bad))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.jit_call(input_ids=bad)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.generate(bad, max_new_tokens=2)
    # a user's own XLA function cannot raise (XLA drops Assert): the bad row becomes NaN
    xla_out = tf.function(lambda x: lm(input_ids=x).logits, jit_compile=True)(
        tf.constant(np.array([[1, 2, 3], [1, 2, 300]], np.int32))
    )
    assert np.isfinite(xla_out[0]).all() and np.isnan(xla_out[1]).all()
    with pytest.raises(ValueError, match="batch"):
        lm(input_ids=np.array([1, 2, 3], np.int32))


def test_jit_call_matches_eager(lm, rng):
    ids = ids_like(rng, (2, 7))
    np.testing.assert_allclose(
        lm.jit_call(input_ids=ids).logits.numpy(),
        lm(input_ids=ids).logits.numpy(),
        atol=1e-4,
        rtol=1e-4,
    )


def test_inputs_embeds_and_token_types(lm, rng):
    ids = ids_like(rng, (1, 4))
    emb = tf.gather(lm.transformer.wte.embeddings, ids)
    np.testing.assert_allclose(
        lm(inputs_embeds=emb).logits.numpy(), lm(input_ids=ids).logits.numpy(), atol=1e-5
    )
    tt = np.ones_like(ids)
    assert not np.allclose(lm(input_ids=ids, token_type_ids=tt).logits, lm(input_ids=ids).logits)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loaded_variables_are_filled_in_place_and_read_without_copies(tmp_path, dtype, monkeypatch):
    """from_pretrained fills each variable's own buffer (no sliced assign): every variable,
    the embeddings above all, is still read by sharing its buffer after the load and after a
    forward pass. A sliced assign or a gather from the variable would switch it to TF's
    copy-on-read mode, where each dense read (every tied-head matmul) copies the whole tensor."""
    from gpt2_core.init import random_state_dict, tiny_config
    from gpt2_tf import GPT2LMHeadModel
    from gpt2_tf.weights import to_canonical

    cfg = tiny_config()
    sd = random_state_dict(cfg, "lm", seed=3)
    src = GPT2LMHeadModel(cfg)
    from gpt2_tf import load_canonical

    load_canonical(src, sd)
    src.save_pretrained(tmp_path)
    monkeypatch.setattr("gpt2_tf.weights.ASSIGN_BLOCK", 256)  # many blocks per tensor
    model = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype)
    model(input_ids=tf.constant([[1, 2, 3]]))
    model.generate([[1, 2, 3]], max_new_tokens=2, num_beams=2)
    for var in model.weights:
        v = var._value if hasattr(var, "_value") else var
        assert np.shares_memory(v.read_value()._numpy(), v.read_value()._numpy()), var.path
    got = to_canonical(model)
    for key, want in sd.items():
        if key in got:
            want = (
                want if dtype == "float32" else tf.cast(want, tf.bfloat16).numpy()
            )  # TF's rounding
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want), err_msg=key)
