"""Reading and writing tokenizer files: vocab.json, merges.txt, tokenizer.json,
tokenizer_config.json / special_tokens_map.json / added_tokens.json, and the vocabulary shipped
in ``gpt2_core/assets/gpt2``. Framework-free; used by both tokenizers through
``gpt2_core._tokenizer_base``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from gpt2_core import hub, presets
from gpt2_core.io_utils import load_json_file, read_regular_file
from gpt2_core.tokenization import (
    ADDED_TOKENS_FILE,
    DEFAULT_MODEL_MAX_LENGTH,
    SPECIAL_TOKENS_ATTRIBUTES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_PATTERNS,
    VOCAB_FILES_NAMES,
    AddedToken,
    _as_added_token,
    _token_content,
    token_to_bytes,
)

logger = logging.getLogger(__name__)


def parse_merges(text: str, source: str = "merges.txt") -> list[tuple[str, str]]:
    """Merges from a merges.txt body: one ``"a b"`` pair per line after the ``#version`` header.

    transformers' slow tokenizer drops the first and last line unconditionally
    (``split("\\n")[1:-1]``); we skip only the header and blank lines, so a file without a final
    newline keeps its last merge.
    """
    merges = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")  # byte-level symbols never contain "\r" (it is "č")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(
                f"{source}:{lineno}: expected two symbols separated by a space, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _merges_from_json(raw: Sequence[Any]) -> list[tuple[str, str]]:
    # tokenizers wrote "a b" strings before 0.20 and [a, b] pairs since
    out = []
    for m in raw:
        a, b = m.split(" ") if isinstance(m, str) else m
        out.append((a, b))
    return out


@dataclasses.dataclass
class VocabFiles:
    """Parsed tokenizer files: base vocabulary, merges, added tokens and init settings."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    added: list[tuple[int, AddedToken]] = dataclasses.field(default_factory=list)
    init_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


#: tokenizer files are read with a size cap (GPT-2's tokenizer.json is 1.4 MB)
_MAX_TOKENIZER_FILE = 256 * 1024 * 1024


def _read_text(path: str | os.PathLike, what: str) -> str:
    data = read_regular_file(path, _MAX_TOKENIZER_FILE, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 ({e})") from e


def _json_object(path: Path) -> dict[str, Any]:
    d = load_json_file(path, "tokenizer config", _MAX_TOKENIZER_FILE)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def read_tokenizer_json(path: str | os.PathLike) -> VocabFiles:
    """Vocabulary, merges, added tokens and ``add_prefix_space`` from a tokenizers tokenizer.json."""
    data = load_json_file(path, "tokenizer file", _MAX_TOKENIZER_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{path} does not hold a BPE model (type {model.get('type')!r})")
    vocab = dict(model["vocab"])
    added = [
        (int(t["id"]), _as_added_token(t, special=False)) for t in data.get("added_tokens", [])
    ]
    init: dict[str, Any] = {}
    pre = data.get("pre_tokenizer") or {}
    for p in [pre, *pre.get("pretokenizers", [])]:
        if p.get("type") == "ByteLevel" and "add_prefix_space" in p:
            init["add_prefix_space"] = bool(p["add_prefix_space"])
    post = data.get("post_processor") or {}
    for p in [post, *post.get("processors", [])]:
        if p.get("type") == "ByteLevel" and p.get("trim_offsets"):
            init["trim_offsets"] = True
    return VocabFiles(vocab, _merges_from_json(model["merges"]), added, init)


@functools.cache
def _shipped_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # cached: parsing takes ~50 ms; callers copy before keeping anything mutable
    root = resources.files("gpt2_core").joinpath("assets", "gpt2")
    vocab = json.loads(root.joinpath("vocab.json").read_text("utf-8"))
    merges = parse_merges(root.joinpath("merges.txt").read_text("utf-8"), "assets/gpt2/merges.txt")
    return vocab, tuple(merges)


def shipped_vocab_files() -> VocabFiles:
    """GPT-2's real vocabulary, shipped in the package (``gpt2_core/assets/gpt2``)."""
    vocab, merges = _shipped_files()
    return VocabFiles(dict(vocab), list(merges))


@functools.cache
def _shipped_tables() -> tuple[tuple[str, ...], tuple[bytes, ...], dict[tuple[str, str], int]]:
    # derived tables of the shipped vocabulary, built once per process (~100 ms) and copied
    vocab, merges = _shipped_files()
    id_to_token = tuple(sorted(vocab, key=vocab.__getitem__))
    return (
        id_to_token,
        tuple(token_to_bytes(t) for t in id_to_token),
        {m: i for i, m in enumerate(merges)},
    )


def is_shipped_vocab(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> bool:
    """True when ``vocab``/``merges`` are exactly GPT-2's (then tiktoken's BPE is exact)."""
    ref_vocab, ref_merges = _shipped_files()
    return len(merges) == len(ref_merges) and vocab == ref_vocab and tuple(merges) == ref_merges


def load_vocab_files(
    vocab_file: Any = None, merges_file: Any = None, tokenizer_file: Any = None
) -> VocabFiles:
    """Vocabulary from paths or in-memory objects; the shipped GPT-2 files when all are None."""
    if tokenizer_file is not None:
        return read_tokenizer_json(tokenizer_file)
    if vocab_file is None and merges_file is None:
        return shipped_vocab_files()
    if vocab_file is None or merges_file is None:
        raise ValueError(
            "pass both vocab_file and merges_file (or tokenizer_file, or neither "
            "for GPT-2's shipped vocabulary)"
        )
    if isinstance(vocab_file, Mapping):
        vocab = dict(vocab_file)
    else:
        vocab = load_json_file(vocab_file, "vocabulary file", _MAX_TOKENIZER_FILE)
        if not isinstance(vocab, dict):
            raise ValueError(f"{vocab_file}: expected a JSON object of token -> id")
    if isinstance(merges_file, str | os.PathLike):
        merges = parse_merges(_read_text(merges_file, "merges file"), str(merges_file))
    else:
        merges = _merges_from_json(list(merges_file))
    return VocabFiles(vocab, merges)


def read_pretrained(name_or_path: str | os.PathLike, *, prefer_tokenizer_json: bool) -> VocabFiles:
    """Everything ``from_pretrained`` needs from a preset name, a directory or a hub id."""
    name = os.fspath(name_or_path)
    if not Path(name).is_dir() and presets.is_preset(name):
        files = shipped_vocab_files()
        files.init_kwargs["model_max_length"] = DEFAULT_MODEL_MAX_LENGTH
        return files
    d = hub.resolve_dir(name, allow_patterns=TOKENIZER_PATTERNS)
    have_json = (d / VOCAB_FILES_NAMES["tokenizer_file"]).is_file()
    have_bpe = all((d / VOCAB_FILES_NAMES[k]).is_file() for k in ("vocab_file", "merges_file"))
    if have_json and (prefer_tokenizer_json or not have_bpe):
        files = read_tokenizer_json(d / VOCAB_FILES_NAMES["tokenizer_file"])
    elif have_bpe:
        files = load_vocab_files(d / "vocab.json", d / "merges.txt")
    else:
        raise FileNotFoundError(
            f"{d} has no tokenizer files: expected vocab.json + merges.txt or tokenizer.json"
        )
    config: dict[str, Any] = {}
    if (d / TOKENIZER_CONFIG_FILE).is_file():
        config = _json_object(d / TOKENIZER_CONFIG_FILE)
    if (d / SPECIAL_TOKENS_MAP_FILE).is_file():
        # as transformers: special_tokens_map.json wins over tokenizer_config.json
        config.update(_json_object(d / SPECIAL_TOKENS_MAP_FILE))
    added = {i: t for i, t in files.added}
    for i, t in (config.pop("added_tokens_decoder", None) or {}).items():
        added[int(i)] = _as_added_token(t, special=False)
    if (d / ADDED_TOKENS_FILE).is_file():  # legacy file, only used when nothing else says
        for content, i in _json_object(d / ADDED_TOKENS_FILE).items():
            if int(i) not in added:
                added[int(i)] = _as_added_token(content, special=False)
    files.added = sorted(added.items())
    files.init_kwargs.update(_init_kwargs_from_config(config))
    return files


_CONFIG_KEYS = (
    "errors",
    "add_prefix_space",
    "add_bos_token",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "clean_up_tokenization_spaces",
    "additional_special_tokens",
    *SPECIAL_TOKENS_ATTRIBUTES,
)


def _init_kwargs_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in _CONFIG_KEYS:
        if key not in config:
            continue
        value = config[key]
        if key in SPECIAL_TOKENS_ATTRIBUTES:
            value = _token_content(value)
        elif key == "additional_special_tokens":
            value = [_token_content(v) for v in value or []]
        elif key == "model_max_length" and value is not None:
            value = int(value)
        out[key] = value
    ignored = sorted(
        set(config)
        - set(_CONFIG_KEYS)
        - {"tokenizer_class", "extra_special_tokens", "name_or_path", "auto_map"}
    )
    if ignored:
        logger.debug("tokenizer config keys not used by gpt2_core: %s", ignored)
    return out


def dump_vocab(vocab: Mapping[str, int]) -> str:
    """``json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\\n"`` (transformers'
    vocab.json layout), 20x faster: indent makes json use its pure-Python encoder."""
    if not vocab:
        return "{}\n"
    enc = json.JSONEncoder(ensure_ascii=False).encode
    body = ",\n".join(f"  {enc(k)}: {int(v)}" for k, v in sorted(vocab.items()))
    return "{\n" + body + "\n}\n"
