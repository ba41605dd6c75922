"""The public types shared by GPT2Tokenizer and GPT2TokenizerFast.

``AddedToken`` (a token matched in raw text before BPE), ``BatchEncoding`` (what a tokenizer call
returns), GPT-2's byte <-> unicode table and the constants of the file layout. The tokenizers
themselves are :class:`gpt2_core.tokenizer.GPT2Tokenizer` and
:class:`gpt2_core.tokenizer_fast.GPT2TokenizerFast`; what they share lives in the private
``gpt2_core._tokenizer_base`` (encoding pipeline, special tokens, decoding, saving) and
``gpt2_core._vocab_files`` (reading vocab.json, merges.txt, tokenizer.json and config files).

    >>> from gpt2_core.tokenization import AddedToken, BatchEncoding, bytes_to_unicode
    >>> bytes_to_unicode()[ord(" ")]
    'Ġ'
    >>> BatchEncoding({"input_ids": [[15496, 995]]}).input_ids
    [[15496, 995]]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "ADDED_TOKENS_FILE",
    "DEFAULT_MODEL_MAX_LENGTH",
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "PADDING_STRATEGIES",
    "SPECIAL_TOKENS_ATTRIBUTES",
    "SPECIAL_TOKENS_MAP_FILE",
    "TENSOR_TYPES",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_PATTERNS",
    "TRUNCATION_STRATEGIES",
    "VOCAB_FILES_NAMES",
    "AddedToken",
    "BatchEncoding",
    "bytes_to_unicode",
    "to_tensor",
    "token_to_bytes",
]

#: GPT-2's pre-tokenisation regex, verbatim from OpenAI's encoder.py (and transformers). It is
#: case-sensitive: "'S" is not a contraction, a known quirk the vocabulary was trained with.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
VOCAB_FILES_NAMES = {
    "vocab_file": "vocab.json",
    "merges_file": "merges.txt",
    "tokenizer_file": "tokenizer.json",
}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_PATTERNS = [
    *VOCAB_FILES_NAMES.values(),
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    ADDED_TOKENS_FILE,
]
#: GPT-2's context length; also used when a tokenizer_config.json does not say (transformers would
#: fall back to 1e30 there, which silently disables truncation to the model size).
DEFAULT_MODEL_MAX_LENGTH = 1024
SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
TENSOR_TYPES = ("np", "pt", "tf", "jax")
# Integer dtype per framework, as transformers produces them (torch int64, TF/JAX int32).
_TENSOR_INT_DTYPE = {"np": np.int64, "pt": np.int64, "tf": np.int32, "jax": np.int32}


# ---------------------------------------------------------------------------------------------
# byte <-> unicode table
# ---------------------------------------------------------------------------------------------


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, ...) map to
    ``chr(256 + n)`` in order, so a BPE symbol never contains whitespace (space -> "Ġ").
    """
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.cache
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@functools.cache
def _symbols_to_latin1() -> dict[int, str]:
    # byte-level symbol -> the Latin-1 char of its byte; raw chars that are not symbols (space,
    # controls, U+00AD ...) -> U+FFFF, which Latin-1 cannot encode, so they take the slow path
    table = {c: "\uffff" for c in range(256)}
    table.update({ord(c): chr(b) for b, c in bytes_to_unicode().items()})
    return table


def token_to_bytes(token: str) -> bytes:
    """The bytes a byte-level vocabulary entry stands for ("Ġworld" -> b" world").

    Characters outside the byte alphabet (e.g. a "<pad>" written into a custom vocab.json) stand
    for their own UTF-8, as in the ``tokenizers`` ByteLevel decoder.
    """
    try:
        return token.translate(_symbols_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        table = _unicode_to_bytes()
        return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in token)


# ---------------------------------------------------------------------------------------------
# added tokens
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AddedToken:
    """A token matched in raw text before BPE, as transformers' / tokenizers' ``AddedToken``.

    ``lstrip``/``rstrip`` swallow the whitespace to the token's left/right. ``single_word`` and
    ``normalized`` are stored and written back for compatibility; GPT-2 has no normaliser and
    ``single_word`` matching is not implemented (a warning says so).
    """

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
            "special": self.special,
        }


def _as_added_token(token: Any, *, special: bool) -> AddedToken:
    """Accept a str, our AddedToken, transformers'/tokenizers' AddedToken or a config dict."""
    if isinstance(token, AddedToken):
        return dataclasses.replace(token, special=token.special or special)
    if isinstance(token, str):
        # transformers: special tokens are not normalised, ordinary added tokens are
        return AddedToken(token, normalized=not special, special=special)
    if isinstance(token, Mapping):
        if "content" not in token:
            raise ValueError(f"added-token dict needs a 'content' key, got {dict(token)}")
        fields = {f.name for f in dataclasses.fields(AddedToken)}
        kw = {k: v for k, v in token.items() if k in fields}
        kw["special"] = bool(kw.get("special", False)) or special
        return AddedToken(**kw)
    if hasattr(token, "content"):
        return AddedToken(
            str(token.content),
            single_word=bool(getattr(token, "single_word", False)),
            lstrip=bool(getattr(token, "lstrip", False)),
            rstrip=bool(getattr(token, "rstrip", False)),
            normalized=bool(getattr(token, "normalized", not special)),
            special=bool(getattr(token, "special", False)) or special,
        )
    raise TypeError(f"a token must be a str or an AddedToken, got {type(token).__name__}")


def _token_content(value: Any) -> str | None:
    """A special-token value from a config file: a str, an AddedToken dict, or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return value.get("content")
    if hasattr(value, "content"):
        return str(value.content)
    raise TypeError(f"a special token must be a str or an AddedToken, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# BatchEncoding and tensors
# ---------------------------------------------------------------------------------------------


def _tensor_type(return_tensors: Any) -> str | None:
    if return_tensors is None:
        return None
    name = getattr(return_tensors, "value", return_tensors)  # transformers' TensorType enum
    if name not in TENSOR_TYPES:
        raise ValueError(
            f"return_tensors must be one of {TENSOR_TYPES} or None, got {return_tensors!r}"
        )
    return name


def to_tensor(value: Any, tensor_type: str, key: str = "input_ids") -> Any:
    """Nested int lists -> an array of ``tensor_type``; frameworks are imported only here."""
    try:
        arr = np.asarray(value)
    except ValueError as e:  # ragged lists
        raise ValueError(
            f"Unable to create tensor for {key!r}: the sequences have different lengths. Pass "
            "padding=True (and truncation=True) to get rectangular batches."
        ) from e
    if arr.dtype == object:
        raise ValueError(
            f"Unable to create tensor for {key!r}: the sequences have different "
            "lengths. Pass padding=True (and truncation=True)."
        )
    arr = arr.astype(_TENSOR_INT_DTYPE[tensor_type], copy=False)
    if tensor_type == "np":
        return arr
    if tensor_type == "pt":
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr))
    if tensor_type == "tf":
        import tensorflow as tf

        return tf.constant(arr)
    import jax.numpy as jnp

    return jnp.asarray(arr)


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict of model inputs with attribute access.

    ``enc["input_ids"]`` and ``enc.input_ids`` are the same; ``enc.word_ids(i)`` maps the tokens
    of sequence ``i`` to the word they came from (GPT2TokenizerFast, pre-split input or offsets).
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        tensor_type: str | None = None,
        word_ids: list[list[int | None]] | None = None,
    ) -> None:
        super().__init__(data or {})
        self._word_ids = word_ids
        if tensor_type is not None:
            self.convert_to_tensors(tensor_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"BatchEncoding has no key or attribute {name!r} (keys: {list(self)})"
            ) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"data": dict(self), "word_ids": self._word_ids}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.update(state["data"])
        self._word_ids = state["word_ids"]

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """For each token of sequence ``batch_index``, the index of its word (None: special)."""
        if self._word_ids is None:
            raise ValueError(
                "word_ids() needs GPT2TokenizerFast with is_split_into_words=True or "
                "return_offsets_mapping=True"
            )
        return self._word_ids[batch_index]

    def convert_to_tensors(self, tensor_type: str) -> BatchEncoding:
        tensor_type = _tensor_type(tensor_type)
        for key in list(self):
            self[key] = to_tensor(self[key], tensor_type, key)
        return self

    def to(self, device: Any) -> BatchEncoding:
        """Move torch tensors to ``device`` (as transformers' BatchEncoding.to)."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self
