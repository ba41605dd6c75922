"""Keras conventions (issue #12): ``predict`` / ``predict_on_batch`` / ``evaluate`` return
dicts of arrays for every class, and Keras 3 ``model.export`` writes a SavedModel after the
model was called (it failed with "never called")."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import gpt2_tf  # noqa: E402
from gpt2_core.init import random_state_dict, tiny_config  # noqa: E402

CLASSES = {
    "GPT2Model": ("last_hidden_state",),
    "GPT2LMHeadModel": ("logits",),
    "GPT2DoubleHeadsModel": ("logits", "mc_logits"),
    "GPT2ForSequenceClassification": ("logits",),
    "GPT2ForTokenClassification": ("logits",),
    "GPT2ForQuestionAnswering": ("start_logits", "end_logits"),
}
HEADS = {
    "GPT2Model": "base",
    "GPT2LMHeadModel": "lm",
    "GPT2DoubleHeadsModel": "double_heads",
    "GPT2ForSequenceClassification": "sequence_classification",
    "GPT2ForTokenClassification": "token_classification",
    "GPT2ForQuestionAnswering": "question_answering",
}


def _model(name):
    cfg = tiny_config(num_labels=3, pad_token_id=0)
    model = getattr(gpt2_tf, name)(cfg)
    gpt2_tf.load_canonical(model, random_state_dict(cfg, HEADS[name], seed=1, std=0.3))
    return model


def _ids(name):
    ids = np.random.default_rng(0).integers(1, 257, (5, 7)).astype("int32")
    return np.repeat(ids[:, None, :], 2, axis=1) if name == "GPT2DoubleHeadsModel" else ids


@pytest.mark.parametrize("name", CLASSES)
def test_predict_returns_a_dict_of_arrays_equal_to_call(name):
    model, x = _model(name), _ids(name)
    direct = model(input_ids=tf.constant(x), training=False)
    for out in (model.predict(x, batch_size=2, verbose=0), model.predict_on_batch(x)):
        assert set(out) == set(CLASSES[name])
        for key in CLASSES[name]:
            assert isinstance(out[key], np.ndarray)
            np.testing.assert_allclose(out[key], np.asarray(direct[key]), rtol=1e-5, atol=1e-5)
    # a dict of call arguments works too
    out = model.predict({"input_ids": x, "attention_mask": np.ones_like(x)}, verbose=0)
    np.testing.assert_allclose(
        out[CLASSES[name][0]], np.asarray(direct[CLASSES[name][0]]), rtol=1e-5, atol=1e-5
    )


def test_evaluate_reports_the_model_loss():
    model, x = _model("GPT2LMHeadModel"), _ids("GPT2LMHeadModel")
    model.compile(optimizer="adam")
    got = model.evaluate({"input_ids": x, "labels": x}, batch_size=5, verbose=0, return_dict=True)
    want = float(model(input_ids=x, labels=x, training=False).loss)
    assert got["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    "name", ["GPT2LMHeadModel", "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel"]
)
def test_keras_export_after_a_call(name, tmp_path):
    model, x = _model(name), _ids(name)
    want = model(input_ids=tf.constant(x), training=False)  # called first: the failing case
    model.export(tmp_path / "exported", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    mask = tf.ones_like(tf.constant(x))
    for endpoint in (loaded.serve, loaded.signatures["serving_default"]):
        got = endpoint(input_ids=tf.constant(x), attention_mask=mask)
        for key in CLASSES[name]:
            np.testing.assert_allclose(
                np.asarray(got[key]), np.asarray(want[key]), rtol=1e-5, atol=1e-5
            )
