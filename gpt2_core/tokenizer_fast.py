r"""GPT2TokenizerFast: the same ids as GPT2Tokenizer, from Rust BPE engines.

Two engines, each used where it is best:

* **tiktoken** for plain ``encode`` / ``__call__`` on GPT-2's own vocabulary: an ``Encoding``
  built offline from the shipped vocab.json (token bytes -> rank = id, GPT-2's regex,
  ``<|endoftext|>`` = 50256); ``tiktoken.get_encoding`` is never called (it downloads). tiktoken
  ranks merged byte strings rather than replaying merges.txt, which gives the same result only
  for a vocabulary whose merges were derived that way, so other vocabularies use ``tokenizers``.
* **tokenizers** (Hugging Face) for offsets, pre-split words and any other vocabulary: a
  ``Tokenizer`` configured exactly as transformers 4.57 converts GPT-2 (ByteLevel pre-tokenizer,
  BPE, ByteLevel post-processor with ``trim_offsets=False``), built lazily on first use. It is
  also what ``save_pretrained`` writes as tokenizer.json.

tiktoken runs GPT-2's regex through fancy-regex, because of the lookahead in ``\s+(?!\S)``; that
costs half its time. We run it on the same pattern without that alternative, which the plain
``regex`` crate matches twice as fast, after cutting the text where the two patterns would split
differently (see :func:`_mark_cuts`): the same ids, ~1.3x tiktoken's speed on English and code.

Batches above 32 K characters are encoded on ``num_threads`` threads, in a few contiguous chunks
of similar size per thread; both engines release the GIL while they work.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from gpt2_core._tokenizer_base import GPT2TokenizerBase
from gpt2_core._vocab_files import VocabFiles, _shipped_files, load_vocab_files
from gpt2_core.io_utils import atomic_write_text
from gpt2_core.tokenization import ENDOFTEXT, GPT2_PATTERN, VOCAB_FILES_NAMES, token_to_bytes

__all__ = ["GPT2TokenizerFast"]

#: below this many characters in a batch, thread start-up costs more than it saves
_PARALLEL_MIN_CHARS = 32_768
#: a threaded batch is cut into this many contiguous chunks per thread (balances uneven texts;
#: one task per text would cost more in executor overhead than short texts take to encode)
_CHUNKS_PER_THREAD = 4
#: whitespace runs this long are BPE'd in Python (tiktoken's regex fails near 10**6 under GPT-2's
#: pattern; under the cut pattern such a run would be one huge BPE piece)
_LONG_WS = 65_536
# Unicode White_Space, the set both Rust regex engines' \s match (Python's re \s also matches
# \x1c-\x1f, so the class is spelled out)
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_CHARS = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(map(chr, range(0x2000, 0x200B)))
)
_LONG_WS_RE = re.compile("[" + _WS + "]{" + str(_LONG_WS) + ",}")
#: GPT-2's pattern without ``\s+(?!\S)``: no lookaround, so fancy-regex hands it to the
#: ``regex`` crate's automata. Exact on text cut by :func:`_mark_cuts`.
_PATTERN_NO_LOOKAHEAD = GPT2_PATTERN.replace(r"|\s+(?!\S)", "")
#: the cut marker: a Unicode noncharacter (reserved for internal use, not for text), made a
#: special token so tiktoken's regex restarts there; texts that hold it use plain tiktoken
_CUT = "\ufdd0"
#: where a cut goes: after the next-to-last character of a whitespace run of two or more that
#: text follows (``<|endoftext|>`` ends a text when it is special)
_CUT_AT = {
    True: re.compile(f"[{_WS}](?=[{_WS}](?!{re.escape(ENDOFTEXT)})[^{_WS}])"),
    False: re.compile(f"[{_WS}](?=[{_WS}][^{_WS}])"),
}
#: tiktoken's ``encode_to_numpy`` handles special tokens right from 0.11 (added in 0.9)
_NUMPY_IDS = tuple(map(int, re.findall(r"\d+", getattr(tiktoken, "__version__", "0"))[:2])) >= (
    0,
    11,
)
logger = logging.getLogger(__name__)


def _is_engine_failure(e: BaseException) -> bool:
    """A Rust engine's own failure: a regex error (ValueError) or a pyo3 ``PanicException``
    (a BaseException, which ``except Exception`` would not catch)."""
    return type(e).__name__ == "PanicException" or (
        isinstance(e, ValueError) and "regex" in str(e).lower()
    )


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


@functools.cache
def gpt2_tiktoken_encoding() -> tiktoken.Encoding:
    """A tiktoken ``Encoding`` equal to GPT-2's, built offline from the shipped vocabulary."""
    vocab, _ = _shipped_files()
    ranks = {token_to_bytes(t): i for t, i in vocab.items() if t != ENDOFTEXT}
    return tiktoken.Encoding(
        "gpt2-gpt2_core",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: vocab[ENDOFTEXT]},
    )


@functools.cache
def _cut_encoding() -> tuple[tiktoken.Encoding, int]:
    """GPT-2's ranks under :data:`_PATTERN_NO_LOOKAHEAD`, with :data:`_CUT` as a special token;
    and the cut's id (one past the vocabulary, never returned)."""
    tt = gpt2_tiktoken_encoding()
    cut_id = tt.max_token_value + 1
    enc = tiktoken.Encoding(
        "gpt2-gpt2_core-cut",
        pat_str=_PATTERN_NO_LOOKAHEAD,
        mergeable_ranks=tt._mergeable_ranks,
        special_tokens={**tt._special_tokens, _CUT: cut_id},
    )
    return enc, cut_id


#: texts at least this long find their cuts in numpy (less time holding the GIL than ``re``)
_NUMPY_CUTS_MIN = 512
#: True at the code points of :data:`_WS_CHARS`; the last entry (False) stands for every code
#: point above the table
_WS_TABLE = np.zeros(0x3002, np.bool_)
_WS_TABLE[[ord(c) for c in _WS_CHARS]] = True


def _cut_positions(text: str, special: bool) -> list[int]:
    """Where :func:`_mark_cuts` cuts: after the next-to-last character of each maximal
    whitespace run of two or more that a non-space follows (not a special ``<|endoftext|>``
    when ``special``). The ``re`` scan of :data:`_CUT_AT` holds the GIL; on long texts this
    finds the same positions with numpy's array operations, several times faster."""
    if len(text) < _NUMPY_CUTS_MIN:
        return [m.end() for m in _CUT_AT[special].finditer(text)]
    if text.isascii():
        ws = _WS_TABLE[np.frombuffer(text.encode("ascii"), np.uint8)]
    else:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
        ws = _WS_TABLE[np.minimum(codes, len(_WS_TABLE) - 1)]
    # j is a cut when text[j - 1] and text[j] are whitespace and text[j + 1] is not
    cuts = (np.flatnonzero(ws[:-2] & ws[1:-1] & ~ws[2:]) + 1).tolist()
    if special and cuts and ENDOFTEXT in text:
        cuts = [j for j in cuts if not text.startswith(ENDOFTEXT, j + 1)]
    return cuts


def _mark_cuts(text: str, special: bool) -> tuple[str, int]:
    r"""``text`` with :data:`_CUT` inserted before the last character of every whitespace run of
    two or more characters that a non-space follows; and the number of cuts.

    Why the cut pattern then pre-tokenizes like GPT-2's: the two patterns differ only at a
    maximal whitespace run W (two or more characters) followed by a non-space c. There GPT-2's
    ``\s+(?!\S)`` backtracks and yields W[:-1], then matching restarts at W[-1] (which joins c's
    word if it is a space); the pattern without it yields all of W. tiktoken matches each stretch
    between special tokens on its own, so the cut ends one stretch with W[:-1] (where both
    patterns yield W[:-1]: nothing follows) and starts the next with W[-1] c (a run of one, where
    both agree). A run at the end of the text, or before a special ``<|endoftext|>`` (tiktoken
    cuts there itself), is matched whole by both and needs no cut.
    """
    cuts = _cut_positions(text, special)
    if not cuts:
        return text, 0
    bounds = [0, *cuts, len(text)]
    return _CUT.join([text[a:b] for a, b in zip(bounds, bounds[1:])]), len(cuts)


def _tiktoken_ids(text: str, special: bool) -> list[int]:
    """tiktoken's ids of ``text`` under GPT-2's pattern (``<|endoftext|>`` special or not),
    through :func:`_mark_cuts` and the lookahead-free pattern."""
    if _CUT in text:  # the marker is part of the text: GPT-2's own pattern, unchanged
        tt = gpt2_tiktoken_encoding()
        return (
            tt.encode(text, allowed_special={ENDOFTEXT}, disallowed_special=())
            if special
            else tt.encode_ordinary(text)
        )
    enc, cut_id = _cut_encoding()
    allowed = {ENDOFTEXT, _CUT} if special else {_CUT}
    marked, n_cuts = _mark_cuts(text, special)
    if not n_cuts:
        return enc.encode(marked, allowed_special=allowed, disallowed_special=())
    if _NUMPY_IDS:  # ids as a uint32 buffer, filtered in numpy: less time holding the GIL
        ids = enc.encode_to_numpy(marked, allowed_special=allowed, disallowed_special=())
        return ids[ids != cut_id].tolist()
    return [
        i for i in enc.encode(marked, allowed_special=allowed, disallowed_special=()) if i != cut_id
    ]


class GPT2TokenizerFast(GPT2TokenizerBase):
    """GPT-2's tokenizer on tiktoken and tokenizers, with transformers' API.

    Same ids as :class:`~gpt2_core.GPT2Tokenizer` and transformers' ``GPT2TokenizerFast``.
    Adds ``return_offsets_mapping`` (character spans, as transformers' fast tokenizer returns
    them: the leading space belongs to the token, ``" world"`` -> ``(5, 11)``),
    ``BatchEncoding.word_ids()`` and pre-split words. Differences from transformers, all
    relaxations: ``add_prefix_space`` may be passed per call, and ``is_split_into_words=True``
    works without ``add_prefix_space=True`` at construction (each word gets a leading space, as
    the slow tokenizer does).

    Args:
        vocab_file, merges_file: vocab.json / merges.txt paths (or a dict / list of pairs);
            all None for GPT-2's shipped vocabulary.
        tokenizer_file: a tokenizers tokenizer.json, instead of vocab_file + merges_file.
        add_prefix_space: encode "Hello" like " Hello"; applies to each stretch of text
            between special tokens (transformers' fast behaviour).
        trim_offsets: leave the leading space out of a token's offsets (``" world"`` ->
            ``(6, 11)``); default False, as transformers' GPT-2 fast tokenizer.
        num_threads: threads for batches (default: the usable cores, at most 8).
        **kwargs: as :class:`~gpt2_core.GPT2Tokenizer` (``pad_token``, ``add_bos_token``,
            ``model_max_length``, ``padding_side``, ...).

    Example:
        >>> from gpt2_core import GPT2TokenizerFast
        >>> tok = GPT2TokenizerFast.from_pretrained("gpt2")
        >>> tok.encode("Hello world")
        [15496, 995]
        >>> tok("Hello world", return_offsets_mapping=True)["offset_mapping"]
        [(0, 5), (5, 11)]
        >>> tok.pad_token = tok.eos_token
        >>> batch = tok(["Hi", "Hello world"], padding=True, padding_side="left",
        ...             return_tensors="np")
        >>> batch["attention_mask"].tolist()
        [[0, 1], [1, 1]]
    """

    is_fast = True
    _bos_before_pair = False

    def __init__(
        self,
        vocab_file: str | os.PathLike | dict[str, int] | None = None,
        merges_file: str | os.PathLike | list[tuple[str, str]] | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        *,
        unk_token: Any = ENDOFTEXT,
        bos_token: Any = ENDOFTEXT,
        eos_token: Any = ENDOFTEXT,
        add_prefix_space: bool = False,
        trim_offsets: bool = False,
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        # as transformers, the argument (not tokenizer.json's pre-tokenizer) sets
        # add_prefix_space; from_pretrained passes the value stored in the files
        files = load_vocab_files(vocab_file, merges_file, tokenizer_file)
        self._init(
            files,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            add_prefix_space=add_prefix_space,
            trim_offsets=trim_offsets,
            num_threads=num_threads,
            **kwargs,
        )

    def _init(
        self,
        files: VocabFiles,
        *,
        num_threads: int | None = None,
        trim_offsets: bool = False,
        **kwargs: Any,
    ) -> None:
        self.num_threads = _default_threads() if num_threads is None else max(1, int(num_threads))
        self._backends: dict[bool, Any] = {}  # add_prefix_space -> tokenizers.Tokenizer
        self._trim_offsets = bool(trim_offsets)
        self._native_special = False
        super().__init__(files, **kwargs)

    @classmethod
    def _from_files(cls, files: VocabFiles, **kwargs: Any) -> GPT2TokenizerFast:
        tok = cls.__new__(cls)
        tok._init(files, **kwargs)
        return tok

    def __getstate__(self) -> dict[str, Any]:
        # the engines are rebuilt on demand: Rust objects need not survive pickling
        state = self.__dict__.copy()
        state["_backends"] = {}
        return state

    # -- engines --------------------------------------------------------------------------------

    def _on_vocab_changed(self) -> None:
        self._backends = {}
        # tiktoken splits on <|endoftext|> itself when that is the only added token and it
        # strips nothing; other added tokens are split here, then tiktoken encodes the pieces
        info = [self._added_info[i] for i in self._added.values()]
        self._native_special = (
            self.is_gpt2_vocab
            and list(self._added) == [ENDOFTEXT]
            and not info[0].lstrip
            and not info[0].rstrip
        )

    @property
    def trim_offsets(self) -> bool:
        """Drop the spaces a token starts with from its offsets (tokenizers' ByteLevel
        ``trim_offsets``). False by default: transformers' GPT-2 keeps them."""
        return self._trim_offsets

    @trim_offsets.setter
    def trim_offsets(self, value: bool) -> None:
        self._trim_offsets = bool(value)
        self._backends = {}

    @property
    def _tiktoken(self) -> tiktoken.Encoding | None:
        return gpt2_tiktoken_encoding() if self.is_gpt2_vocab else None

    def _backend(self, add_prefix_space: bool) -> Any:
        """The tokenizers ``Tokenizer`` for offsets / pre-split words / other vocabularies."""
        tk = self._backends.get(add_prefix_space)
        if tk is None:
            tk = self._build_backend(add_prefix_space)
            self._backends[add_prefix_space] = tk
        return tk

    def _build_backend(self, add_prefix_space: bool) -> Any:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        merges = [pair for pair, _ in sorted(self.bpe_ranks.items(), key=lambda kv: kv[1])]
        tk = Tokenizer(
            models.BPE(
                vocab=dict(self.encoder),
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        tk.decoder = decoders.ByteLevel()
        # transformers' GPT2Converter: ByteLevel(trim_offsets=False), or a BOS template. The
        # template only matters when transformers reads our tokenizer.json: we add BOS ourselves
        # and encode with add_special_tokens=False (the ByteLevel step still trims offsets).
        byte_level = processors.ByteLevel(trim_offsets=self._trim_offsets)
        if self.add_bos_token and self.bos_token is not None:
            bos = self.bos_token
            template = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 $B:1",
                special_tokens=[(bos, self.bos_token_id)],
            )
            tk.post_processor = (
                processors.Sequence([byte_level, template]) if self._trim_offsets else template
            )
        else:
            tk.post_processor = byte_level
        for i in sorted(self._added_info):
            t = self._added_info[i]
            added = AddedToken(
                t.content,
                single_word=t.single_word,
                lstrip=t.lstrip,
                rstrip=t.rstrip,
                normalized=t.normalized,
                special=t.special,
            )
            (tk.add_special_tokens if t.special else tk.add_tokens)([added])
            if tk.token_to_id(t.content) != i:
                raise RuntimeError(
                    f"tokenizers gave added token {t.content!r} id "
                    f"{tk.token_to_id(t.content)}, expected {i} (ids with gaps?)"
                )
        return tk

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` used for offsets (built on first access)."""
        return self._backend(self.add_prefix_space)

    # -- hooks for the shared pipeline ----------------------------------------------------------

    def _encode_text(self, text: str, add_prefix_space: bool) -> list[int]:
        try:
            return self._encode_text_engines(text, add_prefix_space)
        except BaseException as e:
            if not _is_engine_failure(e):
                raise
            # a Rust engine gave up (regex backtracking limit, a panic): the pure-Python BPE
            # gives the ids the slow tokenizer gives, by construction
            logger.debug(
                "tokenizer engine failed (%s: %s); using the Python BPE", type(e).__name__, e
            )
            return self._encode_text_python(text, add_prefix_space)

    def _python_bpe(self):
        """A slow tokenizer over this vocabulary, used only for its regex + BPE of plain text."""
        if self.__dict__.get("_py_engine") is None:
            from gpt2_core.tokenizer import GPT2Tokenizer

            merges = sorted(self.bpe_ranks, key=self.bpe_ranks.__getitem__)
            self._py_engine = GPT2Tokenizer._from_files(VocabFiles(dict(self.encoder), merges))
        return self._py_engine

    def _encode_text_python(self, text: str, add_prefix_space: bool) -> list[int]:
        """What :meth:`_encode_text_engines` computes, with the slow tokenizer's pre-tokenizer
        and BPE for the plain text between added tokens (same prefix-space rules)."""
        py = self._python_bpe()
        native = (
            self._tiktoken is not None
            and self._native_special
            and not (add_prefix_space and ENDOFTEXT in text)
        )
        if native and add_prefix_space and text and text[0] != " ":
            text = " " + text
        ids: list[int] = []
        for piece in self._split_added(text):
            if isinstance(piece, int):
                ids.append(piece)
            elif piece:
                if not native and add_prefix_space and piece[0] != " ":
                    piece = " " + piece
                ids += py._encode_ordinary(piece)
        py.cache.clear()
        return ids

    def _tt_encode(self, text: str, special: bool) -> list[int]:
        """tiktoken's ids of ``text``, with whitespace runs of :data:`_LONG_WS` or more BPE'd
        in Python: fancy-regex's ``\\s+(?!\\S)`` overflows its stack near a million characters.

        A maximal run W followed by text B pre-tokenizes as W[:-1] | W[-1] + B... (the
        lookahead gives one character back), and as W alone at the end, so the pieces around
        the run encode independently to the same ids.
        """
        # a run of _LONG_WS or more covers an index _LONG_WS - 1 (mod _LONG_WS): look there first
        if len(text) < _LONG_WS or _WS_CHARS.isdisjoint(text[_LONG_WS - 1 :: _LONG_WS]):
            return _tiktoken_ids(text, special)
        ids: list[int] = []
        pos = 0
        for m in _LONG_WS_RE.finditer(text):
            start, end = m.span()
            head, run = text[pos:start], text[start:end]
            if end < len(text):
                run, pos = run[:-1], end - 1  # the last whitespace starts the next piece
            else:
                pos = end
            if head:
                ids += self._tt_encode(head, special)
            py = self._python_bpe()
            ids += py._encode_word(run)
            py.cache.pop(run, None)
        if pos < len(text):
            ids += _tiktoken_ids(text[pos:], special)
        return ids

    def _encode_text_engines(self, text: str, add_prefix_space: bool) -> list[int]:
        tt = self._tiktoken
        if tt is None:
            return self._backend(add_prefix_space).encode(text, add_special_tokens=False).ids
        if self._native_special and not (add_prefix_space and ENDOFTEXT in text):
            if add_prefix_space and text and text[0] != " ":
                text = " " + text
            return self._tt_encode(text, special=True)
        # tokenizers' ByteLevel(add_prefix_space) prefixes every stretch of text between added
        # tokens that does not start with a space
        ids: list[int] = []
        for piece in self._split_added(text):
            if isinstance(piece, int):
                ids.append(piece)
            elif piece:
                if add_prefix_space and piece[0] != " ":
                    piece = " " + piece
                ids += self._tt_encode(piece, special=False)
        return ids

    def _encode_batch(
        self,
        inputs: list[Any],
        *,
        is_split_into_words: bool,
        add_prefix_space: bool,
        return_offsets: bool,
    ):
        if return_offsets or is_split_into_words or self._tiktoken is None:
            # pre-split words always get their leading space (the slow tokenizer's rule)
            tk = self._backend(add_prefix_space or is_split_into_words)
            encs = tk.encode_batch(
                inputs, is_pretokenized=is_split_into_words, add_special_tokens=False
            )
            ids = [e.ids for e in encs]
            if not return_offsets and not is_split_into_words:
                return ids, None, None
            return ids, [e.offsets for e in encs], [e.word_ids for e in encs]

        def encode(texts: list[str]) -> list[list[int]]:
            return [self._encode_text(t, add_prefix_space) for t in texts]

        total = sum(map(len, inputs))
        if self.num_threads < 2 or len(inputs) < 2 or total < _PARALLEL_MIN_CHARS:
            return encode(inputs), None, None
        chunks = _balanced_chunks(inputs, self.num_threads * _CHUNKS_PER_THREAD, total)
        with ThreadPoolExecutor(min(self.num_threads, len(chunks))) as pool:
            return [ids for part in pool.map(encode, chunks) for ids in part], None, None

    def encode_batch(
        self,
        texts: list[str],
        *,
        add_special_tokens: bool = True,
        add_prefix_space: bool | None = None,
    ) -> list[list[int]]:
        """Ids of many texts, on ``num_threads`` threads: ``__call__`` without the dict."""
        if not isinstance(texts, list | tuple):
            raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
        _, firsts, _ = self._normalize_inputs(list(texts), None, False)
        aps = self.add_prefix_space if add_prefix_space is None else bool(add_prefix_space)
        ids, _, _ = self._encode_batch(
            firsts, is_split_into_words=False, add_prefix_space=aps, return_offsets=False
        )
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [[self.bos_token_id, *x] for x in ids]
        return ids

    # -- saving ---------------------------------------------------------------------------------

    def _save_extra(self, directory: Path, prefix: str) -> list[str]:
        path = directory / f"{prefix}{VOCAB_FILES_NAMES['tokenizer_file']}"
        # built afresh: add_bos_token may have changed since the cached engine was made. The
        # layout is what tokenizers' Tokenizer.save writes (and transformers saves).
        atomic_write_text(path, self._build_backend(self.add_prefix_space).to_str(pretty=True))
        return [str(path)]


def _balanced_chunks(texts: list[str], n: int, total: int) -> list[list[str]]:
    """``texts`` cut into at most ``n`` contiguous runs of about ``total / n`` characters each
    (a text longer than that is a chunk of its own)."""
    target = total / n
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for t in texts:
        current.append(t)
        size += len(t)
        if size >= target:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks
