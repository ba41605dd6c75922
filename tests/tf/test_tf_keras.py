"""Keras workflow: fit (own loss and compiled loss), config round trip, .keras save/load,
SavedModel export loaded without our packages, checkpoints (safetensors, sharded, dtype)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import ids_like, make_model

from gpt2_core.init import random_state_dict, tiny_config
from gpt2_tf import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    TFGPT2LMHeadModel,
    load_canonical,
)


def _fresh_lm(**overrides):
    cfg = tiny_config(**overrides)
    model = GPT2LMHeadModel(cfg)
    load_canonical(model, random_state_dict(cfg, "lm", seed=3, std=0.3))
    return model


def test_fit_with_labels_in_inputs_lowers_loss(rng):
    model = _fresh_lm()
    ids = ids_like(rng, (8, 10))
    ds = tf.data.Dataset.from_tensor_slices({"input_ids": ids, "labels": ids}).batch(4)
    # jit_compile=False: an XLA-compiled train step takes longer to build than this test runs
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    hist = model.fit(ds, epochs=3, verbose=0, shuffle=False).history["loss"]
    assert hist[-1] < hist[0]


def test_fit_with_compiled_loss_and_targets(rng):
    cfg = tiny_config(pad_token_id=0, num_labels=3)
    model = GPT2ForSequenceClassification(cfg)
    load_canonical(model, random_state_dict(cfg, "sequence_classification", seed=1, std=0.3))
    x = {"input_ids": ids_like(rng, (8, 6))}
    y = rng.integers(0, 3, 8)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    hist = model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False).history
    assert hist["loss"][-1] < hist["loss"][0] and "accuracy" in hist


def test_config_round_trip_and_keras_save_load(tmp_path, rng):
    model, _ = make_model("lm")
    conf = model.get_config()
    clone = GPT2LMHeadModel.from_config(conf)
    assert clone.config == model.config
    ids = ids_like(rng, (2, 5))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is GPT2LMHeadModel and TFGPT2LMHeadModel is GPT2LMHeadModel
    np.testing.assert_array_equal(
        loaded(input_ids=ids).logits.numpy(), model(input_ids=ids).logits.numpy()
    )


def test_saved_model_export_loads_without_our_packages(tmp_path, rng):
    model, _ = make_model("lm")
    ids = ids_like(rng, (2, 5))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    model.export_serving(tmp_path / "serving")
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    code = textwrap.dedent(f"""
        import sys
        for name in ("gpt2_tf", "gpt2_core", "keras"):
            sys.modules[name] = None  # importing any of them now fails
        import numpy as np, tensorflow as tf
        sm = tf.saved_model.load({str(tmp_path / "serving")!r})
        ids = tf.constant(np.load({str(tmp_path / "ids.npy")!r}))
        mask = tf.constant(np.load({str(tmp_path / "mask.npy")!r}))
        out = sm.signatures["serving_default"](input_ids=ids, attention_mask=mask)
        np.save({str(tmp_path / "out.npy")!r}, out["logits"].numpy())
    """)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    want = model(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-5)


def test_save_and_from_pretrained(tmp_path, rng):
    model, _ = make_model("lm")
    ids = ids_like(rng, (1, 6))
    want = model(input_ids=ids).logits.numpy()
    model.save_pretrained(tmp_path / "ckpt", max_shard_size=20_000)  # forces sharding
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").exists()
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(again(input_ids=ids).logits.numpy(), want)
    half = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt", dtype="bf16")
    assert half.weights[0].dtype == "bfloat16"
    base = GPT2Model.from_pretrained(tmp_path / "ckpt")  # head checkpoint into the base model
    np.testing.assert_allclose(
        base(input_ids=ids).last_hidden_state.numpy(),
        model.transformer(input_ids=ids).last_hidden_state.numpy(),
        atol=1e-6,
    )
    cls = GPT2ForSequenceClassification.from_pretrained(tmp_path / "ckpt", num_labels=2)
    assert cls(input_ids=ids).logits.shape == (1, 2)
    assert np.abs(cls.score.kernel.numpy()).max() > 0  # new head got a random init


@pytest.mark.skipif(
    importlib.util.find_spec("gpt2_core.formats.tf_h5") is None,
    reason="gpt2_core.formats.tf_h5 (the core h5 reader/writer) is not there yet",
)
def test_tf_h5_round_trip(tmp_path, rng):
    model, _ = make_model("lm")
    ids = ids_like(rng, (1, 6))
    model.save_pretrained(tmp_path / "h5", tf_h5=True)
    assert (tmp_path / "h5" / "tf_model.h5").exists()
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "h5", prefer="tf")
    np.testing.assert_allclose(
        again(input_ids=ids).logits.numpy(), model(input_ids=ids).logits.numpy(), atol=1e-6
    )
