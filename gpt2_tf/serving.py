"""String in, text out: a SavedModel with the tokenizer, a greedy decode loop and the
detokenizer all inside the graph (``model.export_serving(path, with_tokenizer=True)``).

The SavedModel's ``serving_default`` takes ``text`` (B,) strings and returns
``generated_text`` (B,) strings (the continuation, special tokens removed) and ``output_ids``
(B, T + max_new_tokens) int32 (prompt left padded, finished rows padded with EOS). It is loaded
with plain ``tf.saved_model.load`` -- no gpt2_tf, no Keras, no tensorflow-text: the tokenizer is
core TensorFlow ops (:class:`gpt2_tf.tokenizer.TFGPT2Tokenizer`).

The decode loop is greedy and recomputes the whole fixed-size buffer at each step (no KV
cache): simple, shape-stable in a ``tf.while_loop``, O(T^2) -- meant for serving small models
or as a template; its tokens equal ``model.generate`` (greedy) and transformers'.

Example:
    >>> model.export_serving("/tmp/gpt2_text", with_tokenizer=True, max_new_tokens=20)  # doctest: +SKIP
    >>> serve = tf.saved_model.load("/tmp/gpt2_text").signatures["serving_default"]     # doctest: +SKIP
    >>> serve(text=tf.constant(["Hello, my name is"]))["generated_text"]                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from gpt2_core.tokenization import bytes_to_unicode
from gpt2_tf.tokenizer import TFGPT2Tokenizer


class _Detokenizer(tf.Module):
    """ids -> text in the graph: token strings, GPT-2's byte alphabet back to bytes."""

    def __init__(self, tokenizer: TFGPT2Tokenizer, skip_ids: list[int], vocab_size: int) -> None:
        super().__init__()
        # a model vocabulary padded past the tokenizer's (e.g. 50304) decodes those ids as ""
        size = max(max(tokenizer.vocab.values()) + 1, vocab_size)
        tokens = [""] * size
        for t, i in tokenizer.vocab.items():
            tokens[i] = t
        for i in skip_ids:
            tokens[i] = ""
        self.tokens = tf.constant(tokens)
        u2b = {u: bytes([b]) for b, u in bytes_to_unicode().items()}
        self.chars = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(u2b)), tf.constant(list(u2b.values()))
            ),
            default_value="",
        )

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        pieces = tf.strings.reduce_join(tf.gather(self.tokens, ids), axis=-1)  # (B,)
        chars = tf.strings.unicode_split(pieces, "UTF-8")  # (B, None)
        raw = tf.strings.reduce_join(tf.ragged.map_flat_values(self.chars.lookup, chars), axis=-1)
        # bytes that do not form UTF-8 (a character cut by max_new_tokens) become U+FFFD,
        # transformers' errors="replace"
        return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace")


def export_text_serving(
    model: Any,
    path: str | os.PathLike,
    *,
    tokenizer: TFGPT2Tokenizer | None = None,
    max_new_tokens: int = 32,
    max_prompt_tokens: int | None = None,
) -> None:
    """Write the string-in / text-out SavedModel of an LM (see the module docstring).

    Args:
        model: a gpt2_tf GPT2LMHeadModel.
        path: output directory.
        tokenizer: default GPT-2's (``TFGPT2Tokenizer.from_pretrained("gpt2")``).
        max_new_tokens: tokens generated per prompt (greedy; rows stop at EOS).
        max_prompt_tokens: prompts are truncated to their last this many tokens (default:
            n_positions - max_new_tokens).
    """
    if getattr(model, "head", None) != "lm":
        raise TypeError(
            f"with_tokenizer=True serves text generation: it needs a GPT2LMHeadModel, "
            f"got {type(model).__name__}"
        )
    cfg = model.config
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    limit = cfg.n_positions - max_new_tokens
    max_prompt_tokens = max_prompt_tokens or limit
    if not 1 <= max_prompt_tokens <= limit:
        raise ValueError(
            f"max_prompt_tokens must be in [1, n_positions - max_new_tokens = {limit}],"
            f" got {max_prompt_tokens}"
        )
    if tokenizer is None:
        tokenizer = TFGPT2Tokenizer.from_pretrained("gpt2")
    if max(tokenizer.vocab.values()) >= cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has ids up to {max(tokenizer.vocab.values())} but the "
            f"model's vocab_size is {cfg.vocab_size}"
        )
    gen = model.generation_config
    eos = [] if gen is None else gen.eos_token_ids
    if not eos and cfg.eos_token_id is not None:
        eos = [cfg.eos_token_id] if isinstance(cfg.eos_token_id, int) else list(cfg.eos_token_id)
    pad = eos[0] if eos else 0
    detok = _Detokenizer(
        tokenizer,
        skip_ids=[tokenizer.vocab[t] for t in tokenizer.special_tokens],
        vocab_size=cfg.vocab_size,
    )
    eos_t = tf.constant(eos or [-1], tf.int32)
    N = max_new_tokens

    def serve(text):
        ids = tokenizer.tokenize(text)[:, -max_prompt_tokens:]  # (B, None) keep the end
        tf.debugging.assert_positive(ids.row_lengths(), message="a prompt is empty")
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        T0 = tf.reduce_max(lengths)
        B = tf.shape(lengths)[0]
        # left padding, so that every prompt ends at slot T0 - 1 and new tokens follow it
        dense = ids.to_tensor(pad)
        prompt = tf.reverse(tf.reverse_sequence(dense, tf.cast(lengths, tf.int64), 1, 0), [1])
        prompt_mask = tf.cast(tf.range(T0)[None, :] >= (T0 - lengths)[:, None], tf.int32)
        buf = tf.concat([prompt, tf.fill([B, N], pad)], axis=1)  # (B, T0 + N)
        mask = tf.concat([prompt_mask, tf.zeros([B, N], tf.int32)], axis=1)

        def body(step, buf, mask, done):
            pos = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)  # positions of real tokens
            logits = model(
                input_ids=buf,
                attention_mask=mask,
                position_ids=pos,
                training=False,
                use_cache=False,
            )["logits"]  # (B, T0 + N, V)
            nxt = tf.cast(tf.argmax(logits[:, T0 + step - 1], axis=-1), tf.int32)  # (B,)
            nxt = tf.where(done, pad, nxt)
            col = tf.one_hot(T0 + step, T0 + N, dtype=tf.int32)[None, :]  # (1, T0 + N)
            buf = buf * (1 - col) + nxt[:, None] * col
            mask = mask + col
            done = done | tf.reduce_any(nxt[:, None] == eos_t[None, :], axis=1)
            return step + 1, buf, mask, done

        _, buf, _, _ = tf.while_loop(
            lambda step, buf, mask, done: (step < N) & ~tf.reduce_all(done),
            body,
            (tf.constant(0), buf, mask, tf.zeros([B], tf.bool)),
        )
        return {"generated_text": detok(buf[:, T0:]), "output_ids": buf}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for table in [*tokenizer.tables.all, detok.chars]:  # lookup tables are tracked by hand
        archive.track(table)
    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None], tf.string, name="text")]
    )
    archive.write_out(str(path), verbose=False)


__all__ = ["export_text_serving"]
