"""Any valid string encodes, with the slow tokenizer's ids: whitespace runs past tiktoken's
regex stack limit, Rust panics (a BaseException) fall back to the Python BPE; decode refuses
non-integer ids clearly."""

import re

import pytest

from gpt2_core import tokenizer_fast as tf_mod
from gpt2_core.tokenizer import GPT2Tokenizer
from gpt2_core.tokenizer_fast import GPT2TokenizerFast


@pytest.fixture(scope="module")
def toks():
    return GPT2TokenizerFast(), GPT2Tokenizer()


def test_a_million_spaces_encode_like_the_slow_tokenizer(toks):
    fast, slow = toks
    text = "code:" + " " * 1_000_000 + "x"  # tiktoken alone: "Max stack size exceeded"
    assert fast.encode(text) == slow.encode(text)


@pytest.mark.parametrize("text", [
    "a" + " " * 20 + "b", "\n" * 30, "x\n\n" + "\t " * 12 + "y", " " * 9 + "<|endoftext|>" + " " * 9,
    "end" + "\u3000" * 10, "  lead" + " " * 10 + "\n", "q" + " " * 10 + "'s" + " " * 10 + "9",
    "\r\n" * 10 + "z", " " * 8,
])
@pytest.mark.parametrize("aps", [False, True])
def test_long_run_splitting_is_exact(toks, monkeypatch, text, aps):
    """The split logic on short runs (limit lowered to 8) is invisible: the same ids as
    tiktoken on the whole text, and as the slow tokenizer."""
    fast, slow = toks
    whole = fast.encode(text, add_prefix_space=aps)
    monkeypatch.setattr(tf_mod, "_LONG_WS", 8)
    monkeypatch.setattr(tf_mod, "_LONG_WS_RE", re.compile(
        tf_mod._LONG_WS_RE.pattern.replace("{65536,}", "{8,}")))
    assert fast.encode(text, add_prefix_space=aps) == whole
    if not aps:  # (add_prefix_space differs between the two by design, see docs/tokenizer.md)
        assert whole == slow.encode(text)


def test_a_rust_panic_falls_back_to_the_python_bpe(toks, monkeypatch):
    fast, slow = toks

    class PanicException(BaseException):  # what pyo3 raises: not an Exception
        pass

    def panic(*a, **k):
        raise PanicException("called `Result::unwrap()` on an `Err` value: StackOverflow")

    monkeypatch.setattr(GPT2TokenizerFast, "_encode_text_engines", panic)
    text = "Hello <|endoftext|> world,\n\n  it's 2024!"
    assert fast.encode(text) == slow.encode(text)
    assert fast(text)["input_ids"] == slow(text)["input_ids"]


def test_other_errors_are_not_swallowed(toks, monkeypatch):
    fast, _ = toks

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(GPT2TokenizerFast, "_encode_text_engines", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fast.encode("x")


@pytest.mark.parametrize("bad", [[None], [True], [1.5], ["a"], [1, None]])
def test_decode_refuses_non_integer_ids(toks, bad):
    for tok in toks:
        with pytest.raises(TypeError, match="token ids must be integers, got"):
            tok.decode(bad)
