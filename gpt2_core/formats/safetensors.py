"""safetensors read/write with numpy only: memory-mapped reads, bf16 through ml_dtypes, shards.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``
and the raw little-endian tensor bytes. It is simple enough to implement exactly here, which
lets us memory-map without the safetensors package, read bfloat16 into numpy, and validate the
header (offsets inside the file, sizes equal to dtype x shape) with errors that name the file
and the tensor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from gpt2_core.io_utils import atomic_output_file, atomic_write_text, parse_size, unique_keys

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000  # the reference implementation's MAX_HEADER_SIZE
#: more tensors than any GPT-2 (XL has 580) could hold: refused before the header is parsed
MAX_TENSORS = 100_000

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed safetensors file; the message names the file and the tensor."""


def dtype_name(dtype: np.dtype) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    if dt not in _NAMES:
        raise SafetensorsError(f"dtype {dt} cannot be stored in safetensors")
    return _NAMES[dt]


def _no_constants(name: str) -> Any:
    raise SafetensorsError(f"{name} is not JSON")


def _uint(x: Any) -> int:
    """A JSON unsigned integer (the reference's usize): not a bool, float, string or < 0."""
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**64:
        raise TypeError(f"{x!r} is not an unsigned integer")
    return x


def read_header(
    path: str | os.PathLike,
    limits: Any = None,
) -> tuple[dict[str, Any], dict[str, str], int]:
    """Return ``(tensors_header, metadata, data_start)`` after validating the header.

    The rules are the reference implementation's (``safetensors`` 0.8 ``Metadata::validate``),
    each tested against it: the header at most 100,000,000 bytes, UTF-8 JSON (no NaN), an
    object of tensor entries ``{"dtype", "shape": [uint...], "data_offsets": [uint, uint]}``
    plus an optional ``__metadata__`` of strings; the tensors, sorted by offsets, tile the data
    section exactly (no overlap, no hole, no trailing bytes) and each has dtype x shape bytes.
    Stricter than the reference: a duplicate key is refused (the reference keeps one silently)
    and more than :data:`MAX_TENSORS` entries (or ``limits.max_tensors``) are refused before
    parsing. ``limits`` (a :class:`gpt2_core.naming.TensorLimits`) also bounds each shape.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
        n = int.from_bytes(raw, "little")
        if n > _MAX_HEADER:
            raise SafetensorsError(
                f"{path}: header of {n} bytes is over the {_MAX_HEADER}-byte limit"
            )
        if 8 + n > size:
            raise SafetensorsError(
                f"{path}: header length {n} is invalid for a file of {size} bytes"
            )
        text = f.read(n)
    count = text.count(b'"data_offsets"')
    max_tensors = MAX_TENSORS if limits is None else min(MAX_TENSORS, limits.max_tensors)
    if count > max_tensors:
        raise SafetensorsError(
            f"{path}: header declares {count} tensors, over the limit of "
            f"{max_tensors}; refused before parsing"
        )
    try:
        header = json.loads(
            text.decode("utf-8"),
            object_pairs_hook=unique_keys(SafetensorsError, "the header"),
            parse_constant=_no_constants,
        )
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{path}: header is not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from e
    except SafetensorsError as e:
        raise SafetensorsError(f"{path}: {e}") from None
    except RecursionError:
        raise SafetensorsError(f"{path}: header is nested too deeply") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        try:
            if not isinstance(info, dict):
                raise TypeError("not an object")
            if not isinstance(info["dtype"], str):
                raise TypeError("dtype is not a string")
            if not isinstance(info["shape"], list) or not isinstance(info["data_offsets"], list):
                raise TypeError("shape and data_offsets must be lists")
            shape = [_uint(s) for s in info["shape"]]
            if len(info["data_offsets"]) != 2:
                raise TypeError("data_offsets must have 2 elements")
            begin, end = (_uint(x) for x in info["data_offsets"])
        except (KeyError, TypeError) as e:
            raise SafetensorsError(
                f"{path}: bad header entry for tensor {name!r} ({e}): {str(info)[:200]}"
            ) from None
        if info["dtype"] not in DTYPES:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has unsupported dtype "
                f"{info['dtype']!r} (supported: {', '.join(DTYPES)})"
            )
        if end > data_len:
            raise SafetensorsError(
                f"{path}: tensor {name!r} data offsets [{begin}, {end}] fall outside the "
                f"{data_len}-byte data section"
            )
        if limits is not None:
            limits.check(str(path), name, shape)
        spans.append((begin, end, name, shape, DTYPES[info["dtype"]]))
    # the reference's validate(): sorted by offsets, each tensor starts where the last ended
    spans.sort(key=lambda t: (t[0], t[1]))
    start = 0
    for begin, end, name, shape, dt in spans:
        if begin != start or end < begin:
            raise SafetensorsError(
                f"{path}: tensor {name!r} data offsets [{begin}, {end}] overlap another tensor "
                f"or leave a hole (expected it to start at byte {start})"
            )
        start = end
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes >= 2**64:
            raise SafetensorsError(f"{path}: tensor {name!r} shape {shape} overflows")
        if end - begin != nbytes:
            raise SafetensorsError(
                f"{path}: tensor {name!r} has {end - begin} bytes but dtype "
                f"{header[name]['dtype']} x shape {shape} needs {nbytes}"
            )
    if start != data_len:
        raise SafetensorsError(
            f"{path}: the tensors cover {start} bytes of the {data_len}-byte data section "
            "(the file is truncated or has trailing bytes)"
        )
    for _, _, name, shape, _ in spans:
        header[name] = {**header[name], "shape": shape}
    return header, metadata, 8 + n


#: the data section's alignment in files this module writes
DATA_ALIGN = 64


def load_file(
    path: str | os.PathLike,
    *,
    mmap: bool | str = True,
    keys: Iterable[str] | None = None,
    limits: Any = None,
) -> dict[str, np.ndarray]:
    """Read tensors from one safetensors file.

    With ``mmap=True`` (default) the arrays are read-only views on a memory map: nothing is read
    until used, so converting a large checkpoint stays near one copy of the weights. With
    ``mmap="private"`` the map is copy-on-write (``MAP_PRIVATE``): the arrays are writable, a
    write copies that page and never reaches the file, so a framework can adopt them as its
    tensors without a copy (gpt2_torch's ``from_pretrained``, as transformers does).
    """
    path = Path(path)
    header, _, start = read_header(path, limits)
    wanted = header.keys() if keys is None else keys
    out: dict[str, np.ndarray] = {}
    if mmap:
        size = path.stat().st_size
        mode = "c" if mmap == "private" else "r"
        buf = np.memmap(path, dtype=np.uint8, mode=mode) if size > 0 else np.zeros(0, np.uint8)
    else:
        buf = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    for name in wanted:
        if name not in header:
            raise KeyError(f"{path}: no tensor named {name!r}")
        info = header[name]
        begin, end = info["data_offsets"]
        dt = DTYPES[info["dtype"]]
        arr = buf[start + begin : start + end].view(dt).reshape(info["shape"])
        out[name] = arr
    return out


def save_file(
    tensors: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` atomically (readable by the safetensors package and torch).

    ``progress(nbytes)`` is called after each tensor is written.
    """
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsError("safetensors metadata must map str -> str")
        header["__metadata__"] = dict(metadata)
    offset = 0
    arrays: list[np.ndarray] = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise SafetensorsError(f"tensor names must be strings, got {name!r}")
        arr = np.asarray(value)
        name_dt = dtype_name(arr.dtype)
        arr = np.asarray(arr, dtype=DTYPES[name_dt], order="C")  # (keeps 0-d arrays 0-d)
        header[name] = {
            "dtype": name_dt,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # align the data section to 64 bytes (the reference writer pads to 8): with GPT-2's sizes
    # every tensor then starts on a cache line, so a memory map of the file can be adopted as
    # framework tensors as it is (gpt2_torch's from_pretrained)
    raw += b" " * (-(8 + len(raw)) % DATA_ALIGN)
    with atomic_output_file(path) as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in arrays:
            f.write(memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b"")
            if progress:
                progress(arr.nbytes)


# ---------------------------------------------------------------------------- sharded checkpoints
def shard_plan(sizes: Mapping[str, int], max_shard_size: int | str) -> list[list[str]]:
    """Greedy split of tensor names into shards of at most ``max_shard_size`` bytes (a tensor
    larger than the limit gets a shard of its own, as in transformers)."""
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    current = 0
    for name, n in sizes.items():
        if shards[-1] and current + n > limit:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += n
    return shards


def save_sharded(
    tensors: Mapping[str, np.ndarray],
    directory: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` when the tensors exceed ``max_shard_size``.

    Returns the files written. ``progress(nbytes)`` is called after each tensor.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {k: np.asarray(v).nbytes for k, v in tensors.items()}
    plan = shard_plan(sizes, max_shard_size)
    meta = {"format": "pt", **(metadata or {})}
    if len(plan) == 1:
        path = directory / SAFE_WEIGHTS_NAME
        save_file(tensors, path, meta, progress)
        return [path]
    n = len(plan)
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    for i, names in enumerate(plan, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in names}, directory / fname, meta, progress)
        files.append(directory / fname)
        weight_map.update({k: fname for k in names})
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    atomic_write_text(
        directory / SAFE_WEIGHTS_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n"
    )
    files.append(directory / SAFE_WEIGHTS_INDEX_NAME)
    return files


def read_index(index_path: str | os.PathLike) -> dict[str, str]:
    """weight_map of a sharded checkpoint, with every shard checked to exist."""
    index_path = Path(index_path)
    weight_map = read_weight_map(index_path, SafetensorsError)
    for shard in set(weight_map.values()):
        if not (index_path.parent / shard).is_file():
            raise SafetensorsError(f"{index_path}: shard {shard} is missing")
    return weight_map


def read_weight_map(index_path: Path, error: type[Exception]) -> dict[str, str]:
    """The ``weight_map`` of a ``*.index.json`` (safetensors or pytorch_model.bin): a regular
    file with unique keys, mapping tensor names to plain shard file names."""
    from gpt2_core.io_utils import read_regular_file

    try:
        raw = read_regular_file(index_path, 64 * 1024 * 1024, "shard index")
        index = json.loads(
            raw.decode("utf-8"), object_pairs_hook=unique_keys(SafetensorsError, "the header")
        )
        weight_map = index["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, SafetensorsError, KeyError, TypeError) as e:
        raise error(f"{index_path}: not a valid shard index ({e})") from e
    except RecursionError:
        raise error(f"{index_path}: shard index is nested too deeply") from None
    if not isinstance(weight_map, dict):
        raise error(f"{index_path}: weight_map must be an object")
    for shard in set(weight_map.values()):
        if (
            not isinstance(shard, str)
            or not shard
            or "/" in shard
            or "\\" in shard
            or shard.startswith(".")
            or "\0" in shard
        ):
            raise error(f"{index_path}: invalid shard file name {shard!r}")
    return weight_map


def load_sharded(
    index_path: str | os.PathLike, *, mmap: bool | str = True, limits: Any = None
) -> dict[str, np.ndarray]:
    """Read every tensor of a sharded checkpoint (each shard memory-mapped).

    Each shard must hold exactly the tensors the index assigns to it: a tensor the index does
    not list, or assigns to another shard, is refused naming both files (it would otherwise
    be silently dropped or shadow the real one).
    """
    index_path = Path(index_path)
    weight_map = read_index(index_path)
    if limits is not None:
        limits.check_count(str(index_path), len(weight_map))
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    out: dict[str, np.ndarray] = {}
    for shard, names in sorted(by_shard.items()):
        path = index_path.parent / shard
        header, _, _ = read_header(path, limits)
        extra = sorted(set(header) - set(names))
        if extra:
            where = weight_map.get(extra[0])
            raise SafetensorsError(
                f"{path}: holds {extra[0]!r}, which {index_path} "
                + (f"assigns to {where}" if where else "does not list")
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
        out.update(load_file(path, mmap=mmap, keys=names, limits=limits))
    return out
