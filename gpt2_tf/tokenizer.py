"""TFGPT2Tokenizer: GPT-2's byte-level BPE as a Keras layer that runs inside the TensorFlow graph.

Strings go in, token ids come out, inside ``tf.function``, ``tf.data`` and a SavedModel, with ids
identical to :class:`gpt2_core.tokenizer_fast.GPT2TokenizerFast` (tests/fixtures/tokenizer).

Engine: **core TensorFlow string ops only** (RE2 ``regex_replace``, ``strings.split``,
``lookup.StaticHashTable``, a ``while_loop`` of BPE merges). Measured alternatives
(docs/keras.md): keras-hub 0.32's ``BytePairTokenizer`` differs from GPT-2 on 35 of the 455
golden cases (contractions, whitespace runs before words, special tokens) and pulls in
tensorflow-text, whose custom ops must then be imported in every process that loads the
SavedModel; our own ops give exact ids and a SavedModel that plain ``tf.saved_model.load`` reads.

How GPT-2's pre-tokenizer regex is emulated with RE2 (which has no look-ahead):

1. special tokens (``<|endoftext|>``) are cut out as their own segments;
2. ``\\s+(?!\\S)`` -- in a whitespace run followed by a word the last space belongs to the word --
   is done by cutting before the last whitespace character of every such run;
3. every segment is then split with the look-ahead-free pattern
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+`` (Python's Unicode
   ``\\s`` spelled out, since RE2's ``\\s`` is ASCII only).

Each piece's bytes are mapped to GPT-2's printable byte alphabet; a piece that is a whole
vocabulary entry is one token (as tiktoken does), the others go through the BPE loop: merge the
lowest-ranked adjacent pair (leftmost on ties) until none is left, all pieces of the batch at once.

Example:
    >>> from gpt2_tf import TFGPT2Tokenizer
    >>> tok = TFGPT2Tokenizer.from_pretrained("gpt2")
    >>> tok(tf.constant(["Hello world"]))["input_ids"]                   # doctest: +SKIP
    <tf.RaggedTensor [[15496, 995]]>
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from gpt2_core.tokenization import bytes_to_unicode

MARK = b"\xff"  # cut marker: a byte that never occurs in UTF-8 text
# Python's str.isspace() / regex \s for Unicode, written out for RE2
_WS = (
    r"\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f} \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}"
    r"\x{2029}\x{202f}\x{205f}\x{3000}"
)
_BIG = np.iinfo(np.int32).max


def _re2_escape(s: str) -> str:
    """A literal for RE2: every non-alphanumeric character as a \\x{...} escape."""
    return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):x}}}" for c in s)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class TFGPT2Tokenizer(keras.layers.Layer):
    """GPT-2's tokenizer as an in-graph Keras layer (transformers' ``TFGPT2Tokenizer``).

    Args:
        vocab: token string -> id (GPT-2's byte-level alphabet), added tokens included.
        merges: BPE merges in rank order, ``"a b"`` strings or ``(a, b)`` pairs.
        max_length: pad / truncate to this length (with ``pad_token_id``).
        pad_token_id: when set, outputs are dense and padded (to ``max_length``, else to the
            longest text of the batch); when None they are ragged, as transformers.
        padding_side: "right" (default) or "left" (for batched generation).
        special_tokens: strings matched before BPE as single tokens (default: the vocab's
            ``<|endoftext|>`` if present).

    Call: ``tok(texts)`` with a string tensor (B,) (or a scalar) returns
    ``{"input_ids": int32 (B, T), "attention_mask": int32 (B, T)}`` (ragged without padding).

    In a SavedModel: the lookup tables live in ``tok.tables`` (a ``tf.Module``, tables in
    ``tok.tables.all``): attach it to the saved ``tf.Module`` (``root.tables = tok.tables``) or
    ``ExportArchive.track`` each table, as ``export_serving(with_tokenizer=True)`` does.

    Example:
        >>> tok = TFGPT2Tokenizer.from_pretrained("gpt2", pad_token_id=50256, max_length=8)
        >>> out = tok(tf.constant(["Hello world", "a"]))                  # doctest: +SKIP
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[Any],
        *,
        max_length: int | None = None,
        pad_token_id: int | None = None,
        padding_side: str = "right",
        special_tokens: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be None or an int >= 1, got {max_length!r}")
        if max_length is not None and pad_token_id is None:
            raise ValueError("max_length needs pad_token_id (padding), as transformers")
        self.vocab = {str(k): int(v) for k, v in vocab.items()}
        self.merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in merges]
        if any(len(m.split(" ")) != 2 for m in self.merges):
            bad = next(m for m in self.merges if len(m.split(" ")) != 2)
            raise ValueError(f"merges must be 'a b' pairs, got {bad!r}")
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        if special_tokens is None:
            special_tokens = [t for t in ("<|endoftext|>",) if t in self.vocab]
        missing = [t for t in special_tokens if t not in self.vocab]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        self.special_tokens = list(special_tokens)
        # longest first, so that a special token containing another one wins
        specials = "|".join(
            _re2_escape(t) for t in sorted(self.special_tokens, key=len, reverse=True)
        )
        self._special_re = specials
        self._last_ws_re = f"([{_WS}])([^{_WS}])"
        self._piece_re = (
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
            rf"| ?[^{_WS}\p{{L}}\p{{N}}]+|[{_WS}]+"
        )
        b2u = bytes_to_unicode()
        self._bytes = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([bytes([b]) for b in range(256)]),
                tf.constant([b2u[b] for b in range(256)]),
            ),
            default_value="",
        )
        self._vocab = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(self.vocab)), tf.constant(list(self.vocab.values()), tf.int32)
            ),
            default_value=-1,
        )
        self._ranks = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.merges or [" "]),
                tf.constant(list(range(len(self.merges))) or [_BIG], tf.int32),
            ),
            default_value=_BIG,
        )
        self._special_set = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.special_tokens or ["\x00"]),
                tf.constant([1] * len(self.special_tokens) or [0], tf.int32),
            ),
            default_value=0,
        )
        # Keras does not track lookup tables; a tf.Module does: a SavedModel that calls this
        # layer must reach ``tables`` from its root (``module.tables = tok.tables``)
        self.tables = tf.Module(name="gpt2_tokenizer_tables")
        self.tables.all = [self._bytes, self._vocab, self._ranks, self._special_set]
        self.built = True  # no weights: the tables are its whole state

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> TFGPT2Tokenizer:
        """From a :class:`gpt2_core.tokenizer_fast.GPT2TokenizerFast` (or GPT2Tokenizer)."""
        ranks = tokenizer.bpe_ranks
        merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda kv: kv[1])]
        kwargs.setdefault(
            "special_tokens",
            [t for t in tokenizer.all_special_tokens if t in tokenizer.get_vocab()],
        )
        return cls(tokenizer.get_vocab(), merges, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> TFGPT2Tokenizer:
        """From a preset ("gpt2"), a directory or a hub id, through GPT2TokenizerFast."""
        from gpt2_core.tokenizer_fast import GPT2TokenizerFast

        return cls.from_tokenizer(GPT2TokenizerFast.from_pretrained(name_or_path), **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocab=self.vocab,
            merges=self.merges,
            max_length=self.max_length,
            pad_token_id=self.pad_token_id,
            padding_side=self.padding_side,
            special_tokens=self.special_tokens,
        )
        return config

    # ------------------------------------------------------------------ the graph
    def _pieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """(B,) strings -> (B, pieces) ragged strings, GPT-2's pre-tokenisation.

        Each step marks its cuts with the byte 0xFF (never part of UTF-8 text) and splits on
        it before the next regex runs, so no regex ever sees a marker."""

        def cut(values, pattern, rewrite):
            return tf.strings.split(tf.strings.regex_replace(values, pattern, rewrite), sep=MARK)

        segs = (
            cut(texts, self._special_re, MARK + rb"\0" + MARK)
            if self._special_re
            else tf.RaggedTensor.from_tensor(texts[:, None])
        )  # (B, S)
        sub = cut(segs.flat_values, self._last_ws_re, MARK + rb"\1\2")  # (S, S')
        flat = sub.flat_values
        special = self._special_set.lookup(flat) > 0  # special tokens stay whole
        pieces = tf.strings.split(
            tf.where(special, flat, tf.strings.regex_replace(flat, self._piece_re, MARK + rb"\0")),
            sep=MARK,
        )
        pieces = segs.with_flat_values(sub.with_flat_values(pieces)).merge_dims(1, 3)
        return tf.ragged.boolean_mask(pieces, tf.strings.length(pieces) > 0)  # (B, pieces)

    def _bpe(self, chars: tf.RaggedTensor) -> tf.RaggedTensor:
        """BPE of every word at once: (W, None) byte symbols -> (W, None) tokens.

        The symbols of all words are kept flat (N,) with their word index; each step merges,
        in every word, all occurrences of its lowest-ranked adjacent pair -- GPT-2's rule --
        and the loop ends when no word has a ranked pair. A step costs O(N)."""
        W = chars.nrows(out_type=tf.int32)

        def body(sym, wid, _):
            N = tf.size(sym)
            pairs = tf.strings.join([sym[:-1], sym[1:]], separator=" ")  # (N-1,)
            ranks = tf.where(wid[:-1] == wid[1:], self._ranks.lookup(pairs), _BIG)
            best = tf.math.unsorted_segment_min(ranks, wid[:-1], W)  # (W,)
            idx = tf.range(tf.maximum(N - 1, 0))
            hit = (ranks == tf.gather(best, wid[:-1])) & (ranks < _BIG)  # (N-1,)
            # every occurrence of the word's best pair, left to right without overlap (GPT-2's
            # bpe(): "a a a" merges the first two only): in a run of adjacent hits take every
            # other one. Runs are cut by non-hits, so run k starts after the k-th non-hit.
            run = tf.cumsum(tf.cast(~hit, tf.int32))  # (N-1,) run id
            start = tf.math.unsorted_segment_min(idx, run, tf.size(hit) + 1)
            offset = idx - tf.gather(start, run) - tf.cast(run > 0, tf.int32)
            at = tf.where(hit & (offset % 2 == 0))[:, :1]
            at = tf.cast(at, tf.int32)
            merge = tf.scatter_nd(at, tf.ones_like(at[:, 0], tf.bool), [N])
            drop = tf.scatter_nd(at + 1, tf.ones_like(at[:, 0], tf.bool), [N])
            nxt = tf.concat([sym[1:], [""]], axis=0)[:N]  # (N,) the right neighbour
            sym = tf.where(merge, tf.strings.join([sym, nxt]), sym)
            return (tf.boolean_mask(sym, ~drop), tf.boolean_mask(wid, ~drop), tf.size(at) > 0)

        sym, wid, _ = tf.while_loop(
            lambda sym, wid, go: go,
            body,
            (chars.flat_values, tf.cast(chars.value_rowids(), tf.int32), tf.constant(True)),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        return tf.RaggedTensor.from_value_rowids(sym, wid, nrows=W)

    def tokenize(self, texts: Any) -> tf.RaggedTensor:
        """(B,) strings -> (B, None) int32 ragged ids (no padding)."""
        texts = tf.convert_to_tensor(texts, tf.string)
        scalar = texts.shape.rank == 0
        texts = tf.reshape(texts, [-1])
        pieces = self._pieces(texts)
        words = pieces.flat_values  # (W,)
        is_special = self._special_set.lookup(words) > 0
        chars = tf.strings.bytes_split(words)  # (W, None) single bytes
        chars = tf.ragged.map_flat_values(self._bytes.lookup, chars)
        mapped = tf.strings.reduce_join(chars, axis=1)
        # a piece that is a vocabulary entry is one token (what tiktoken does); else BPE
        whole = self._vocab.lookup(tf.where(is_special, words, mapped))
        todo = tf.where(whole < 0)[:, 0]
        sub_ids = tf.ragged.map_flat_values(self._vocab.lookup, self._bpe(tf.gather(chars, todo)))
        ids = tf.RaggedTensor.from_tensor(whole[:, None], lengths=tf.ones_like(whole))
        ids = _scatter_rows(ids, todo, sub_ids)  # (W, None)
        tf.debugging.assert_non_negative(
            ids.flat_values, message="TFGPT2Tokenizer: a symbol is not in the vocabulary"
        )
        out = tf.RaggedTensor.from_row_splits(ids, pieces.row_splits).merge_dims(1, 2)
        return out[0] if scalar else out

    def call(self, inputs: Any, max_length: int | None = None) -> dict[str, Any]:
        ids = self.tokenize(inputs)
        max_length = max_length or self.max_length
        if self.pad_token_id is None:
            return {"input_ids": ids, "attention_mask": tf.ones_like(ids)}
        if isinstance(ids, tf.Tensor):  # a scalar input: one row
            ids = tf.RaggedTensor.from_tensor(ids[None])
        if max_length is not None:
            ids = ids[:, :max_length]
            width = max_length
        else:
            width = tf.reduce_max(ids.row_lengths())
        input_ids = ids.to_tensor(self.pad_token_id, shape=[None, width])  # (B, width)
        mask = tf.ones_like(ids).to_tensor(0, shape=[None, width])
        if self.padding_side == "left":
            # [a b c P P] -> reverse the first len -> [c b a P P] -> reverse all -> [P P a b c]
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            input_ids = tf.reverse(tf.reverse_sequence(input_ids, lengths, 1, 0), [1])
            mask = tf.reverse(tf.reverse_sequence(mask, lengths, 1, 0), [1])
        return {"input_ids": input_ids, "attention_mask": mask}


def _scatter_rows(base: tf.RaggedTensor, rows: tf.Tensor, values: tf.RaggedTensor):
    """``base`` with ``base[rows[i]] = values[i]`` (ragged rows of any length)."""
    W = tf.cast(base.nrows(), tf.int32)
    rows = tf.cast(rows, tf.int32)
    which = tf.scatter_nd(rows[:, None], tf.range(1, tf.size(rows) + 1), [W]) - 1  # (W,)
    src = tf.where(which >= 0, which + W, tf.range(W))  # row of [base; values] to take
    values = values.with_row_splits_dtype(base.row_splits.dtype)
    return tf.gather(tf.concat([base, values], axis=0), src)


__all__ = ["TFGPT2Tokenizer"]
