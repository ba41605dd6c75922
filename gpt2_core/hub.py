"""Resolve a local directory or a Hugging Face hub id to local files.

The hub is optional: ``huggingface_hub`` is imported only when an id is not a local directory,
and any failure (package missing, offline, no such repo) becomes a :class:`HubError` that says
how to use a local directory instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gpt2_core import presets

logger = logging.getLogger(__name__)

#: files a GPT-2 checkpoint directory may hold; a snapshot fetches only these.
CHECKPOINT_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


class HubError(OSError):
    """A hub id could not be resolved; the message names the local-directory alternative."""


def _offline_help(name: str, why: str) -> str:
    return (
        f"cannot fetch {name!r} from the Hugging Face hub ({why}). "
        f"Pass a local directory instead: download the repository once on a machine with "
        f"network access (e.g. `hf download {presets.hub_id(name)} --local-dir DIR`) "
        f"and use DIR, or convert your own checkpoint with `gpt2 convert`."
    )


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).exists()


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) is set: use the cache only."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it: ``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache/huggingface/hub``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_aliases(name: str) -> list[str]:
    """The repository ids a name may be cached under: a preset's current id first, then the
    legacy one (``gpt2`` and ``openai-community/gpt2`` are the same repository; older caches
    hold it as ``models--gpt2``)."""
    ids = [presets.hub_id(name)]
    if presets.is_preset(name):
        ids.append(presets.preset_name(name))
    ids.append(name)
    return list(dict.fromkeys(ids))


def cached_snapshot(name: str, filename: str | None = None) -> Path | None:
    """A snapshot directory of ``name`` in the local hub cache, without any network, or None.

    Looks at ``models--<owner>--<name>`` for every alias of :func:`repo_aliases`, takes the
    snapshot ``refs/main`` points at (else the newest one), and accepts it when it holds
    ``filename`` (or, without one, a config.json or weight file).
    """
    root = cache_dir()
    wanted = [filename] if filename else [_CONFIG_FILE, *_WEIGHT_FILES]
    for repo in repo_aliases(name):
        repo_dir = root / ("models--" + repo.replace("/", "--"))
        snaps = repo_dir / "snapshots"
        if not snaps.is_dir():
            continue
        candidates = []
        ref = repo_dir / "refs" / "main"
        if ref.is_file():
            candidates.append(snaps / ref.read_text(encoding="utf-8").strip())
        candidates += sorted(
            (d for d in snaps.iterdir() if d.is_dir()),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for snap in candidates:
            if snap.is_dir() and any((snap / f).is_file() for f in wanted):
                return snap
    return None


_CONFIG_FILE = "config.json"
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
)


def _not_cached(name: str, what: str) -> str:
    looked = ", ".join("models--" + r.replace("/", "--") for r in repo_aliases(name))
    return f"{what}, and {name!r} is not in the local hub cache {cache_dir()} (looked for {looked})"


def resolve_dir(
    name_or_path: str | os.PathLike, *, allow_patterns: list[str] | None = None
) -> Path:
    """A local directory holding the checkpoint: ``name_or_path`` itself, or a hub snapshot.

    A hub id is looked up in the local Hugging Face cache when ``HF_HUB_OFFLINE`` is set, when
    huggingface_hub is not installed, or when the download fails; otherwise it is fetched
    (``snapshot_download``, which itself reuses the cache).
    """
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if p.exists():
        raise NotADirectoryError(f"{p} is a file; expected a checkpoint directory")
    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such directory: {name}")
    repo_id = presets.hub_id(name)
    if offline():
        cached = cached_snapshot(name)
        if cached is not None:
            return cached
        raise HubError(_offline_help(name, _not_cached(name, "HF_HUB_OFFLINE is set")))
    hf = _import_hub(name)
    if hf is None:
        return cached_snapshot(name)
    try:
        local = hf.snapshot_download(repo_id, allow_patterns=allow_patterns or CHECKPOINT_PATTERNS)
    except Exception as e:  # network errors, missing repo ...
        cached = cached_snapshot(name)
        if cached is not None:
            logger.warning(
                "could not reach the hub for %s (%s); using the cached snapshot %s",
                repo_id,
                type(e).__name__,
                cached,
            )
            return cached
        raise HubError(_offline_help(name, f"{type(e).__name__}: {e}")) from e
    return Path(local)


def resolve_file(name_or_path: str | os.PathLike, filename: str) -> Path:
    """Path of ``filename`` in a local directory or in a hub repository (cache first when
    offline, as :func:`resolve_dir`)."""
    p = Path(name_or_path)
    if p.is_dir():
        f = p / filename
        if not f.is_file():
            raise FileNotFoundError(f"{p} has no {filename}")
        return f
    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"no such directory: {name}")
    if offline():
        cached = cached_snapshot(name, filename)
        if cached is not None:
            return cached / filename
        raise HubError(_offline_help(name, _not_cached(name, "HF_HUB_OFFLINE is set")))
    hf = _import_hub(name, filename)
    if hf is None:
        return cached_snapshot(name, filename) / filename
    try:
        return Path(hf.hf_hub_download(presets.hub_id(name), filename))
    except Exception as e:
        cached = cached_snapshot(name, filename)
        if cached is not None:
            return cached / filename
        raise HubError(_offline_help(name, f"{type(e).__name__}: {e}")) from e


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "owner/name"; anything else is a path the user mistyped
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep in name
        and name.count(os.sep) > 1
        or name.endswith(os.sep)
    )


def _import_hub(name: str, filename: str | None = None):
    """huggingface_hub, or a HubError -- unless the cache already holds ``name``, in which case
    None (the caller uses the cache)."""
    try:
        import huggingface_hub
    except ImportError as e:
        if cached_snapshot(name, filename) is not None:
            return None
        raise HubError(
            _offline_help(
                name,
                _not_cached(name, "huggingface_hub is not installed; pip install 'gpt2-zoo[hub]'"),
            )
        ) from e
    return huggingface_hub
