"""GPT-2 tokenizers: exact ids (golden file from transformers 4.57.6), round trips, bad input.

The API surface (padding, tensors, offsets, saving ...) is in test_tokenizer_api.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_core import tokenizer as slow_module
from gpt2_core.tokenizer import GPT2Tokenizer
from gpt2_core.tokenizer_fast import GPT2TokenizerFast

GOLDEN = Path(__file__).parents[1] / "fixtures" / "tokenizer" / "golden_ids.json"
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text("utf-8"))


@pytest.fixture(scope="module")
def slow() -> GPT2Tokenizer:
    return GPT2Tokenizer.from_pretrained("gpt2")


@pytest.fixture(scope="module")
def fast() -> GPT2TokenizerFast:
    return GPT2TokenizerFast.from_pretrained("gpt2")


@pytest.fixture(scope="module", params=["slow", "fast"])
def tok(request, slow, fast):
    return {"slow": slow, "fast": fast}[request.param]


# -- known ids and the golden file -------------------------------------------------------------


def test_known_ids(tok):
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" Hello world")["input_ids"] == [18435, 995]
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert tok.encode(EOT) == [50256]
    assert tok.encode("") == []
    assert tok.decode([15496, 995]) == "Hello world"
    assert len(tok) == tok.vocab_size == 50257
    assert tok.eos_token == tok.bos_token == tok.unk_token == EOT
    assert tok.eos_token_id == 50256 and tok.pad_token is None and tok.pad_token_id is None
    assert tok.all_special_ids == [50256]
    assert tok.model_max_length == 1024


def test_golden_file_is_current(golden):
    assert golden["versions"]["transformers"] == "4.57.6"
    assert golden["vocab_md5"] == {
        "vocab.json": "e96f267f54de31ec5eae10a86a3556f2",
        "merges.txt": "75a37753dd7a28a2c5df80c28bf06e4e",
    }
    assert len(golden["cases"]) >= 300


def test_golden_ids(tok, golden):
    wrong = [
        c["text"][:60] for c in golden["cases"] if tok.encode(c["text"], verbose=False) != c["ids"]
    ]
    assert not wrong, f"{len(wrong)} texts give other ids than transformers: {wrong[:5]}"


def test_golden_round_trip(tok, golden):
    wrong = [c["text"][:60] for c in golden["cases"] if tok.decode(c["ids"]) != c["text"]]
    assert not wrong, wrong[:5]


def test_golden_batch_equals_single(tok, golden):
    texts = [c["text"] for c in golden["cases"]]
    assert tok(texts, verbose=False)["input_ids"] == [c["ids"] for c in golden["cases"]]


def test_golden_offsets(fast, golden):
    texts = [c["text"] for c in golden["cases"]]
    enc = fast(texts, return_offsets_mapping=True, verbose=False)
    assert enc["input_ids"] == [c["ids"] for c in golden["cases"]]
    assert [[list(o) for o in offs] for offs in enc["offset_mapping"]] == [
        c["offsets"] for c in golden["cases"]
    ]


def test_golden_add_prefix_space(slow, fast, golden):
    for c in golden["add_prefix_space"]:
        assert slow.encode(c["text"], add_prefix_space=True) == c["slow"], c["text"]
        assert fast.encode(c["text"], add_prefix_space=True) == c["fast"], c["text"]
        # the tokenizers path (offsets) and the tiktoken path agree
        assert (
            fast(c["text"], add_prefix_space=True, return_offsets_mapping=True)["input_ids"]
            == c["fast"]
        ), c["text"]
    aps = GPT2TokenizerFast.from_pretrained("gpt2", add_prefix_space=True)
    assert [aps.encode(c["text"]) for c in golden["add_prefix_space"]] == [
        c["fast"] for c in golden["add_prefix_space"]
    ]


def test_golden_split_into_words(slow, fast, golden):
    for c in golden["split_into_words"]:
        assert slow(c["words"], is_split_into_words=True)["input_ids"] == c["slow"], c["words"]
        enc = fast(c["words"], is_split_into_words=True, return_offsets_mapping=True)
        assert enc["input_ids"] == c["fast"], c["words"]
        assert [list(o) for o in enc["offset_mapping"]] == c["offsets"]
        assert enc.word_ids() == c["word_ids"]


# -- properties ----------------------------------------------------------------------------------

TRICKY = [
    "'s",
    "'S",
    "'ll",
    "'",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    "a",
    "Z",
    "é",
    "e\u0301",
    "1",
    "٣",
    ".",
    "...",
    "😀",
    "👨‍👩‍👧",
    "🇬🇧",
    "你好",
    "שלום",
    "\x00",
    "\u200d",
    "\ufeff",
    EOT,
]
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.lists(st.sampled_from(TRICKY), max_size=25).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_round_trip_and_slow_equals_fast(slow, fast, text):
    ids = fast.encode(text)
    assert slow.encode(text) == ids
    assert fast.decode(ids) == text
    assert slow.decode(ids) == text


def test_long_word_merge_matches_simple_merge(slow):
    """The heap-based merge of long words gives exactly the pass-by-pass result."""
    rng = random.Random(0)
    table = slow._byte_table
    words = ["a" * 40, "ab" * 20, "aaab" * 10, "Ġ" * 30, "😀" * 10]
    alphabets = ["ab", "abc ", "etaoin shrdlu", "0123456789", "😀é中 a"]
    for _ in range(300):
        alpha = rng.choice(alphabets)
        words.append("".join(rng.choice(alpha) for _ in range(rng.randint(2, 45))))
    for w in words:
        symbols = w.encode("utf-8").decode("latin-1").translate(table)
        if len(symbols) <= slow_module._LONG_WORD:
            assert slow._merge_long(symbols) == slow._merge(symbols), w


def test_cache_limit_keeps_ids(monkeypatch):
    tok = GPT2Tokenizer.from_pretrained("gpt2")
    monkeypatch.setattr(slow_module, "_CACHE_LIMIT", 5)
    text = "one two three four five six seven eight nine ten one two three"
    assert tok.encode(text) == tok.encode(text) == GPT2TokenizerFast().encode(text)
    assert len(tok.cache) <= 5


def test_default_constructor_uses_shipped_vocab():
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]
    assert GPT2TokenizerFast().encode("Hello world") == [15496, 995]


def test_custom_vocab_uses_tokenizers_engine(tmp_path):
    """A non-GPT-2 vocabulary is not run through tiktoken (its merge rule differs)."""
    vocab = {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "bc": 5, "abc": 6, EOT: 7}
    merges = [("a", "b"), ("b", "c"), ("ab", "c")]
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        t = cls(vocab, merges)
        assert not t.is_gpt2_vocab
        assert t.encode("abc") == [6] and t.encode("abcb") == [6, 1]
        assert t.encode("bca") == [5, 0]
        assert t.encode(f"a{EOT}c") == [0, 7, 2]
        assert t.decode([6, 3, 4]) == "abc ab"
    assert GPT2TokenizerFast(vocab, merges)("abc", return_offsets_mapping=True)[
        "offset_mapping"
    ] == [(0, 3)]


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [123, None, b"bytes", 1.5, {"text": "x"}])
def test_wrong_input_types(tok, bad):
    with pytest.raises(TypeError):
        tok(bad)
    with pytest.raises(TypeError):
        tok.encode(bad)


def test_wrong_types_inside_batch(tok):
    with pytest.raises(TypeError, match=r"text\[1\]"):
        tok(["ok", 5])
    with pytest.raises(TypeError):
        tok.encode(["a", "list"])
    with pytest.raises(TypeError, match="bytes"):
        tok(b"raw bytes")
    with pytest.raises(TypeError, match=r"text\[0\]\[1\]"):
        tok([["a", 3]], is_split_into_words=True)


def test_lone_surrogates_rejected(tok):
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at position 3"):
        tok.encode("abc\ud800def")
    with pytest.raises(ValueError, match=r"text\[1\].*position 0"):
        tok(["fine", "\udfff"])
    with pytest.raises(ValueError, match="surrogate"):
        tok(["w", "x\udc80"], is_split_into_words=True)


def test_decode_rejects_ids_outside_vocab(tok):
    for bad in (50257, -1, 10**9):
        with pytest.raises(ValueError, match=f"token id {bad} is not in the vocabulary"):
            tok.decode([15496, bad])
    with pytest.raises(ValueError, match="50300"):
        tok.convert_ids_to_tokens([50300])
    with pytest.raises(TypeError):
        tok.decode("Hello")
    with pytest.raises(TypeError):
        tok.decode([1.5])
    with pytest.raises(TypeError, match="batch_decode"):
        tok.decode([[1, 2], [3]])


def test_padding_without_pad_token(tok):
    with pytest.raises(ValueError, match="Asking to pad but the tokenizer does not have a padding"):
        tok(["a", "b c"], padding=True)
    with pytest.raises(ValueError, match="padding token"):
        tok.pad({"input_ids": [[1], [1, 2]]})


def test_bad_options(tok):
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle")
    with pytest.raises(ValueError, match="padding_side"):
        tok("a", padding_side="up")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="mx")
    with pytest.raises(TypeError):
        tok("a", not_an_option=True)
