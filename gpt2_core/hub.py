"""Resolve a local directory or a Hugging Face hub id to local files.

The hub is optional: ``huggingface_hub`` is imported only when an id is not a local directory,
and any failure (package missing, offline, no such repo) becomes a :class:`HubError` that says
how to use a local directory instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt2_core import presets

#: files a GPT-2 checkpoint directory may hold; a snapshot fetches only these.
CHECKPOINT_PATTERNS = [
    "config.json", "generation_config.json",
    "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin",
    "tf_model.h5", "flax_model.msgpack",
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json",
]


class HubError(OSError):
    """A hub id could not be resolved; the message names the local-directory alternative."""


def _offline_help(name: str, why: str) -> str:
    return (
        f"cannot fetch {name!r} from the Hugging Face hub ({why}). "
        f"Pass a local directory instead: download the repository once on a machine with "
        f"network access (e.g. `huggingface-cli download {presets.hub_id(name)} --local-dir DIR`) "
        f"and use DIR, or convert your own checkpoint with `gpt2 convert`."
    )


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).exists()


def resolve_dir(name_or_path: str | os.PathLike, *, allow_patterns: list[str] | None = None) -> Path:
    """A local directory holding the checkpoint: ``name_or_path`` itself, or a hub snapshot."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{p} is a file; expected a checkpoint directory")
    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such directory: {name}")
    repo_id = presets.hub_id(name)
    hf = _import_hub(name)
    try:
        local = hf.snapshot_download(repo_id, allow_patterns=allow_patterns or CHECKPOINT_PATTERNS)
    except Exception as e:  # network errors, missing repo, offline mode ...
        raise HubError(_offline_help(name, f"{type(e).__name__}: {e}")) from e
    return Path(local)


def resolve_file(name_or_path: str | os.PathLike, filename: str) -> Path:
    """Path of ``filename`` in a local directory or in a hub repository."""
    p = Path(name_or_path)
    if p.is_dir():
        f = p / filename
        if not f.is_file():
            raise FileNotFoundError(f"{p} has no {filename}")
        return f
    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such directory: {name}")
    hf = _import_hub(name)
    try:
        return Path(hf.hf_hub_download(presets.hub_id(name), filename))
    except Exception as e:
        raise HubError(_offline_help(name, f"{type(e).__name__}: {e}")) from e


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "owner/name"; anything else is a path the user mistyped
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep in name and name.count(os.sep) > 1
        or name.endswith(os.sep)
    )


def _import_hub(name: str):
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HubError(_offline_help(name, "HF_HUB_OFFLINE is set"))
    try:
        import huggingface_hub
    except ImportError as e:
        raise HubError(
            _offline_help(name, "huggingface_hub is not installed; pip install 'gpt2-zoo[hub]'")
        ) from e
    return huggingface_hub
