"""GPT-2 tokenizers: the transformers-compatible API (padding, truncation, tensors, offsets,
special and added tokens, save/load), for both classes unless a test says otherwise."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest

from gpt2_core import hub
from gpt2_core.tokenizer import GPT2Tokenizer
from gpt2_core.tokenizer_fast import GPT2TokenizerFast

EOT = "<|endoftext|>"
CLASSES = [GPT2Tokenizer, GPT2TokenizerFast]


@pytest.fixture(params=CLASSES, ids=["slow", "fast"])
def cls(request):
    return request.param


@pytest.fixture
def tok(cls):
    """A fresh tokenizer with pad = eos, as users set it for batches."""
    t = cls.from_pretrained("gpt2")
    t.pad_token = t.eos_token
    return t


# -- padding and attention masks -----------------------------------------------------------------


def test_pad_token_follows_eos(cls):
    t = cls.from_pretrained("gpt2")
    t.pad_token = t.eos_token
    assert t.pad_token == EOT and t.pad_token_id == 50256
    t.pad_token_id = 13  # "."
    assert t.pad_token == "." and t.pad_token_id == 13
    t.pad_token = None
    assert t.pad_token_id is None
    with pytest.raises(ValueError, match="add_special_tokens"):
        t.pad_token = "[PAD]"  # not in the vocabulary


def test_padding_right_and_left(tok):
    enc = tok(["Hi", "Hello world"], padding=True)
    assert enc.input_ids == [[17250, 50256], [15496, 995]]
    assert enc.attention_mask == [[1, 0], [1, 1]]
    enc = tok(["Hi", "Hello world"], padding="longest", padding_side="left")
    assert enc["input_ids"] == [[50256, 17250], [15496, 995]]
    assert enc["attention_mask"] == [[0, 1], [1, 1]]
    tok.padding_side = "left"
    assert tok(["Hi", "Hello world"], padding=True).attention_mask == [[0, 1], [1, 1]]
    with pytest.raises(ValueError):
        tok.padding_side = "center"


def test_padding_max_length_and_multiple(tok):
    enc = tok(["Hi", "Hello world"], padding="max_length", max_length=4)
    assert enc.input_ids == [[17250, 50256, 50256, 50256], [15496, 995, 50256, 50256]]
    assert enc.attention_mask == [[1, 0, 0, 0], [1, 1, 0, 0]]
    enc = tok("Hi", padding="max_length", max_length=3)  # one text: flat lists
    assert enc.input_ids == [17250, 50256, 50256] and enc.attention_mask == [1, 0, 0]
    enc = tok(["Hi", "Hello world"], padding=True, pad_to_multiple_of=8)
    assert [len(x) for x in enc.input_ids] == [8, 8]
    assert tok("Hi", padding=True).input_ids == [17250]  # longest of one: nothing to pad
    assert tok(["a", "b c"], padding=False).input_ids == [[64], [65, 269]]
    assert "attention_mask" not in tok("Hi", return_attention_mask=False)


def test_pad_method(tok):
    features = [{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]
    out = tok.pad(features, return_tensors="np")
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 50256, 50256]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    out = tok.pad(
        {"input_ids": [[1], [2, 3]], "attention_mask": [[1], [1, 1]]}, padding_side="left"
    )
    assert out.input_ids == [[50256, 1], [2, 3]] and out.attention_mask == [[0, 1], [1, 1]]


# -- truncation ----------------------------------------------------------------------------------


def test_truncation(tok):
    text = "one two three four five"
    ids = tok.encode(text)
    assert tok(text, truncation=True, max_length=3).input_ids == ids[:3]
    tok.truncation_side = "left"
    assert tok(text, truncation=True, max_length=3).input_ids == ids[-3:]
    tok.truncation_side = "right"
    enc = tok([text, "x"], truncation=True, max_length=2, padding="max_length")
    assert enc.input_ids == [ids[:2], [87, 50256]]
    assert tok.encode(text, max_length=2, truncation=True) == ids[:2]


def test_truncation_of_pairs(tok):
    a, b = "a b c d e f", "x y"
    ia, ib = tok.encode(a), tok.encode(b)
    assert tok(a, b).input_ids == ia + ib  # GPT-2 pairs are plain concatenation
    assert tok(a, b, truncation="longest_first", max_length=5).input_ids == ia[:3] + ib
    assert tok(a, b, truncation="only_second", max_length=7).input_ids == ia + ib[:1]
    assert tok(a, b, truncation="only_first", max_length=4).input_ids == ia[:2] + ib
    enc = tok(a, b, return_token_type_ids=True)
    assert enc.token_type_ids == [0] * len(ia) + [1] * len(ib)
    batch = tok([(a, b), ("x", "y")])
    assert batch.input_ids == [ia + ib, tok.encode("x") + tok.encode("y")]
    assert tok(["x", "z"], ["y", "w"]).input_ids == [[87, 88], [89, 86]]


def test_implicit_truncation_warns(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="gpt2_core"):
        assert tok("one two three", max_length=2).input_ids == tok.encode("one two")
    assert "Truncation was not explicitly activated" in caplog.text


def test_too_long_warning_once(tok, caplog):
    text = "word" + " word" * 1099  # 1100 tokens
    with caplog.at_level(logging.WARNING, logger="gpt2_core"):
        assert len(tok.encode(text)) > 1024
        tok(text)
    assert (
        caplog.text.count(
            "Token indices sequence length is longer than the specified "
            "maximum sequence length for this model (1100 > 1024)"
        )
        == 1
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpt2_core"):
        assert len(tok(text, truncation=True).input_ids) == 1024  # to model_max_length
    assert "longer than" not in caplog.text


# -- tensors -------------------------------------------------------------------------------------


def test_tensors_numpy(tok):
    enc = tok(["Hi", "Hello world"], padding=True, return_tensors="np")
    assert isinstance(enc.input_ids, np.ndarray) and enc.input_ids.dtype == np.int64
    assert enc.input_ids.shape == enc.attention_mask.shape == (2, 2)
    single = tok("Hello world", return_tensors="np")
    assert single["input_ids"].tolist() == [[15496, 995]]  # a batch of one
    assert tok.encode("Hello world", return_tensors="np").shape == (1, 2)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["Hi", "Hello world"], return_tensors="np")


@pytest.mark.parametrize("kind,module", [("pt", "torch"), ("tf", "tensorflow"), ("jax", "jax")])
def test_tensors_frameworks(kind, module):
    fw = pytest.importorskip(module)
    tok = GPT2TokenizerFast.from_pretrained("gpt2", pad_token=EOT, padding_side="left")
    enc = tok(["Hi", "Hello world"], padding=True, return_tensors=kind)
    ids = np.asarray(enc["input_ids"])
    assert ids.tolist() == [[50256, 17250], [15496, 995]]
    assert np.asarray(enc.attention_mask).tolist() == [[0, 1], [1, 1]]
    if kind == "pt":
        assert enc.input_ids.dtype == fw.int64
        assert enc.to("cpu").input_ids.device.type == "cpu"
    elif kind == "tf":
        assert enc.input_ids.dtype == fw.int32
    else:
        assert enc.input_ids.dtype == np.int32
    assert tok.batch_decode(enc["input_ids"], skip_special_tokens=True) == ["Hi", "Hello world"]
    assert tok.decode(enc["input_ids"][1]) == "Hello world"


# -- offsets and pre-split words -----------------------------------------------------------------


def test_offsets(cls):
    t = cls.from_pretrained("gpt2", pad_token=EOT)
    if cls is GPT2Tokenizer:
        with pytest.raises(NotImplementedError, match="GPT2TokenizerFast"):
            t("Hello", return_offsets_mapping=True)
        return
    text = "Hello world, naïve 😀!"
    enc = t(text, return_offsets_mapping=True)
    # transformers' fast GPT-2 keeps the leading space in a token's span (trim_offsets=False);
    # the bytes of one character split over two tokens share its span
    assert enc.offset_mapping == [(0, 5), (5, 11), (11, 12), (12, 18), (18, 20), (19, 20), (20, 21)]
    assert enc.word_ids() == [0, 1, 2, 3, 4, 4, 4]  # " 😀!" is one pre-token
    batch = t(["Hi", "Hello world"], padding=True, return_offsets_mapping=True, return_tensors="np")
    assert batch["offset_mapping"].shape == (2, 2, 2)
    assert batch["offset_mapping"][0].tolist() == [[0, 2], [0, 0]]


def test_split_into_words(cls):
    t = cls.from_pretrained("gpt2")
    words = ["Hello", "world", "again"]
    ids = t(words, is_split_into_words=True).input_ids
    assert ids == t.encode(" Hello world again")  # every word gets a leading space
    batch = t([words, ["x"]], is_split_into_words=True)
    assert batch.input_ids == [ids, t.encode(" x")]
    if cls is GPT2TokenizerFast:
        words = ["Tokenizers", "split", "antidisestablishmentarianism"]
        enc = t([words, ["a"]], is_split_into_words=True, return_offsets_mapping=True)
        word_ids, offsets = enc.word_ids(0), enc.offset_mapping[0]
        assert word_ids == sorted(word_ids) and set(word_ids) == {0, 1, 2}
        assert len(word_ids) > 3 and enc.word_ids(1) == [0]
        for w, word in enumerate(words):  # offsets are within each word
            spans = [o for o, i in zip(offsets, word_ids) if i == w]
            assert spans[0][0] == 0 and spans[-1][1] == len(word)
    else:
        with pytest.raises(ValueError, match="word_ids"):
            batch.word_ids()


def test_add_prefix_space(cls):
    t = cls.from_pretrained("gpt2", add_prefix_space=True)
    assert t.encode("Hello world") == [18435, 995]
    assert t.encode("Hello world", add_prefix_space=False) == [15496, 995]
    assert cls.from_pretrained("gpt2").encode("Hello", add_prefix_space=True) == [18435]


# -- special and added tokens --------------------------------------------------------------------


def test_endoftext_in_text(cls):
    t = cls.from_pretrained("gpt2")
    assert t.encode(f"Hello{EOT} world") == [15496, 50256, 995]
    assert t.decode([15496, 50256, 995]) == f"Hello{EOT} world"
    assert t.decode([15496, 50256, 995], skip_special_tokens=True) == "Hello world"
    assert t.convert_ids_to_tokens([15496, 50256]) == ["Hello", EOT]
    assert t.convert_ids_to_tokens(995) == "Ġworld"
    assert t.convert_tokens_to_ids(["Hello", "Ġworld", EOT]) == [15496, 995, 50256]
    assert t.convert_tokens_to_ids("not-a-token") == 50256  # unk, as transformers
    assert t.convert_tokens_to_string(["Hello", "Ġworld"]) == "Hello world"


def test_add_tokens(cls):
    t = cls.from_pretrained("gpt2")
    assert t.add_tokens(["<ctrl>", "new token"]) == 2
    assert t.add_tokens("<ctrl>") == 0  # already there
    assert len(t) == 50259 and t.vocab_size == 50257
    assert t.convert_tokens_to_ids(["<ctrl>", "new token"]) == [50257, 50258]
    ids = t.encode("a<ctrl>b new token c")
    assert ids == [64, 50257, 65, 220, 50258, 269]
    assert t.decode(ids) == "a<ctrl>b new token c"
    assert t.decode(ids, skip_special_tokens=True) == "a<ctrl>b new token c"  # not special
    assert t.get_vocab()["<ctrl>"] == 50257
    assert t.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<x>"]}) == 2
    assert t.pad_token == "<pad>" and t.pad_token_id == 50259
    assert t.all_special_ids == [50256, 50259, 50260]
    assert t.decode(t.encode("<x>hi<pad>"), skip_special_tokens=True) == "hi"
    enc = t(["hi", "a b c"], padding=True)
    assert enc.input_ids[0] == [5303, 50259, 50259]
    if cls is GPT2TokenizerFast:
        offs = t("a<ctrl>b", return_offsets_mapping=True)
        assert offs.input_ids == [64, 50257, 65] and offs.offset_mapping == [(0, 1), (1, 7), (7, 8)]


def test_add_bos_token(cls):
    t = cls.from_pretrained("gpt2", add_bos_token=True)
    assert t.encode("Hello world") == [50256, 15496, 995]
    assert t.encode("Hello world", add_special_tokens=False) == [15496, 995]
    enc = t("Hi", "there", return_special_tokens_mask=True)
    if cls is GPT2Tokenizer:  # transformers' slow: bos a bos b; fast: bos a b
        assert enc.input_ids == [50256, 17250, 50256, 8117]
        assert enc.special_tokens_mask == [1, 0, 1, 0]
    else:
        assert enc.input_ids == [50256, 17250, 8117]
        assert enc.special_tokens_mask == [1, 0, 0]
    assert t(["Hi"], return_length=True).length == [2]


# -- decode --------------------------------------------------------------------------------------


def test_decode_options(cls):
    t = cls.from_pretrained("gpt2")
    ids = t.encode("Hello , world ! is n't")
    assert t.decode(ids) == "Hello , world ! is n't"  # clean-up is off by default (4.57)
    assert t.decode(ids, clean_up_tokenization_spaces=True) == "Hello, world! isn't"
    snowman = t.encode("☃")
    assert len(snowman) > 1
    assert t.decode(snowman[:1]) == "\ufffd"  # a cut character: errors="replace"
    assert t.decode(np.array(t.encode("Hello world"))) == "Hello world"
    assert t.decode(15496) == "Hello"
    assert t.batch_decode(np.array([[15496, 995], [18435, 995]])) == ["Hello world", " Hello world"]


# -- save / load ---------------------------------------------------------------------------------


def test_save_pretrained_round_trip(cls, tmp_path):
    t = cls.from_pretrained("gpt2", padding_side="left", add_prefix_space=True)
    t.pad_token = t.eos_token
    t.add_tokens(["<ctrl>"])
    files = t.save_pretrained(tmp_path / "tok")
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    expected = ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    if cls is GPT2TokenizerFast:
        expected.insert(2, "tokenizer.json")
    assert names == expected
    d = tmp_path / "tok"
    vocab_text = (d / "vocab.json").read_text("utf-8")
    assert vocab_text.startswith('{\n  "!": 0,\n  "!!": 3228,') and vocab_text.endswith("}\n")
    assert (d / "merges.txt").read_text("utf-8").startswith("#version: 0.2\nĠ t\nĠ a\n")
    config = json.loads((d / "tokenizer_config.json").read_text("utf-8"))
    assert config["model_max_length"] == 1024 and config["pad_token"] == EOT
    assert config["added_tokens_decoder"]["50257"]["content"] == "<ctrl>"
    text = "Hello<ctrl> world" + EOT
    for other in CLASSES:
        u = other.from_pretrained(d)
        assert (u.padding_side, u.add_prefix_space, u.pad_token, len(u)) == (
            "left",
            True,
            EOT,
            50258,
        )
        assert u.encode(text) == t.encode(text)
        assert u(["a", "b c"], padding=True).input_ids == t(["a", "b c"], padding=True).input_ids
    assert not list(d.glob("*.tmp"))  # atomic writes leave no temporaries


def test_fast_loads_tokenizer_json_alone(tmp_path):
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).unlink()
    for cls in CLASSES:
        t = cls.from_pretrained(tmp_path)
        assert t.encode(f"Hello world{EOT}") == [15496, 995, 50256]
        assert t.is_gpt2_vocab


def test_save_vocabulary_prefix(cls, tmp_path):
    t = cls.from_pretrained("gpt2")
    paths = t.save_vocabulary(tmp_path, filename_prefix="mine")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["mine-vocab.json", "mine-merges.txt"]
    u = cls(tmp_path / "mine-vocab.json", tmp_path / "mine-merges.txt")
    assert u.encode("Hello world") == [15496, 995]
    with pytest.raises(NotADirectoryError):
        t.save_vocabulary(tmp_path / "missing")


@pytest.mark.parametrize(
    "name",
    [
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "distilgpt2",
        "openai-community/gpt2",
        "distilbert/distilgpt2",
    ],
)
def test_presets_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for cls in CLASSES:
        t = cls.from_pretrained(name)
        assert t.encode("Hello world") == [15496, 995] and t.model_max_length == 1024


def test_unknown_ids_and_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="local directory"):
        GPT2Tokenizer.from_pretrained("someone/not-a-preset")
    with pytest.raises(FileNotFoundError):
        GPT2TokenizerFast.from_pretrained(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        GPT2TokenizerFast.from_pretrained(tmp_path)


# -- misc ----------------------------------------------------------------------------------------


def test_pickle(cls):
    t = cls.from_pretrained("gpt2", pad_token=EOT)
    t.add_tokens(["<ctrl>"])
    t("warm", return_offsets_mapping=cls is GPT2TokenizerFast)  # builds the engines
    u = pickle.loads(pickle.dumps(t))
    assert u.encode("a<ctrl>b Hello") == t.encode("a<ctrl>b Hello")
    enc = pickle.loads(pickle.dumps(t(["a", "b c"], padding=True)))
    assert enc.input_ids == [[64, 50256], [65, 269]]


def test_fast_batch_threads_match_sequential():
    texts = [f"Document {i}: " + "lorem ipsum dolor sit amet, " * (i % 50) for i in range(400)]
    one = GPT2TokenizerFast.from_pretrained("gpt2", num_threads=1)
    two = GPT2TokenizerFast.from_pretrained("gpt2", num_threads=2)
    expected = [one.encode(x) for x in texts]
    assert two.encode_batch(texts) == one.encode_batch(texts) == expected
    assert two(texts).input_ids == expected


def test_batch_encoding_attributes(tok):
    enc = tok(["a"], padding=True)
    assert enc.input_ids is enc["input_ids"]
    assert list(enc.keys()) == ["input_ids", "attention_mask"]
    with pytest.raises(AttributeError, match="token_type_ids"):
        enc.token_type_ids
    assert "GPT2Tokenizer" in repr(tok) and "padding_side='right'" in repr(tok)


def test_docstring_examples():
    import doctest

    from gpt2_core import tokenization, tokenizer, tokenizer_fast

    for module in (tokenization, tokenizer, tokenizer_fast):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_vocab_json_layout_is_transformers():
    from gpt2_core._vocab_files import dump_vocab

    vocab = {"b": 1, 'a"q': 0, "é\n": 2, "\u2028": 3, "\x00": 4, "Ġworld": 995}
    assert (
        dump_vocab(vocab) == json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


def test_trim_offsets_option(tmp_path):
    text = " Hello world  foo"
    default = GPT2TokenizerFast.from_pretrained("gpt2")
    assert default(text, return_offsets_mapping=True).offset_mapping[:2] == [(0, 6), (6, 12)]
    trim = GPT2TokenizerFast.from_pretrained("gpt2", trim_offsets=True)
    enc = trim(text, return_offsets_mapping=True)
    assert enc.input_ids == default.encode(text)
    assert [text[s:e] for s, e in enc.offset_mapping] == [" Hello", "world", "", "foo"]
    trim.save_pretrained(tmp_path)
    assert GPT2TokenizerFast.from_pretrained(tmp_path).trim_offsets
    assert GPT2Tokenizer.from_pretrained(tmp_path).encode(text) == enc.input_ids
