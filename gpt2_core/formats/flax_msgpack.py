"""transformers' ``flax_model.msgpack`` without JAX: read and write its parameter tree.

The file is ``flax.serialization.to_bytes(params)``: a msgpack map of nested dicts whose leaves
are arrays packed as ``ExtType(1, msgpack((shape, dtype_name, raw_bytes)))``; arrays above
2**30 bytes are split into ``{"__msgpack_chunked_array__": True, "shape", "chunks"}``.

transformers' Flax GPT-2 tree, and how it maps to the canonical (HF PyTorch) names:

    transformer/wte/embedding (V, E)             -> transformer.wte.weight
    transformer/h/0/ln_1/scale                   -> transformer.h.0.ln_1.weight
    transformer/h/0/attn/c_attn/kernel (3E, E)   -> transformer.h.0.attn.c_attn.weight (E, 3E)
    lm_head/kernel (E, V)   (untied only)        -> lm_head.weight (V, E)

The trap: transformers' ``FlaxConv1D`` stores its kernel **(out, in)** — the transpose of both
PyTorch's Conv1D and a Flax ``nn.Dense`` kernel — so every 2-D ``kernel`` is transposed on the
way in and out: Conv1D (out, in) -> (in, out), Dense heads (in, out) -> (out, in). ``GPT2Model``
files have no ``transformer`` level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.io_utils import atomic_output_file, unique_keys

_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_MAX_CHUNK = 2**30
_CHUNKED = "__msgpack_chunked_array__"
_LEAF_TO_CANON = {"embedding": "weight", "scale": "weight", "kernel": "weight"}


class FlaxMsgpackError(ValueError):
    """A malformed flax_model.msgpack (names the file and the parameter path)."""


_NUMERIC_KINDS = "fiub"


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError) as e:
        raise FlaxMsgpackError(f"unknown dtype {name!r}") from e
    if dt.kind not in _NUMERIC_KINDS:
        raise FlaxMsgpackError(f"dtype {name!r} is not numeric")
    return dt


def _array_from_ext(data: bytes, limits: Any = None, source: str = "") -> np.ndarray:
    try:
        shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
        if isinstance(dtype_name, bytes):
            dtype_name = dtype_name.decode()
        shape = tuple(shape)
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise FlaxMsgpackError(f"malformed array ({e})") from None
    if (
        not isinstance(buf, bytes)
        or not isinstance(dtype_name, str)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise FlaxMsgpackError(f"malformed array header (shape {shape!r})")
    dt = _dtype(dtype_name)
    if limits is not None:
        limits.check(source, "array", shape)
    if len(buf) != math.prod(shape) * dt.itemsize:
        raise FlaxMsgpackError(f"array of shape {shape} / {dt} has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _ext_hook_for(limits: Any = None, source: str = "") -> Callable[[int, bytes], Any]:
    def hook(code: int, data: bytes) -> Any:
        if code == _EXT_NDARRAY:
            return _array_from_ext(data, limits, source)
        if code == _EXT_NPSCALAR:
            return _array_from_ext(data, limits, source)[()]
        raise FlaxMsgpackError(f"unsupported msgpack extension type {code}")

    return hook


def _ext_hook(code: int, data: bytes) -> Any:
    return _ext_hook_for()(code, data)


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get(_CHUNKED):
            try:
                shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
                chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
                if not all(isinstance(c, np.ndarray) and c.ndim == 1 for c in chunks):
                    raise TypeError("chunks must be 1-D arrays")
                return np.concatenate(chunks).reshape(shape)
            except (KeyError, TypeError, ValueError) as e:
                raise FlaxMsgpackError(f"malformed chunked array ({e})") from None
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_tree(path: str | Path, limits: Any = None) -> dict[str, Any]:
    """The raw nested parameter dict of a flax msgpack file.

    Refused with :class:`FlaxMsgpackError` naming the file: bad msgpack, duplicate map keys,
    unknown extension types, non-numeric dtypes, sizes that disagree with the bytes, nesting
    deeper than msgpack's limit.
    """
    path = Path(path)
    try:
        tree = msgpack.unpackb(
            path.read_bytes(),
            ext_hook=_ext_hook_for(limits, str(path)),
            raw=False,
            strict_map_key=False,
            object_pairs_hook=unique_keys(FlaxMsgpackError, "a map"),
        )
        if not isinstance(tree, dict):
            raise FlaxMsgpackError(f"expected a parameter dict, found {type(tree).__name__}")
        return _unchunk(tree)
    except FlaxMsgpackError as e:
        raise FlaxMsgpackError(f"{path}: {e}") from None
    except (RecursionError, msgpack.StackError):
        raise FlaxMsgpackError(f"{path}: nested too deeply to be a parameter tree") from None
    except (msgpack.UnpackException, ValueError, TypeError) as e:
        raise FlaxMsgpackError(f"{path}: not a valid flax msgpack file ({e})") from e


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def load(path: str | Path, limits: Any = None) -> dict[str, np.ndarray]:
    """Read transformers' flax_model.msgpack as a canonical-named numpy dict.

    Two parameter paths that map to one canonical key (``wte/embedding`` and ``wte/weight``,
    or the integer key 0 next to the string "0") are refused naming both.
    """
    path = Path(path)
    tree = read_tree(path, limits)
    # transformers wraps Flax params as {"params": ...} in some saves: unwrap
    if set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    flat: dict[tuple[str, ...], Any] = {}
    seen_paths: set[tuple[str, ...]] = set()

    def walk(node: Mapping[Any, Any], prefix: tuple[str, ...]) -> None:
        for k, v in node.items():
            p = (*prefix, str(k))
            if p in seen_paths:
                raise FlaxMsgpackError(f"{path}: two keys spell {'/'.join(p)} ({k!r})")
            seen_paths.add(p)
            if isinstance(v, Mapping):
                walk(v, p)
            else:
                flat[p] = v

    walk(tree, ())
    if limits is not None:
        limits.check_count(str(path), len(flat))
    for keys, value in flat.items():
        if not isinstance(value, np.ndarray):
            raise FlaxMsgpackError(f"{path}: {'/'.join(keys)} is not an array")
        *scope, leaf = keys
        name = ".".join([*scope, _LEAF_TO_CANON.get(leaf, leaf)])
        if leaf == "kernel":
            if value.ndim != 2:
                raise FlaxMsgpackError(
                    f"{path}: {'/'.join(keys)} has rank {value.ndim}, expected 2"
                )
            value = value.T  # (out, in) Conv1D / (in, out) Dense -> canonical
        if name in out:
            raise FlaxMsgpackError(
                f"{path}: {source[name]} and {'/'.join(keys)} both map to {name}"
            )
        out[name] = np.asarray(value, order="C")
        source[name] = "/".join(keys)
    return out


def to_tree(state_dict: Mapping[str, np.ndarray], config: GPT2Config, head: str) -> dict[str, Any]:
    """Canonical dict -> transformers' Flax parameter tree for ``head`` (tied keys dropped)."""
    head = naming.head_of(head)
    sd = naming.drop_tied(state_dict, config, head)
    tree: dict[str, Any] = {}
    for key, value in sd.items():
        arr = np.asarray(value)
        parts = key.split(".")
        *scope, leaf = parts
        module = scope[-1] if scope else ""
        if leaf == "weight":
            if module in ("wte", "wpe"):
                leaf = "embedding"
            elif module.startswith("ln_"):
                leaf = "scale"
            else:
                leaf, arr = (
                    "kernel",
                    arr.T,
                )  # Conv1D (in,out) -> (out,in); Linear (out,in) -> (in,out)
        node = tree
        for p in scope:
            node = node.setdefault(p, {})
        node[leaf] = arr  # a view: bytes are produced one array at a time when written
    return tree


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    payload = msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(_EXT_NDARRAY, payload)


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        payload = msgpack.packb(((), obj.dtype.name, np.asarray(obj).tobytes()), use_bin_type=True)
        return msgpack.ExtType(_EXT_NPSCALAR, payload)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _chunk(arr: np.ndarray) -> dict[str, Any]:
    step = max(1, _MAX_CHUNK // arr.dtype.itemsize)
    flat = arr.reshape(-1)
    chunks = [flat[i : i + step] for i in range(0, flat.size, step)]
    return {
        _CHUNKED: True,
        "shape": {str(i): d for i, d in enumerate(arr.shape)},
        "chunks": {str(i): c for i, c in enumerate(chunks)},
    }


def _write_tree(
    f,
    packer: msgpack.Packer,
    tree: Mapping[str, Any],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream a nested dict as msgpack: one array's bytes in memory at a time, never the file."""
    f.write(packer.pack_map_header(len(tree)))
    for key, value in tree.items():
        f.write(packer.pack(key))
        if isinstance(value, Mapping):
            _write_tree(f, packer, value, progress)
        elif isinstance(value, np.ndarray) and value.nbytes > _MAX_CHUNK:
            _write_tree(f, packer, _chunk(value), progress)  # as flax does for arrays >= 1 GiB
        elif isinstance(value, np.ndarray):
            _write_array(f, packer, value)
            if progress:
                progress(value.nbytes)
        else:
            f.write(packer.pack(value))


def _write_array(f, packer: msgpack.Packer, arr: np.ndarray) -> None:
    """Write ``ExtType(1, msgpack((shape, dtype, bytes)))`` without copying the bytes twice:
    the ext32 and bin32 headers are written by hand and the data straight from the array."""
    data = np.asarray(arr, order="C")  # the only copy, and only for transposed views
    inner = b"\x93" + packer.pack(list(data.shape)) + packer.pack(data.dtype.name)
    inner += b"\xc6" + data.nbytes.to_bytes(4, "big")  # bin32 header
    f.write(b"\xc9" + (len(inner) + data.nbytes).to_bytes(4, "big") + bytes([_EXT_NDARRAY]))
    f.write(inner)
    if data.nbytes:
        f.write(memoryview(data.reshape(-1).view(np.uint8)))


def save(
    state_dict: Mapping[str, np.ndarray],
    path: str | Path,
    config: GPT2Config,
    head: str,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a flax_model.msgpack that transformers' FlaxGPT2*Model.from_pretrained loads."""
    path = Path(path)
    tree = to_tree(state_dict, config, head)
    packer = msgpack.Packer(default=_pack_default, strict_types=True, use_bin_type=True)
    with atomic_output_file(path) as f:
        _write_tree(f, packer, tree, progress)
    return path
