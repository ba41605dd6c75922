"""Checkpoint directories: detect the format, read a canonical state dict, write one.

This is what every backend's ``from_pretrained`` / ``save_pretrained`` calls:

    config, state_dict, report = load_pretrained("path/or/hub-id", head="lm")
    save_pretrained(state_dict, config, "out/", head="lm", max_shard_size="2GB")

``state_dict`` is canonical (see :mod:`gpt2_core.naming`): numpy arrays with HF PyTorch names
and layouts, keys as in the ``head`` model (``transformer.`` prefix except for the base model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from gpt2_core import hub, lowmem, naming
from gpt2_core.config import CONFIG_NAME, GPT2Config
from gpt2_core.formats import safetensors as st
from gpt2_core.io_utils import check_weight_file

logger = logging.getLogger(__name__)

#: format name -> the file that marks it, in the order transformers prefers them.
FORMAT_FILES: dict[str, str] = {
    "safetensors-sharded": st.SAFE_WEIGHTS_INDEX_NAME,
    "safetensors": st.SAFE_WEIGHTS_NAME,
    "pytorch-sharded": "pytorch_model.bin.index.json",
    "pytorch": "pytorch_model.bin",
    "tf": "tf_model.h5",
    "flax": "flax_model.msgpack",
}
FORMATS = tuple(FORMAT_FILES)
# --prefer / --to names users type
_FORMAT_ALIASES = {
    "safetensors": ("safetensors-sharded", "safetensors"),
    "pytorch": ("pytorch-sharded", "pytorch"),
    "bin": ("pytorch-sharded", "pytorch"),
    "tf": ("tf",),
    "h5": ("tf",),
    "flax": ("flax",),
    "msgpack": ("flax",),
}

_DTYPES = {
    "fp32": np.float32,
    "float32": np.float32,
    "fp16": np.float16,
    "float16": np.float16,
    "half": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "bfloat16": ml_dtypes.bfloat16,
}


def to_numpy_dtype(dtype: Any) -> np.dtype:
    """``"fp16"``, ``"bfloat16"``, ``np.float32``, ``torch.float16``... -> a numpy dtype."""
    if dtype is None:
        raise ValueError("dtype is None")
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.").removeprefix("jnp.").removeprefix("tf.")
        if key not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of fp32, fp16, bf16")
        return np.dtype(_DTYPES[key])
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.removeprefix("torch.")
    if name in _DTYPES:
        return np.dtype(_DTYPES[name])
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of fp32, fp16, bf16") from e
    if dt not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        raise ValueError(f"unsupported dtype {dtype!r}; use one of fp32, fp16, bf16")
    return dt


def cast_state_dict(
    state_dict: Mapping[str, np.ndarray], dtype: Any, *, unwritten: bool = False
) -> dict[str, np.ndarray]:
    """Cast floating-point tensors to ``dtype`` (integer tensors untouched; no copy if equal).

    A memory-mapped source tensor's pages are released once cast, so casting a checkpoint
    costs the cast copy, not the cast copy plus the whole file (:mod:`gpt2_core.lowmem`).
    ``unwritten``: the tensors are views of a copy-on-write map the caller opened itself and
    nothing wrote to, so those pages are released too (:func:`gpt2_core.lowmem.release`).
    """
    dt = to_numpy_dtype(dtype)
    out = {}
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(source) -> (source, cast)
    for k, given in state_dict.items():
        v = np.asarray(given)
        is_float = np.issubdtype(v.dtype, np.floating) or v.dtype == np.dtype(ml_dtypes.bfloat16)
        if id(given) in done and done[id(given)][0] is given:  # a tied weight: cast once
            out[k] = done[id(given)][1]
        elif is_float and v.dtype != dt:
            # from a memory map: cast block by block, each source block released as it lands
            out[k] = (
                lowmem.owned_copy(v, dt, unwritten=unwritten)
                if lowmem.mapped_buffer(v) is not None
                else v.astype(dt)
            )
            done[id(given)] = (given, out[k])
        else:
            out[k] = v
    return out


@dataclass
class CheckpointInfo:
    """Where a state dict came from."""

    directory: Path
    format: str
    files: list[Path] = field(default_factory=list)
    other_formats: list[str] = field(default_factory=list)


def detect_formats(directory: str | os.PathLike) -> list[str]:
    """Formats present in ``directory``, most preferred first."""
    d = Path(directory)
    found = [fmt for fmt, fname in FORMAT_FILES.items() if (d / fname).is_file()]
    # an index makes the single-file name redundant only for the same family
    if "safetensors-sharded" in found and "safetensors" in found:
        found.remove("safetensors")
    if "pytorch-sharded" in found and "pytorch" in found:
        found.remove("pytorch")
    return found


def choose_format(directory: str | os.PathLike, prefer: str | None = None) -> tuple[str, list[str]]:
    """Pick the format to read: ``prefer`` if given, else the first of :data:`FORMATS` present.

    Returns ``(format, others_present)``; raises ``FileNotFoundError`` listing what was looked for.
    """
    d = Path(directory)
    found = detect_formats(d)
    if not found:
        raise FileNotFoundError(
            f"{d} holds no GPT-2 weights: looked for {', '.join(FORMAT_FILES.values())}"
        )
    if prefer is not None:
        if prefer not in _FORMAT_ALIASES and prefer not in FORMATS:
            raise ValueError(f"unknown format {prefer!r}; use one of {sorted(_FORMAT_ALIASES)}")
        wanted = _FORMAT_ALIASES.get(prefer, (prefer,))
        chosen = [f for f in found if f in wanted]
        if not chosen:
            raise FileNotFoundError(f"{d} has no {prefer} weights (found: {', '.join(found)})")
        fmt = chosen[0]
    else:
        fmt = found[0]
    others = [f for f in found if f != fmt]
    if others:
        logger.info("%s holds several formats (%s); reading %s", d, ", ".join(found), fmt)
    return fmt, others


def checked_file(directory: str | os.PathLike, name: str) -> Path:
    """``directory / name`` after checking it is a regular file inside the checkpoint (or its
    Hugging Face cache ``blobs/``): see :func:`gpt2_core.io_utils.check_weight_file`."""
    return check_weight_file(Path(directory) / name, directory, name)


def weight_files(directory: str | os.PathLike, fmt: str) -> list[Path]:
    """The files holding ``fmt``'s weights in ``directory`` (index first, then its shards),
    each checked to be a regular file inside the checkpoint."""
    d = Path(directory)
    path = checked_file(d, FORMAT_FILES[fmt])
    if fmt == "safetensors-sharded":
        shards = sorted(set(st.read_index(path).values()))
    elif fmt == "pytorch-sharded":
        from gpt2_core.formats import torch_bin

        shards = sorted(set(torch_bin.read_index(path).values()))
    else:
        return [path]
    return [path, *(checked_file(d, s) for s in shards)]


def read_state_dict(
    directory: str | os.PathLike,
    *,
    prefer: str | None = None,
    mmap: bool | str = True,
    config: GPT2Config | None = None,
) -> tuple[dict[str, np.ndarray], CheckpointInfo]:
    """Read the weights of a checkpoint directory as a canonical-named numpy dict.

    Keys keep the prefix convention of the file (with or without ``transformer.``);
    :func:`gpt2_core.naming.normalize_state_dict` maps them onto a head. Every weight file must
    be a regular file inside ``directory``. With ``config``, declared tensor counts and shapes
    are checked against it before any data is read (:class:`gpt2_core.naming.TensorLimits`).
    """
    d = Path(directory)
    fmt, others = choose_format(d, prefer)
    files = weight_files(d, fmt)
    path = files[0]
    limits = None if config is None else naming.TensorLimits.from_config(config)
    if fmt == "safetensors":
        sd = st.load_file(path, mmap=mmap, limits=limits)
    elif fmt == "safetensors-sharded":
        sd = st.load_sharded(path, mmap=mmap, limits=limits)
    elif fmt in ("pytorch", "pytorch-sharded"):
        from gpt2_core.formats import torch_bin

        sd, _ = torch_bin.load_checkpoint(path, limits=limits)
    elif fmt == "tf":
        from gpt2_core.formats import tf_h5

        sd = tf_h5.load(path, limits=limits)
    elif fmt == "flax":
        from gpt2_core.formats import flax_msgpack

        sd = flax_msgpack.load(path, limits=limits)
    else:  # pragma: no cover - FORMATS is closed
        raise AssertionError(fmt)
    if config is not None:
        # before normalising builds the config's expected keys (12 per layer): a config with
        # n_layer 10**6 next to a small file fails here in O(1)
        naming.check_config_fits(config, sum(int(v.nbytes) for v in sd.values()), str(path))
    return sd, CheckpointInfo(directory=d, format=fmt, files=files, other_formats=others)


def load_pretrained(
    name_or_path: str | os.PathLike,
    head: str,
    *,
    config: GPT2Config | None = None,
    dtype: Any = None,
    prefer: str | None = None,
    strict: bool = True,
    mmap: bool | str = True,
    **config_overrides: Any,
) -> tuple[GPT2Config, dict[str, np.ndarray], naming.LoadReport]:
    """Config, canonical state dict for ``head`` and a load report, from a directory or hub id.

    A base-model checkpoint loaded for a head model leaves the head weights to be initialised:
    they are listed in ``report.newly_initialized`` and logged. Missing, unexpected or mis-shaped
    weights raise :class:`gpt2_core.naming.CheckpointError` naming them (``strict=False`` only
    logs them). ``dtype`` casts floating tensors (``"fp32"``, ``"fp16"``, ``"bf16"``).
    ``mmap`` is :func:`read_state_dict`'s (``"private"``: writable copy-on-write safetensors).
    """
    directory = hub.resolve_dir(name_or_path)
    if config is None:
        if not (directory / CONFIG_NAME).exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
        config = GPT2Config.from_json_file(checked_file(directory, CONFIG_NAME))
        if config_overrides:
            config = config.copy(**config_overrides)
    elif config_overrides:
        config = config.copy(**config_overrides)
    raw, info = read_state_dict(directory, prefer=prefer, mmap=mmap, config=config)
    sd, report = naming.normalize_state_dict(raw, config, head, source=str(info.files[0]))
    if not report.ok:
        if strict:
            report.raise_if_error()
        logger.warning("loading %s: %s", directory, report.summary())
    if report.newly_initialized:
        logger.warning(
            "%s: some weights of %s were not in the checkpoint and are newly initialised: %s. "
            "Train the model on a down-stream task before using it.",
            directory,
            naming.HEADS[naming.head_of(head)],
            ", ".join(report.newly_initialized),
        )
    if report.ignored_buffers or report.tied:
        logger.info("loading %s: %s", directory, report.summary())
    if dtype is not None:
        sd = cast_state_dict(sd, dtype, unwritten=mmap == "private")  # our own fresh map
    return config, sd, report


def save_pretrained(
    state_dict: Mapping[str, np.ndarray],
    config: GPT2Config,
    directory: str | os.PathLike,
    head: str,
    *,
    max_shard_size: int | str = "5GB",
    dtype: Any = None,
    formats: tuple[str, ...] = ("safetensors",),
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``config.json`` and the weights in each of ``formats`` into ``directory``.

    Formats: ``safetensors`` (default; sharded past ``max_shard_size``), ``pytorch``
    (pytorch_model.bin), ``tf`` (tf_model.h5 in transformers' layout), ``flax``
    (flax_model.msgpack). Tied weights are not stored twice. Each file is written atomically.
    The architecture is recorded in ``config.json`` so transformers picks the right class.
    ``progress(nbytes)`` is called as tensors are written (for a progress bar).
    """
    head = naming.head_of(head)
    sd, report = naming.normalize_state_dict(state_dict, config, head, allow_new_head=False)
    report.raise_if_error()
    if dtype is not None:
        sd = cast_state_dict(sd, dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config.copy()
    cfg.extra["architectures"] = [naming.HEADS[head]]
    written = [cfg.save_pretrained(directory)]
    to_write = naming.drop_tied(sd, config, head)
    for fmt in formats:
        if fmt == "safetensors":
            written += st.save_sharded(
                to_write, directory, max_shard_size=max_shard_size, progress=progress
            )
        elif fmt == "pytorch":
            from gpt2_core.formats import torch_bin

            written.append(torch_bin.save(to_write, directory / FORMAT_FILES["pytorch"], progress))
        elif fmt == "tf":
            from gpt2_core.formats import tf_h5

            written.append(tf_h5.save(sd, directory / FORMAT_FILES["tf"], config, head, progress))
        elif fmt == "flax":
            from gpt2_core.formats import flax_msgpack

            written.append(
                flax_msgpack.save(sd, directory / FORMAT_FILES["flax"], config, head, progress)
            )
        else:
            raise ValueError(f"unknown format {fmt!r}; use safetensors, pytorch, tf or flax")
    return written
