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


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 20 + "b",
        "\n" * 30,
        "x\n\n" + "\t " * 12 + "y",
        " " * 9 + "<|endoftext|>" + " " * 9,
        "end" + "\u3000" * 10,
        "  lead" + " " * 10 + "\n",
        "q" + " " * 10 + "'s" + " " * 10 + "9",
        "\r\n" * 10 + "z",
        " " * 8,
    ],
)
@pytest.mark.parametrize("aps", [False, True])
def test_long_run_splitting_is_exact(toks, monkeypatch, text, aps):
    """The split logic on short runs (limit lowered to 8) is invisible: the same ids as
    tiktoken on the whole text, and as the slow tokenizer."""
    fast, slow = toks
    whole = fast.encode(text, add_prefix_space=aps)
    monkeypatch.setattr(tf_mod, "_LONG_WS", 8)
    monkeypatch.setattr(
        tf_mod, "_LONG_WS_RE", re.compile(tf_mod._LONG_WS_RE.pattern.replace("{65536,}", "{8,}"))
    )
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


# -- the lookahead-free pattern over cut text (tokenizer_fast._mark_cuts) ---------------------

_PIECES = [
    " ",
    " ",
    " ",
    "\n",
    "\t",
    "\r\n",
    "\u3000",
    "\xa0",
    "\x1c",
    "\x85",
    "a",
    "Z",
    "é",
    "7",
    "'",
    "s",
    "ll",
    ".",
    "!",
    "日",
    "😀",
    "<|endoftext|>",
    "<|endoftext|",
    tf_mod._CUT,
]


@pytest.mark.parametrize("numpy_ids", [True, False])
@pytest.mark.parametrize("special", [True, False])
def test_cut_pattern_gives_gpt2_patterns_ids(monkeypatch, special, numpy_ids):
    """Random whitespace-heavy strings: the cut text under the pattern without ``\\s+(?!\\S)``
    gives tiktoken's ids under GPT-2's own pattern (\\x1c is \\s for Python's re, not Rust's)."""
    import random

    monkeypatch.setattr(tf_mod, "_NUMPY_IDS", numpy_ids)
    gpt2 = tf_mod.gpt2_tiktoken_encoding()
    rng = random.Random(14)
    for _ in range(1500):
        s = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 30)))
        want = (
            gpt2.encode(s, allowed_special={"<|endoftext|>"}, disallowed_special=())
            if special
            else gpt2.encode_ordinary(s)
        )
        assert tf_mod._tiktoken_ids(s, special) == want, s


def test_cuts_go_before_the_last_space_of_a_run():
    cut = tf_mod._CUT
    assert tf_mod._mark_cuts("a  b\n\n\nc d", True) == (f"a {cut} b\n\n{cut}\nc d", 2)
    assert tf_mod._mark_cuts("end  ", True) == ("end  ", 0)  # a run at the end: no cut
    # before a special <|endoftext|> tiktoken cuts itself; before an ordinary one we cut
    assert tf_mod._mark_cuts("a  <|endoftext|>", True) == ("a  <|endoftext|>", 0)
    assert tf_mod._mark_cuts("a  <|endoftext|>", False) == (f"a {cut} <|endoftext|>", 1)


def test_text_holding_the_cut_marker_encodes_like_the_slow_tokenizer(toks):
    fast, slow = toks
    text = f"a  {tf_mod._CUT}  b\n\n  x<|endoftext|>  y"
    assert fast.encode(text) == slow.encode(text)
    assert fast.decode(fast.encode(text)) == text


@pytest.mark.parametrize("offset", range(12))
def test_long_run_prescan_finds_every_run(toks, monkeypatch, offset):
    """A run of _LONG_WS characters anywhere is found (the strided look before the regex):
    tiktoken is never given one."""
    fast, slow = toks
    monkeypatch.setattr(tf_mod, "_LONG_WS", 8)
    monkeypatch.setattr(
        tf_mod, "_LONG_WS_RE", re.compile(tf_mod._LONG_WS_RE.pattern.replace("{65536,}", "{8,}"))
    )
    inner = tf_mod._tiktoken_ids

    def checked(text, special):
        assert not re.search(r"[ \t\n]{8}", text), text
        return inner(text, special)

    monkeypatch.setattr(tf_mod, "_tiktoken_ids", checked)
    text = "x" * offset + " " * 8 + "y" * 20
    assert fast.encode(text) == slow.encode(text)


def test_balanced_chunks_keep_order_and_size():
    texts = ["x" * 1000] + [f"t{i}" for i in range(50)] + ["y" * 300] * 5
    chunks = tf_mod._balanced_chunks(texts, 8, sum(map(len, texts)))
    assert [t for c in chunks for t in c] == texts
    assert 1 < len(chunks) <= 8 and chunks[0] == ["x" * 1000]


def test_batch_runs_chunks_on_threads(monkeypatch):
    """encode_batch hands num_threads workers a few contiguous chunks, not one task per text."""
    seen = []

    class Pool(tf_mod.ThreadPoolExecutor):
        def __init__(self, workers):
            super().__init__(workers)
            seen.append(workers)

        def map(self, fn, chunks):
            chunks = list(chunks)
            seen.append(len(chunks))
            return super().map(fn, chunks)

    monkeypatch.setattr(tf_mod, "ThreadPoolExecutor", Pool)
    texts = [f"Text {i}:\n    " + "word  " * (i % 40) for i in range(600)]
    two = GPT2TokenizerFast(num_threads=2)
    assert two.encode_batch(texts) == [two.encode(t) for t in texts]
    assert seen == [2, 8]  # 2 workers, 2 * _CHUNKS_PER_THREAD chunks


@pytest.mark.parametrize("special", [True, False])
def test_numpy_cut_positions_equal_the_regex_scan(special):
    """Long texts find their cuts with numpy: the same positions as the ``re`` scan (ASCII and
    non-ASCII texts, code points above the whitespace table, runs at both ends)."""
    import random

    rng = random.Random(15)
    pieces = [*_PIECES, "\U0010fffd", "\u3001", "\u2000\u200a", "x" * 40, "    ", "\n\n"]
    for _ in range(300):
        s = "".join(rng.choice(pieces) for _ in range(rng.randint(200, 400)))
        s = s.ljust(tf_mod._NUMPY_CUTS_MIN, rng.choice(" a"))
        want = [m.end() for m in tf_mod._CUT_AT[special].finditer(s)]
        assert tf_mod._cut_positions(s, special) == want, s
