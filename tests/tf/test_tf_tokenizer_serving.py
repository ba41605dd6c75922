"""TFGPT2Tokenizer (in-graph BPE) against the golden ids, inside tf.function and after a
SavedModel reload; export_serving(with_tokenizer=True) loaded by plain TensorFlow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from gpt2_core import checkpoint
from gpt2_core.config import GPT2Config
from gpt2_core.init import random_state_dict
from gpt2_core.tokenizer_fast import GPT2TokenizerFast
from gpt2_tf import GPT2LMHeadModel, GPT2Model, TFGPT2Tokenizer

ROOT = Path(__file__).resolve().parents[2]
CASES = json.loads((ROOT / "tests/fixtures/tokenizer/golden_ids.json").read_text("utf-8"))["cases"]
# the cases whose pieces are short (the long random-Unicode ones take seconds of BPE steps)
SHORT = [c for c in CASES if len(c["text"].encode()) <= 200]


@pytest.fixture(scope="module")
def fast():
    return GPT2TokenizerFast.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def tok(fast):
    return TFGPT2Tokenizer.from_tokenizer(fast)


def test_golden_ids_inside_tf_function(tok):
    f = tf.function(lambda x: tok(x)["input_ids"])
    out = f(tf.constant([c["text"] for c in CASES])).to_list()
    bad = [(c["text"][:40], ids[:8], c["ids"][:8]) for c, ids in zip(CASES, out) if ids != c["ids"]]
    assert not bad, f"{len(bad)} of {len(CASES)} differ, e.g. {bad[:3]}"


def test_config_round_trip_padding_and_scalar(tok, fast):
    texts = ["Hello world", " a  b\n\nc's <|endoftext|>!", "x"]
    again = TFGPT2Tokenizer.from_config(tok.get_config())
    assert again(tf.constant(texts))["input_ids"].to_list() == [fast.encode(t) for t in texts]
    assert TFGPT2Tokenizer.from_pretrained("gpt2").special_tokens == ["<|endoftext|>"]
    assert tok(tf.constant("Hello world"))["input_ids"].numpy().tolist() == [15496, 995]
    right = TFGPT2Tokenizer.from_tokenizer(fast, pad_token_id=50256, max_length=3)
    out = right(tf.constant(["Hello world", "a b c d e"]))
    assert out["input_ids"].numpy().tolist() == [[15496, 995, 50256], [64, 275, 269]]
    assert out["attention_mask"].numpy().tolist() == [[1, 1, 0], [1, 1, 1]]
    left = TFGPT2Tokenizer.from_tokenizer(fast, pad_token_id=0, padding_side="left")
    out = left(tf.constant(["Hello world", "a b c"]))
    assert out["input_ids"].numpy().tolist() == [[0, 15496, 995], [64, 275, 269]]
    assert out["attention_mask"].numpy().tolist() == [[0, 1, 1], [1, 1, 1]]
    with pytest.raises(ValueError, match="max_length needs pad_token_id"):
        TFGPT2Tokenizer.from_tokenizer(fast, max_length=4)
    with pytest.raises(ValueError, match="merges must be 'a b' pairs"):
        TFGPT2Tokenizer({"a": 0}, ["abc"])
    with pytest.raises(ValueError, match=r"special tokens \['<x>'\] are not in the vocabulary"):
        TFGPT2Tokenizer({"a": 0}, [], special_tokens=["<x>"])


def test_golden_ids_after_saved_model_reload(tok, tmp_path):
    root = tf.Module()
    root.tables = tok.tables  # the lookup tables travel with the SavedModel
    root.tokenize = tf.function(
        lambda x: tok(x)["input_ids"].to_tensor(-1),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(root, str(tmp_path / "tok"))
    code = (
        f"import json, tensorflow as tf, sys\n"
        f"f = tf.saved_model.load({str(tmp_path / 'tok')!r}).tokenize\n"
        f"texts = json.loads(sys.stdin.read())\n"
        f"rows = f(tf.constant(texts)).numpy().tolist()\n"
        f"print(json.dumps([[i for i in r if i >= 0] for r in rows]))\n"
        f"print('gpt2_tf' in sys.modules)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([c["text"] for c in SHORT]),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ids_line, loaded_ours = p.stdout.strip().splitlines()[-2:]
    assert loaded_ours == "False"  # a process without this package
    assert json.loads(ids_line) == [c["ids"] for c in SHORT]


def test_export_serving_with_tokenizer_string_in_text_out(fast, tmp_path):
    cfg = GPT2Config(
        n_layer=2,
        n_embd=24,
        n_head=3,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    d = tmp_path / "ckpt"
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0, std=0.3), cfg, d, "lm")
    model = GPT2LMHeadModel.from_pretrained(d)
    model.export_serving(tmp_path / "serve", with_tokenizer=True, max_new_tokens=8)
    prompts = ["Hello world, my name is", "The quick brown fox"]  # different lengths: padded
    expected = []
    for text in prompts:
        ids = fast.encode(text)
        out = np.asarray(model.generate([ids], max_new_tokens=8))
        expected.append(fast.decode(out[0, len(ids) :], skip_special_tokens=True))
    code = (
        f"import json, tensorflow as tf, sys\n"
        f"f = tf.saved_model.load({str(tmp_path / 'serve')!r}).signatures['serving_default']\n"
        f"out = f(text=tf.constant({prompts!r}))['generated_text'].numpy()\n"
        f"print(json.dumps([t.decode() for t in out]))\n"
        f"print('gpt2_tf' in sys.modules)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    texts_line, loaded_ours = p.stdout.strip().splitlines()[-2:]
    assert loaded_ours == "False"
    assert json.loads(texts_line) == expected
    with pytest.raises(TypeError, match="needs a GPT2LMHeadModel"):
        GPT2Model(cfg).export_serving(tmp_path / "x", with_tokenizer=True)
    with pytest.raises(TypeError, match="apply with with_tokenizer=True only"):
        model.export_serving(tmp_path / "y", max_new_tokens=3)
