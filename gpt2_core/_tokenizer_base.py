"""What GPT2Tokenizer and GPT2TokenizerFast share: special and added tokens, the ``__call__``
pipeline (truncation, padding, tensors), decoding, save and load.

The two classes differ only in how text becomes ids (pure-Python BPE vs tiktoken/tokenizers), so
each implements ``_encode_text`` (one string, the hot path of ``encode``) and ``_encode_batch``
(many strings or pre-split words, optionally with offsets); everything else lives here and follows
transformers 4.57's slow ``PreTrainedTokenizer`` semantics unless a comment says otherwise. The
public types (``BatchEncoding``, ``AddedToken``) are in :mod:`gpt2_core.tokenization`, the file
readers in ``gpt2_core._vocab_files``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_core._vocab_files import (
    VocabFiles,
    _shipped_tables,
    dump_vocab,
    is_shipped_vocab,
    read_pretrained,
)
from gpt2_core.io_utils import atomic_write_text
from gpt2_core.tokenization import (
    DEFAULT_MODEL_MAX_LENGTH,
    ENDOFTEXT,
    PADDING_STRATEGIES,
    SPECIAL_TOKENS_ATTRIBUTES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TRUNCATION_STRATEGIES,
    VOCAB_FILES_NAMES,
    AddedToken,
    BatchEncoding,
    _as_added_token,
    _tensor_type,
    _token_content,
    token_to_bytes,
)

logger = logging.getLogger(__name__)


def _check_text(text: Any, where: str = "text") -> str:
    """TypeError for non-strings, ValueError naming the position of a lone surrogate."""
    if not isinstance(text, str):
        hint = (
            " (decode bytes first, e.g. data.decode('utf-8'))"
            if isinstance(text, bytes | bytearray)
            else ""
        )
        raise TypeError(f"{where} must be a str, got {type(text).__name__}{hint}")
    if not text.isascii():  # O(1): CPython caches whether a str is ASCII
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{where} contains a lone surrogate {text[e.start]!r} at position {e.start}; "
                "it is not valid Unicode text and has no UTF-8 bytes to tokenize (if it came "
                "from decoding bytes with errors='surrogateescape', decode with "
                "errors='replace' instead)"
            ) from None
    return text


class GPT2TokenizerBase:
    """Behaviour common to :class:`GPT2Tokenizer` and :class:`GPT2TokenizerFast`."""

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]
    is_fast = False
    #: transformers' slow tokenizer repeats BOS before the second sequence of a pair; its fast
    #: one (TemplateProcessing "bos $A $B") does not.
    _bos_before_pair = True

    def __init__(
        self,
        files: VocabFiles,
        *,
        errors: str = "replace",
        unk_token: Any = ENDOFTEXT,
        bos_token: Any = ENDOFTEXT,
        eos_token: Any = ENDOFTEXT,
        pad_token: Any = None,
        sep_token: Any = None,
        cls_token: Any = None,
        mask_token: Any = None,
        additional_special_tokens: Iterable[Any] | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
    ) -> None:
        self.encoder: dict[str, int] = files.vocab
        #: the vocabulary is GPT-2's own (what tiktoken's BPE reproduces exactly)
        self.is_gpt2_vocab = is_shipped_vocab(files.vocab, files.merges)
        self.errors = errors
        self.add_prefix_space = bool(add_prefix_space)
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = int(model_max_length)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.name_or_path = name_or_path
        self._warned: set[str] = set()
        n = max(self.encoder.values(), default=-1) + 1
        self._base_size = n
        # id -> token string / bytes, with None for ids a gappy custom vocab does not use
        if self.is_gpt2_vocab:
            id_to_token, id_to_bytes, ranks = _shipped_tables()
            self._id_to_token: list[str | None] = list(id_to_token)
            self._id_to_bytes: list[bytes | None] = list(id_to_bytes)
            self.bpe_ranks: dict[tuple[str, str], int] = ranks.copy()
        else:
            self._id_to_token = [None] * n
            for tok, i in self.encoder.items():
                self._id_to_token[i] = tok
            self._id_to_bytes = [
                None if t is None else token_to_bytes(t) for t in self._id_to_token
            ]
            self.bpe_ranks = {m: i for i, m in enumerate(files.merges)}
        # added tokens: matched in raw text before BPE (transformers' `_added_tokens_decoder`)
        self._added: dict[str, int] = {}
        self._added_info: dict[int, AddedToken] = {}
        self._special: dict[str, str | None] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        self._additional_special: list[str] = []
        self._added_changed = False
        for i, tok in files.added:
            self._register(tok, i)
        specials = {
            "unk_token": unk_token,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
            "sep_token": sep_token,
            "cls_token": cls_token,
            "mask_token": mask_token,
        }
        for attr, value in specials.items():
            if isinstance(value, str):
                # transformers wraps these in AddedToken(lstrip=False, rstrip=False): normalized
                value = AddedToken(value, special=True)
            if value is not None:
                self._special[attr] = self._add_one(value, special=True)
        for value in additional_special_tokens or []:
            content = self._add_one(value, special=True)
            if content not in self._additional_special:
                self._additional_special.append(content)
        self._rebuild_added()

    # -- loading and saving ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a preset (offline), a local directory or a hub id.

        ``"gpt2"``, ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``, ``"distilgpt2"`` and their
        hub ids (``"openai-community/gpt2"`` ...) share GPT-2's vocabulary, shipped with the
        package. A directory may hold vocab.json + merges.txt or tokenizer.json, plus
        tokenizer_config.json / special_tokens_map.json. Any other id is fetched with
        ``huggingface_hub`` (:class:`gpt2_core.hub.HubError` when offline). Keyword arguments
        override the files (``padding_side="left"``, ``pad_token="<|endoftext|>"`` ...).
        """
        files = read_pretrained(pretrained_model_name_or_path, prefer_tokenizer_json=cls.is_fast)
        init = {**files.init_kwargs, **kwargs}
        init.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        return cls._from_files(files, **init)

    @classmethod
    def _from_files(cls, files: VocabFiles, **kwargs: Any):
        raise NotImplementedError

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write vocab.json and merges.txt (transformers' layout); returns their paths."""
        d = Path(save_directory)
        if not d.is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory, got {d}")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_path = d / f"{prefix}{VOCAB_FILES_NAMES['vocab_file']}"
        merges_path = d / f"{prefix}{VOCAB_FILES_NAMES['merges_file']}"
        atomic_write_text(vocab_path, dump_vocab(self.encoder))
        ranked = sorted(self.bpe_ranks.items(), key=lambda kv: kv[1])
        if any(rank != i for i, (_, rank) in enumerate(ranked)):
            logger.warning(
                "Saving vocabulary to %s: BPE merge indices are not consecutive. "
                "Please check that the tokenizer is not corrupted!",
                merges_path,
            )
        lines = ["#version: 0.2", *(f"{a} {b}" for (a, b), _ in ranked)]
        atomic_write_text(merges_path, "\n".join(lines) + "\n")
        return str(vocab_path), str(merges_path)

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write the tokenizer so both gpt2_core and transformers 4.57 reload it identically.

        Files: tokenizer_config.json, special_tokens_map.json, vocab.json, merges.txt (and
        tokenizer.json for the fast class). Each file is written atomically.
        """
        d = Path(save_directory)
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{d} exists and is not a directory")
        d.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        config_path = d / f"{prefix}{TOKENIZER_CONFIG_FILE}"
        special_path = d / f"{prefix}{SPECIAL_TOKENS_MAP_FILE}"
        atomic_write_text(config_path, _dumps(self._tokenizer_config()))
        atomic_write_text(special_path, _dumps(self._special_tokens_map_file()))
        written = [str(config_path), str(special_path)]
        written += self.save_vocabulary(d, filename_prefix)
        written += self._save_extra(d, prefix)
        return tuple(written)

    def _save_extra(self, directory: Path, prefix: str) -> list[str]:
        return []

    def _tokenizer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "add_bos_token": self.add_bos_token,
            "add_prefix_space": self.add_prefix_space,
            "added_tokens_decoder": {
                str(i): self._added_info[i].to_dict() for i in sorted(self._added_info)
            },
        }
        if self._additional_special:
            config["additional_special_tokens"] = list(self._additional_special)
        for attr in SPECIAL_TOKENS_ATTRIBUTES:
            if self._special[attr] is not None:
                config[attr] = self._special[attr]
        config.update(
            {
                "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                "errors": self.errors,
                "extra_special_tokens": {},
                "model_max_length": self.model_max_length,
                "padding_side": self.padding_side,
                # transformers' AutoTokenizer picks slow or fast itself from this name
                "tokenizer_class": "GPT2Tokenizer",
                "truncation_side": self.truncation_side,
            }
        )
        return dict(sorted(config.items()))

    def _special_tokens_map_file(self) -> dict[str, Any]:
        def entry(content: str) -> dict[str, Any]:
            info = self._added_info[self._added[content]].to_dict()
            info.pop("special")
            return info

        out: dict[str, Any] = {}
        if self._additional_special:
            out["additional_special_tokens"] = [entry(t) for t in self._additional_special]
        for attr in SPECIAL_TOKENS_ATTRIBUTES:
            if self._special[attr] is not None:
                out[attr] = entry(self._special[attr])
        return dict(sorted(out.items()))

    # -- vocabulary -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (50257 for GPT-2), without added tokens."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder) + sum(1 for t in self._added if t not in self.encoder)

    def get_vocab(self) -> dict[str, int]:
        return {**self.encoder, **self._added}

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return dict(sorted(self._added.items(), key=lambda kv: kv[1]))

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(sorted(self._added_info.items()))

    def _token_id(self, token: str) -> int | None:
        i = self._added.get(token)
        return self.encoder.get(token) if i is None else i

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token string(s) -> id(s); unknown tokens map to ``unk_token_id`` as in transformers."""
        if isinstance(tokens, str):
            i = self._token_id(tokens)
            return self.unk_token_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """Id(s) -> byte-level token string(s) ("Ġworld"); ValueError for unknown ids."""
        single = _is_int(ids) or getattr(ids, "ndim", None) == 0
        ids = _to_id_list(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        out = []
        for i in ids:
            if not _is_int(i):
                raise TypeError(f"token ids must be integers, got {i!r}")
            tok = self._id_to_token[i] if 0 <= i < len(self._id_to_token) else None
            if tok is None:
                raise ValueError(self._unknown_id_message(i))
            if i not in skip:
                out.append(tok)
        return out[0] if single and out else out

    def convert_tokens_to_string(self, tokens: Iterable[str]) -> str:
        by_token = self._token_bytes
        return b"".join(by_token(t) for t in tokens).decode("utf-8", errors=self.errors)

    def _token_bytes(self, token: str) -> bytes:
        i = self._added.get(token)
        return (
            token.encode("utf-8")
            if i is not None and token not in self.encoder
            else (token_to_bytes(token))
        )

    # -- special and added tokens ---------------------------------------------------------------

    def _register(self, token: AddedToken, index: int) -> None:
        content = token.content
        if content in self.encoder and self.encoder[content] != index:
            raise ValueError(
                f"added token {content!r} has id {index} but the vocabulary gives "
                f"it id {self.encoder[content]}"
            )
        old = self._added.get(content)
        if old is not None and old != index:
            raise ValueError(f"added token {content!r} has two ids: {old} and {index}")
        if index in self._added_info and self._added_info[index].content != content:
            raise ValueError(
                f"id {index} is used by {self._added_info[index].content!r} and {content!r}"
            )
        if index < self._base_size and self._id_to_token[index] not in (None, content):
            raise ValueError(
                f"added token {content!r} would reuse id {index} of {self._id_to_token[index]!r}"
            )
        if token.single_word:
            logger.warning(
                "added token %r: single_word matching is not implemented; it is "
                "matched anywhere in the text",
                content,
            )
        self._added[content] = index
        self._added_info[index] = token
        if index >= len(self._id_to_token):
            grow = index + 1 - len(self._id_to_token)
            self._id_to_token.extend([None] * grow)
            self._id_to_bytes.extend([None] * grow)
        self._id_to_token[index] = content
        # added tokens decode to their text, not through the byte map (tokenizers' behaviour)
        self._id_to_bytes[index] = (
            token_to_bytes(content) if content in self.encoder else content.encode("utf-8")
        )

    def _add_one(self, token: Any, *, special: bool) -> str:
        """Register one token (no-op if already added); returns its content."""
        tok = _as_added_token(token, special=special)
        if not tok.content:
            raise ValueError("cannot add an empty token")
        if tok.content in self._added:
            old = self._added_info[self._added[tok.content]]
            if special and not old.special:
                self._added_info[self._added[tok.content]] = dataclasses.replace(old, special=True)
                self._added_changed = True
            return tok.content
        index = self.encoder.get(tok.content)
        if index is None:
            index = max(len(self._id_to_token), self._base_size)
        self._register(tok, index)
        self._added_changed = True
        return tok.content

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        """Add tokens matched in raw text before BPE; returns how many ids are new.

        New tokens get ids after the last one (50257, 50258, ... for GPT-2). As in transformers,
        a token already in the vocabulary keeps its id but is now matched as a whole in text.
        Resize the model's embeddings to ``len(tokenizer)`` after adding.
        """
        if isinstance(new_tokens, str) or not isinstance(new_tokens, Iterable):
            new_tokens = [new_tokens]
        before = len(self)
        for tok in new_tokens:
            if isinstance(tok, str) and not tok:
                continue  # transformers skips empty strings silently
            self._add_one(tok, special=special_tokens)
        self._rebuild_added()
        return len(self) - before

    def add_special_tokens(
        self, special_tokens_dict: Mapping[str, Any], replace_additional_special_tokens: bool = True
    ) -> int:
        """Set special tokens (``{"pad_token": "<|endoftext|>"}``), adding new ones to the
        vocabulary; returns how many ids are new."""
        before = len(self)
        for key, value in special_tokens_dict.items():
            if key == "additional_special_tokens":
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise TypeError("additional_special_tokens must be a list of tokens")
                contents = [self._add_one(v, special=True) for v in value]
                if replace_additional_special_tokens:
                    self._additional_special = []
                for c in contents:
                    if c not in self._additional_special:
                        self._additional_special.append(c)
            elif key in SPECIAL_TOKENS_ATTRIBUTES:
                self._special[key] = None if value is None else self._add_one(value, special=True)
            else:
                raise ValueError(
                    f"unknown special token key {key!r}; expected one of "
                    f"{[*SPECIAL_TOKENS_ATTRIBUTES, 'additional_special_tokens']}"
                )
        self._rebuild_added()
        return len(self) - before

    def _rebuild_added(self) -> None:
        """Recompile the added-token matcher (leftmost, then longest, as transformers' Trie)."""
        contents = sorted(self._added, key=len, reverse=True)
        self._added_changed = False
        self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None
        # one plain token (GPT-2's usual state): a substring test is cheaper than a regex search
        info = [self._added_info[self._added[c]] for c in contents]
        self._added_only = (
            contents[0]
            if len(contents) == 1 and not info[0].lstrip and not info[0].rstrip
            else None
        )
        self._on_vocab_changed()

    def _on_vocab_changed(self) -> None:
        """Hook: subclasses drop encoders that depend on the added tokens."""

    def _split_added(self, text: str) -> list[str | int]:
        """Split ``text`` on added tokens: text pieces (str, maybe empty) and token ids (int)."""
        if self._added_re is None or (
            self._added_only is not None and self._added_only not in text
        ):
            return [text]
        pieces: list[str | int] = []
        pos = 0
        strip_next = False
        for m in self._added_re.finditer(text):
            piece = text[pos : m.start()]
            if strip_next:
                piece = piece.lstrip()
            info = self._added_info[self._added[m.group()]]
            if info.lstrip:
                piece = piece.rstrip()
            pieces += [piece, self._added[m.group()]]
            strip_next = info.rstrip
            pos = m.end()
        rest = text[pos:]
        pieces.append(rest.lstrip() if strip_next else rest)
        return pieces

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {a: t for a, t in self._special.items() if t is not None}
        if self._additional_special:
            out["additional_special_tokens"] = list(self._additional_special)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        seen: dict[str, None] = {}
        for attr in SPECIAL_TOKENS_ATTRIBUTES:
            if self._special[attr] is not None:
                seen[self._special[attr]] = None
        for t in self._additional_special:
            seen[t] = None
        return list(seen)

    @property
    def all_special_ids(self) -> list[int]:
        return [self._added[t] for t in self.all_special_tokens]

    @property
    def additional_special_tokens(self) -> list[str]:
        return list(self._additional_special)

    def _set_special(self, attr: str, value: str | None) -> None:
        if value is None:
            self._special[attr] = None
            return
        content = _token_content(value)
        if content not in self._added and content not in self.encoder:
            raise ValueError(
                f"{content!r} is not in the vocabulary, so it cannot be the {attr}. Use an "
                f"existing token (tok.{attr} = tok.eos_token) or add it with "
                f"tok.add_special_tokens({{'{attr}': {content!r}}}) and resize the model's "
                "embeddings to len(tok)"
            )
        self._special[attr] = self._add_one(content, special=True)
        if self._added_changed:
            self._rebuild_added()

    def _special_id(self, attr: str) -> int | None:
        token = self._special[attr]
        return None if token is None else self._added[token]

    def _set_special_id(self, attr: str, value: int | None) -> None:
        if value is None:
            self._special[attr] = None
            return
        self._set_special(attr, self.convert_ids_to_tokens(int(value)))

    # -- checks and small helpers ---------------------------------------------------------------

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        if value not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {value!r}")
        self._padding_side = value

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        if value not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {value!r}")
        self._truncation_side = value

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _warn_if_too_long(self, n: int, max_length: int | None, verbose: bool = True) -> None:
        if max_length is None and verbose and 0 < self.model_max_length < n:
            self._warn_once(
                "too-long",
                "Token indices sequence length is longer than the specified maximum sequence "
                "length for this model (%d > %d). Running this sequence through the model will "
                "result in indexing errors",
                n,
                self.model_max_length,
            )

    def _unknown_id_message(self, i: Any) -> str:
        return (
            f"token id {i!r} is not in the vocabulary (valid ids: 0..{len(self._id_to_token) - 1}"
            f"{', with gaps' if None in self._id_to_token else ''})"
        )

    # -- encoding hooks (subclasses) ------------------------------------------------------------

    def _encode_text(self, text: str, add_prefix_space: bool) -> list[int]:
        """Ids of one checked string, special/added tokens included; no BOS."""
        raise NotImplementedError

    def _encode_batch(
        self,
        inputs: list[Any],
        *,
        is_split_into_words: bool,
        add_prefix_space: bool,
        return_offsets: bool,
    ) -> tuple[list[list[int]], list[list[tuple[int, int]]] | None, list[list[int | None]] | None]:
        """Ids (and offsets and word ids when ``return_offsets``) of checked strings or word lists."""
        raise NotImplementedError

    # -- encoding -------------------------------------------------------------------------------

    def tokenize(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs: Any
    ) -> list[str]:
        """Byte-level token strings of ``text`` ("Hello world" -> ["Hello", "Ġworld"])."""
        ids = self.encode(text, pair, add_special_tokens=add_special_tokens, **kwargs)
        return self.convert_ids_to_tokens(ids)

    def encode(
        self,
        text: Any,
        text_pair: Any = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Ids of one text (or pair): ``tok.encode("Hello world") == [15496, 995]``.

        Accepts the keyword arguments of ``__call__``; with ``return_tensors`` the result has a
        batch axis of 1.
        """
        if (
            type(text) is str
            and text_pair is None
            and padding is False
            and not truncation
            and max_length is None
            and set(kwargs) <= {"add_prefix_space", "verbose"}
        ):
            # hot path: no padding/truncation bookkeeping, no BatchEncoding
            aps = kwargs.get("add_prefix_space")
            ids = self._encode_text(
                _check_text(text), self.add_prefix_space if aps is None else bool(aps)
            )
            if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            self._warn_if_too_long(len(ids), None, kwargs.get("verbose", True))
            return ids
        if isinstance(text, list | tuple) and not kwargs.get("is_split_into_words"):
            raise TypeError(
                "encode takes one text (str), not a list; use tok(list_of_texts) for "
                "a batch or pass is_split_into_words=True for pre-split words"
            )
        enc = self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            **kwargs,
        )
        return enc["input_ids"]

    def encode_plus(self, text: Any, text_pair: Any = None, **kwargs: Any) -> BatchEncoding:
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: Any, **kwargs: Any) -> BatchEncoding:
        return self(list(batch_text_or_text_pairs), **kwargs)

    def _normalize_inputs(
        self, text: Any, text_pair: Any, is_split_into_words: bool
    ) -> tuple[bool, list[Any], list[Any] | None]:
        """(batched, first sequences, second sequences or None), every string checked."""

        def check_seq(x: Any, where: str) -> Any:
            if is_split_into_words:
                if isinstance(x, str):
                    return [_check_text(x, where)]
                if not isinstance(x, list | tuple):
                    raise TypeError(
                        f"{where} must be a list of words (str) with "
                        f"is_split_into_words=True, got {type(x).__name__}"
                    )
                return [_check_text(w, f"{where}[{j}]") for j, w in enumerate(x)]
            return _check_text(x, where)

        if text is None:
            raise TypeError("a text is required: tok('Hello world') or tok(['a', 'b'])")
        if is_split_into_words:
            batched = isinstance(text, list | tuple) and bool(text) and not isinstance(text[0], str)
        else:
            batched = isinstance(text, list | tuple)
        if not batched:
            firsts = [check_seq(text, "text")]
            seconds = None if text_pair is None else [check_seq(text_pair, "text_pair")]
            return False, firsts, seconds
        if (
            text_pair is None
            and not is_split_into_words
            and text
            and all(isinstance(t, list | tuple) for t in text)
        ):
            # batch of (text, text_pair) pairs
            if any(len(t) != 2 for t in text):
                raise ValueError("a batch of pairs must hold (text, text_pair) 2-tuples")
            text_pair = [t[1] for t in text]
            text = [t[0] for t in text]
        firsts = [check_seq(t, f"text[{i}]") for i, t in enumerate(text)]
        seconds = None
        if text_pair is not None:
            if not isinstance(text_pair, list | tuple) or len(text_pair) != len(text):
                raise ValueError("text_pair must be a list as long as the batch of texts")
            seconds = [check_seq(t, f"text_pair[{i}]") for i, t in enumerate(text_pair)]
        return True, firsts, seconds

    def _strategies(
        self,
        padding: Any,
        truncation: Any,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        verbose: bool,
    ) -> tuple[str, str, int | None]:
        """transformers' ``_get_padding_truncation_strategies``: (padding, truncation, max_length)."""
        if max_length is not None and padding is False and truncation is None:
            if verbose:
                self._warn_once(
                    "trunc-implicit",
                    "Truncation was not explicitly activated but `max_length` is provided a "
                    "specific value, please use `truncation=True` to explicitly truncate examples "
                    "to max length. Defaulting to 'longest_first' truncation strategy.",
                )
            truncation = "longest_first"
        padding = getattr(padding, "value", padding)
        truncation = getattr(truncation, "value", truncation)
        if padding is True:
            if (
                verbose
                and max_length is not None
                and truncation in (None, False, "do_not_truncate")
            ):
                logger.warning(
                    "`max_length` is ignored when `padding`=`True` and there is no "
                    "truncation strategy. To pad to max length, use "
                    "`padding='max_length'`."
                )
            pad = "longest"
        elif padding is False or padding is None:
            pad = "do_not_pad"
        elif padding in PADDING_STRATEGIES:
            pad = padding
        else:
            raise ValueError(
                f"padding must be True, False or one of {PADDING_STRATEGIES}, got {padding!r}"
            )
        if truncation is True:
            trunc = "longest_first"
        elif truncation is False or truncation is None:
            trunc = "do_not_truncate"
        elif truncation in TRUNCATION_STRATEGIES:
            trunc = truncation
        else:
            raise ValueError(
                f"truncation must be True, False or one of {TRUNCATION_STRATEGIES}, "
                f"got {truncation!r}"
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        if max_length is None and (pad == "max_length" or trunc != "do_not_truncate"):
            max_length = self.model_max_length
        if pad != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(
                "Asking to pad but the tokenizer does not have a padding token. Please select a "
                "token to use as `pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)` or "
                "add a new pad token via `tokenizer.add_special_tokens({'pad_token': '[PAD]'})`."
            )
        if (
            trunc != "do_not_truncate"
            and pad != "do_not_pad"
            and pad_to_multiple_of
            and max_length is not None
            and max_length % pad_to_multiple_of
        ):
            raise ValueError(
                f"Truncation and padding are both activated but truncation length "
                f"({max_length}) is not a multiple of pad_to_multiple_of "
                f"({pad_to_multiple_of})."
            )
        return pad, trunc, max_length

    def __call__(
        self,
        text: Any = None,
        text_pair: Any = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        add_prefix_space: bool | None = None,
    ) -> BatchEncoding:
        """Tokenize a text, a list of texts, pairs, or pre-split words into model inputs.

        Args:
            text: a str, a list of str (a batch), a list of (text, text_pair) tuples, or with
                ``is_split_into_words=True`` a list of words (one example) or a list of lists.
            text_pair: second sequence(s), concatenated after ``text`` (GPT-2 has no separator).
            padding: True/"longest", "max_length" or False. Needs ``pad_token``.
            truncation: True/"longest_first", "only_first", "only_second" or False; truncates
                to ``max_length`` (default ``model_max_length``).
            padding_side: "right" or "left" for this call (left for batched generation).
            return_tensors: "np", "pt", "tf" or "jax" (imported only when asked).
            return_offsets_mapping: character (start, end) of each token; fast class only.
            add_prefix_space: per-call override of the attribute.

        Returns:
            A :class:`BatchEncoding` with ``input_ids`` and ``attention_mask`` (plus what was
            asked for); lists of lists for a batch.
        """
        if stride or return_overflowing_tokens:
            raise NotImplementedError(
                "return_overflowing_tokens/stride are not supported; "
                "split long texts before tokenizing"
            )
        if return_offsets_mapping and not self.is_fast:
            raise NotImplementedError(
                "return_offsets_mapping is not available with the pure-Python GPT2Tokenizer; "
                "use gpt2_core.GPT2TokenizerFast"
            )
        tensor_type = _tensor_type(return_tensors)
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        pad, trunc, max_length = self._strategies(
            padding, truncation, max_length, pad_to_multiple_of, verbose
        )
        batched, firsts, seconds = self._normalize_inputs(text, text_pair, is_split_into_words)
        aps = self.add_prefix_space if add_prefix_space is None else bool(add_prefix_space)
        want_words = self.is_fast and (return_offsets_mapping or is_split_into_words)
        ids_a, offs_a, words_a = self._encode_batch(
            firsts,
            is_split_into_words=is_split_into_words,
            add_prefix_space=aps,
            return_offsets=want_words,
        )
        ids_b = offs_b = words_b = None
        if seconds is not None:
            ids_b, offs_b, words_b = self._encode_batch(
                seconds,
                is_split_into_words=is_split_into_words,
                add_prefix_space=aps,
                return_offsets=want_words,
            )

        want_mask = (
            "attention_mask" in self.model_input_names
            if (return_attention_mask is None)
            else bool(return_attention_mask)
        )
        want_types = bool(return_token_type_ids)
        columns: dict[str, list[Any]] = {"input_ids": []}
        if want_types:
            columns["token_type_ids"] = []
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = []
        if return_offsets_mapping:
            columns["offset_mapping"] = []
        word_ids: list[list[int | None]] | None = [] if want_words else None
        lengths = []
        bos = (
            [self.bos_token_id]
            if (add_special_tokens and self.add_bos_token and self.bos_token_id is not None)
            else []
        )
        for i, a in enumerate(ids_a):
            b = None if ids_b is None else ids_b[i]
            oa = offs_a[i] if offs_a is not None else None
            ob = offs_b[i] if offs_b is not None and b is not None else None
            wa = words_a[i] if words_a is not None else None
            wb = words_b[i] if words_b is not None and b is not None else None
            if trunc != "do_not_truncate":
                n_special = len(bos) * (1 + (b is not None and self._bos_before_pair))
                total = len(a) + (len(b) if b is not None else 0) + n_special
                if total > max_length:
                    ka, kb = self._truncation_slices(
                        len(a), None if b is None else len(b), total - max_length, trunc
                    )
                    a, oa, wa = (None if x is None else x[ka] for x in (a, oa, wa))
                    if b is not None:
                        b, ob, wb = (None if x is None else x[kb] for x in (b, ob, wb))
            # layout: bos a (bos) b -- a copy only when something is prepended or appended
            second_bos = bos if self._bos_before_pair else []
            seq = bos + a if b is None else bos + a + second_bos + b
            columns["input_ids"].append(seq)
            if want_types:
                columns["token_type_ids"].append(
                    [0] * (len(bos) + len(a))
                    + ([] if b is None else [1] * (len(second_bos) + len(b)))
                )
            if return_special_tokens_mask:
                columns["special_tokens_mask"].append(
                    [1] * len(bos)
                    + [0] * len(a)
                    + ([] if b is None else [1] * len(second_bos) + [0] * len(b))
                )
            if return_offsets_mapping:
                zero = [(0, 0)] * len(bos)
                columns["offset_mapping"].append(
                    zero + oa if b is None else zero + oa + [(0, 0)] * len(second_bos) + ob
                )
            if word_ids is not None:
                nones = [None] * len(bos)
                word_ids.append(
                    nones + wa if b is None else nones + wa + [None] * len(second_bos) + wb
                )
            lengths.append(len(seq))
            self._warn_if_too_long(len(seq), max_length, verbose)
        if want_mask:
            columns["attention_mask"] = [[1] * n for n in lengths]
        if pad != "do_not_pad":
            self._pad_columns(columns, word_ids, pad, max_length, pad_to_multiple_of, side)
        if return_length:
            columns["length"] = lengths
        order = [
            "input_ids",
            "token_type_ids",
            "attention_mask",
            "special_tokens_mask",
            "offset_mapping",
            "length",
        ]
        data = {k: columns[k] for k in order if k in columns}
        if not batched:
            data = {k: v[0] for k, v in data.items()}
            if tensor_type is not None:  # a single example becomes a batch of one
                data = {k: [v] for k, v in data.items()}
            word_ids = word_ids if word_ids is None else word_ids[:1]
        return BatchEncoding(data, tensor_type=tensor_type, word_ids=word_ids)

    def _truncation_slices(
        self, la: int, lb: int | None, remove: int, strategy: str
    ) -> tuple[slice, slice]:
        """Slices keeping what transformers' ``truncate_sequences`` keeps."""
        keep_all = slice(None)
        left = self.truncation_side == "left"

        def cut(n: int, k: int) -> slice:  # drop k of n tokens
            return slice(k, None) if left else slice(0, n - k)

        if strategy == "only_first" or (strategy == "longest_first" and lb is None):
            if la > remove:
                return cut(la, remove), keep_all
            msg = (
                f"We need to remove {remove} to truncate the input but the first sequence has "
                f"a length {la}."
            )
            if strategy == "only_first":
                msg += (
                    " Please select another truncation strategy than only_first, for instance "
                    "'longest_first' or 'only_second'."
                )
            logger.error(msg)
            return keep_all, keep_all
        if strategy == "only_second":
            if lb is None:
                return keep_all, keep_all
            if lb > remove:
                return keep_all, cut(lb, remove)
            logger.error(
                f"We need to remove {remove} to truncate the input but the second "
                f"sequence has a length {lb}. Please select another truncation strategy "
                "than only_second, for instance 'longest_first' or 'only_first'."
            )
            return keep_all, keep_all
        # longest_first on a pair: even out the lengths first, then split the rest
        first = min(abs(lb - la), remove)
        second = remove - first
        if la > lb:
            ra, rb = first + second // 2, second - second // 2
        else:
            ra, rb = second // 2, first + second - second // 2
        return cut(la, min(ra, la)), cut(lb, min(rb, lb))

    def _pad_columns(
        self,
        columns: dict[str, list[Any]],
        word_ids: list[list[Any]] | None,
        strategy: str,
        max_length: int | None,
        multiple: int | None,
        side: str,
    ) -> None:
        """Pad every column in place (transformers' ``_pad``)."""
        seqs = columns["input_ids"]
        if strategy == "longest":
            target = max((len(s) for s in seqs), default=0)
        else:
            target = max_length if max_length is not None else self.model_max_length
        if multiple and target % multiple:
            target = (target // multiple + 1) * multiple
        fill = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": 0,
            "special_tokens_mask": 1,
            "offset_mapping": (0, 0),
        }
        for key, rows in columns.items():
            value = fill.get(key)
            if key not in fill:
                continue
            for r, row in enumerate(rows):
                d = target - len(row)
                if d > 0:
                    rows[r] = row + [value] * d if side == "right" else [value] * d + row
        if word_ids is not None:
            for r, row in enumerate(word_ids):
                d = target - len(row)
                if d > 0:
                    word_ids[r] = row + [None] * d if side == "right" else [None] * d + row

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pad already-encoded inputs (a dict of lists, or a list of dicts as data collators pass).

        Keys the tokenizer knows (input_ids, attention_mask, token_type_ids,
        special_tokens_mask, offset_mapping) are padded; others are left as they are.
        """
        if (
            isinstance(encoded_inputs, list | tuple)
            and encoded_inputs
            and isinstance(encoded_inputs[0], Mapping)
        ):
            encoded_inputs = {k: [ex[k] for ex in encoded_inputs] for k in encoded_inputs[0]}
        if not isinstance(encoded_inputs, Mapping) or "input_ids" not in encoded_inputs:
            raise ValueError("pad() needs a dict (or list of dicts) with 'input_ids'")
        data = {k: _to_nested_list(v) for k, v in encoded_inputs.items()}
        ids = data["input_ids"]
        batched = bool(ids) and isinstance(ids[0], list)
        if not batched:
            data = {k: [v] for k, v in data.items()}
        pad, _, max_length = self._strategies(
            padding, False, max_length, pad_to_multiple_of, verbose
        )
        want_mask = (
            "attention_mask" in self.model_input_names
            if (return_attention_mask is None)
            else bool(return_attention_mask)
        )
        if want_mask and "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(s) for s in data["input_ids"]]
        if not want_mask:
            data.pop("attention_mask", None)
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        if pad != "do_not_pad":
            self._pad_columns(data, None, pad, max_length, pad_to_multiple_of, side)
        if not batched:
            data = {k: v[0] for k, v in data.items()}
            if return_tensors is not None:
                data = {k: [v] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=_tensor_type(return_tensors))

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        if token_ids_1 is None:
            return bos + token_ids_0
        return bos + token_ids_0 + (bos if self._bos_before_pair else []) + token_ids_1

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        if not self.add_bos_token:
            return 0
        return 2 if pair and self._bos_before_pair else 1

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [int(i in special) for i in token_ids_0 + (token_ids_1 or [])]
        bos = [1] if self.add_bos_token else []
        if token_ids_1 is None:
            return bos + [0] * len(token_ids_0)
        return (
            bos
            + [0] * len(token_ids_0)
            + (bos if self._bos_before_pair else [])
            + [0] * len(token_ids_1)
        )

    # -- decoding -------------------------------------------------------------------------------

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of ``token_ids`` (list, numpy array or framework tensor).

        Bytes that do not form valid UTF-8 (a sequence cut inside a character) become U+FFFD
        (``errors="replace"``, transformers' default). ``clean_up_tokenization_spaces`` defaults
        to False, as transformers 4.57 does for GPT-2.
        """
        ids = _to_id_list(token_ids)
        table = self._id_to_bytes
        if ids:
            try:
                lo, hi = min(ids), max(ids)
            except TypeError:
                raise TypeError("token ids must be integers") from None
            if lo < 0 or hi >= len(table):
                raise ValueError(self._unknown_id_message(lo if lo < 0 else hi))
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [i for i in ids if i not in special]
        try:
            data = b"".join([table[i] for i in ids])
        except TypeError:  # a None hole in a gappy vocabulary, or a non-integer id
            bad = next((i for i in ids if not _is_int(i) or table[i] is None), None)
            if bad is not None and not _is_int(bad):
                raise TypeError(f"token ids must be integers, got {bad!r}") from None
            raise ValueError(self._unknown_id_message(bad)) from None
        text = data.decode("utf-8", errors=self.errors)
        clean = (
            self.clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is None
            else clean_up_tokenization_spaces
        )
        return clean_up_tokenization(text) if clean else text

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """:meth:`decode` for each sequence of a batch (nested lists or a 2-D array/tensor)."""
        rows = _to_nested_list(sequences)
        return [self.decode(r, skip_special_tokens, clean_up_tokenization_spaces) for r in rows]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, "
            f"vocab_size={self.vocab_size}, len={len(self)}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"add_prefix_space={self.add_prefix_space}, add_bos_token={self.add_bos_token}, "
            f"special_tokens={self.special_tokens_map})"
        )


def _special_property(attr: str) -> tuple[property, property]:
    def get_token(self: GPT2TokenizerBase) -> str | None:
        return self._special[attr]

    def set_token(self: GPT2TokenizerBase, value: str | None) -> None:
        self._set_special(attr, value)

    def get_id(self: GPT2TokenizerBase) -> int | None:
        return self._special_id(attr)

    def set_id(self: GPT2TokenizerBase, value: int | None) -> None:
        self._set_special_id(attr, value)

    return (
        property(get_token, set_token, doc=f"The {attr.replace('_', ' ')} (or None)."),
        property(get_id, set_id, doc=f"Id of the {attr.replace('_', ' ')} (or None)."),
    )


for _attr in SPECIAL_TOKENS_ATTRIBUTES:
    _tok_prop, _id_prop = _special_property(_attr)
    setattr(GPT2TokenizerBase, _attr, _tok_prop)
    setattr(GPT2TokenizerBase, f"{_attr}_id", _id_prop)
del _attr, _tok_prop, _id_prop


def clean_up_tokenization(text: str) -> str:
    """transformers' English clean-up: no space before punctuation and contractions."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _is_int(x: Any) -> bool:
    """A Python or numpy integer (bool excluded)."""
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _to_nested_list(x: Any) -> Any:
    """Lists, numpy arrays and torch/TF/JAX tensors -> (nested) Python lists."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # torch / TF tensors
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x.numpy()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, list | tuple):
        return [_to_nested_list(v) if not isinstance(v, int | str) else v for v in x]
    return x


def _to_id_list(ids: Any) -> list[int]:
    """One sequence of ids (int, list, array or tensor) -> a list; TypeError for anything else."""
    if _is_int(ids):
        return [ids]
    if isinstance(ids, str | bytes | bool) or ids is None:
        raise TypeError(
            f"token ids must be a sequence of ints, got {type(ids).__name__}"
            f"{'; did you mean encode()?' if isinstance(ids, str) else ''}"
        )
    out = _to_nested_list(ids)
    if _is_int(out):  # a 0-d array or tensor
        return [out]
    if not isinstance(out, list):
        out = list(out)
    if out and isinstance(out[0], list):
        raise TypeError("decode takes one sequence of ids; use batch_decode for a batch")
    if not (isinstance(ids, np.ndarray) and ids.dtype.kind in "iu"):
        for i in out:  # None, True, 1.5, "a": a clear TypeError, never a silent id
            if type(i) is not int and not _is_int(i):
                raise TypeError(f"token ids must be integers, got {i!r}")
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
