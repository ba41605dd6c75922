"""GPT2Tokenizer: GPT-2's byte-level BPE in pure Python (plus the ``regex`` module).

The reference semantics are transformers 4.57's slow ``GPT2Tokenizer``: the same ids, the same
``add_prefix_space`` / ``is_split_into_words`` behaviour, the same special-token handling. It is
several times faster than that class because the hot loop does less per word:

* the cache is keyed on the raw pre-token ("␣world"), so a repeated word costs one dict lookup:
  no byte translation, no ``" ".join``/``split`` round trip, no token -> id lookups;
* a word that is itself a vocabulary entry (most English words) skips BPE entirely;
* bytes -> BPE symbols is one ``str.translate`` over the word's UTF-8 read as Latin-1;
* BPE works on ranks of symbol pairs in a dict, and long words (minified code, base64, DNA)
  use a heap so they cost O(n log n) instead of transformers' O(n²).
"""

from __future__ import annotations

import heapq
import os
from typing import Any

import regex

from gpt2_core._tokenizer_base import GPT2TokenizerBase
from gpt2_core._vocab_files import VocabFiles, load_vocab_files
from gpt2_core.tokenization import ENDOFTEXT, GPT2_PATTERN, bytes_to_unicode

__all__ = ["GPT2Tokenizer"]

#: words with more symbols than this use the heap-based merge loop
_LONG_WORD = 48
#: the per-word cache is dropped when it grows past this many entries (bounded memory on
#: streams of never-repeating text; a refill costs little next to one BPE per word)
_CACHE_LIMIT = 200_000


class GPT2Tokenizer(GPT2TokenizerBase):
    """GPT-2's tokenizer (byte-level BPE), pure Python, with transformers' API.

    Works offline: ``"gpt2"`` and the other GPT-2 presets load the vocabulary shipped in the
    package. Ids are identical to transformers' ``GPT2Tokenizer`` on any Unicode text.

    Args:
        vocab_file: path to vocab.json (or a token -> id dict); None with ``merges_file=None``
            for GPT-2's shipped vocabulary.
        merges_file: path to merges.txt (or a list of symbol pairs).
        errors: how ``decode`` treats bytes that are not valid UTF-8 ("replace").
        unk_token, bos_token, eos_token: all ``"<|endoftext|>"`` (id 50256) for GPT-2.
        pad_token: None by default; set ``tok.pad_token = tok.eos_token`` to pad batches.
        add_prefix_space: encode "Hello" like " Hello" (as the word is inside a sentence).
        add_bos_token: prepend ``<|endoftext|>`` to every sequence.
        model_max_length: longest input the model takes (1024); longer inputs warn.
        padding_side: "right" (default) or "left" (batched generation).

    Example:
        >>> from gpt2_core import GPT2Tokenizer
        >>> tok = GPT2Tokenizer.from_pretrained("gpt2")
        >>> tok("Hello world")["input_ids"]
        [15496, 995]
        >>> tok.decode([18435, 995])
        ' Hello world'
        >>> tok.pad_token = tok.eos_token
        >>> tok(["Hi", "Hello world"], padding=True, padding_side="left").input_ids
        [[50256, 17250], [15496, 995]]
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | dict[str, int] | None = None,
        merges_file: str | os.PathLike | list[tuple[str, str]] | None = None,
        *,
        errors: str = "replace",
        unk_token: Any = ENDOFTEXT,
        bos_token: Any = ENDOFTEXT,
        eos_token: Any = ENDOFTEXT,
        pad_token: Any = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        **kwargs: Any,
    ) -> None:
        self._init(
            load_vocab_files(vocab_file, merges_file),
            errors=errors,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_prefix_space=add_prefix_space,
            add_bos_token=add_bos_token,
            **kwargs,
        )

    def _init(self, files: VocabFiles, **kwargs: Any) -> None:
        kwargs.pop("trim_offsets", None)  # from a tokenizer.json: offsets are fast-only
        self.pat = regex.compile(GPT2_PATTERN)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        # the UTF-8 bytes of a word, read as Latin-1 (one char per byte), translate to symbols
        self._byte_table = str.maketrans({chr(b): c for b, c in self.byte_encoder.items()})
        self.cache: dict[str, tuple[int, ...]] = {}
        super().__init__(files, **kwargs)

    @classmethod
    def _from_files(cls, files: VocabFiles, **kwargs: Any) -> GPT2Tokenizer:
        tok = cls.__new__(cls)
        tok._init(files, **kwargs)
        return tok

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["cache"] = {}  # a memo, possibly 200k entries: not worth pickling
        return state

    @property
    def decoder(self) -> dict[int, str]:
        """id -> token string (transformers' attribute), built on demand."""
        return {i: t for t, i in self.encoder.items()}

    # -- BPE ------------------------------------------------------------------------------------

    def bpe(self, token: str) -> str:
        """BPE of one byte-level word, as space-separated symbols (transformers' ``bpe``)."""
        return " ".join(self._merge(token))

    def _merge(self, symbols: str) -> list[str]:
        """Apply the merges to a byte-level word: lowest-ranked adjacent pair first, every
        occurrence of it left to right, until no pair has a rank (transformers' loop)."""
        if len(symbols) > _LONG_WORD:
            return self._merge_long(symbols)
        ranks = self.bpe_ranks
        word = list(symbols)
        while len(word) > 1:
            pair_ranks = [ranks.get(p) for p in zip(word, word[1:])]
            best = min((r for r in pair_ranks if r is not None), default=None)
            if best is None:
                break
            k = pair_ranks.index(best)
            first, second = word[k], word[k + 1]
            merged, i, n = [], 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _merge_long(self, symbols: str) -> list[str]:
        """Same result as :meth:`_merge` in O(n log n): a heap of (rank, position) over a
        linked list of symbols.

        transformers merges every occurrence of the best pair before looking again, so pairs
        created during a pass wait in ``pending`` until the pass is over; popping equal ranks by
        position reproduces its left-to-right scan.
        """
        ranks = self.bpe_ranks
        sym: list[str | None] = list(symbols)
        n = len(sym)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = [
            (r, i)
            for i, p in enumerate(zip(symbols, symbols[1:]))
            if (r := ranks.get(p)) is not None
        ]
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            pending = []
            while heap and heap[0][0] == rank:
                _, i = heapq.heappop(heap)
                j = nxt[i]
                if sym[i] is None or j >= n or ranks.get((sym[i], sym[j])) != rank:
                    continue  # stale: one side was merged away since this entry was pushed
                sym[i] += sym[j]
                sym[j] = None
                nxt[i] = nxt[j]
                if nxt[j] < n:
                    prv[nxt[j]] = i
                if (p := prv[i]) >= 0 and (r := ranks.get((sym[p], sym[i]))) is not None:
                    pending.append((r, p))
                if (q := nxt[i]) < n and (r := ranks.get((sym[i], sym[q]))) is not None:
                    pending.append((r, i))
            for item in pending:
                heapq.heappush(heap, item)
        return [s for s in sym if s is not None]

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token (cache miss path)."""
        symbols = word.encode("utf-8").decode("latin-1").translate(self._byte_table)
        single = self.encoder.get(symbols)
        if single is not None:
            ids: tuple[int, ...] = (single,)
        else:
            encoder = self.encoder
            merged = self._merge(symbols)
            try:
                ids = tuple(encoder[s] for s in merged)
            except KeyError:  # a custom vocabulary missing a merge result: unk, as transformers
                ids = tuple(encoder.get(s, self.unk_token_id) for s in merged)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[word] = ids
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text that holds no added tokens: regex pre-tokenization, then BPE per word."""
        out: list[int] = []
        extend = out.extend
        cache_get = self.cache.get
        encode_word = self._encode_word
        for word in self.pat.findall(text):
            ids = cache_get(word)
            extend(encode_word(word) if ids is None else ids)
        return out

    # -- hooks for the shared pipeline ----------------------------------------------------------

    def _encode_text(self, text: str, add_prefix_space: bool) -> list[int]:
        # transformers' prepare_for_tokenization: one space before the whole text, before the
        # text is split on special tokens
        if add_prefix_space:
            text = " " + text
        pieces = self._split_added(text)
        if len(pieces) == 1:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, int):
                ids.append(piece)
            elif piece:
                ids += self._encode_ordinary(piece)
        return ids

    def _encode_batch(
        self,
        inputs: list[Any],
        *,
        is_split_into_words: bool,
        add_prefix_space: bool,
        return_offsets: bool,
    ):
        if return_offsets:
            raise NotImplementedError("offsets need GPT2TokenizerFast")
        if is_split_into_words:
            # transformers: every word gets a space, the first one included
            return (
                [[i for w in words for i in self._encode_text(w, True)] for words in inputs],
                None,
                None,
            )
        return [self._encode_text(t, add_prefix_space) for t in inputs], None, None
