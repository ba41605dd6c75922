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

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.io_utils import atomic_output_file

_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_MAX_CHUNK = 2**30
_CHUNKED = "__msgpack_chunked_array__"
_LEAF_TO_CANON = {"embedding": "weight", "scale": "weight", "kernel": "weight"}


class FlaxMsgpackError(ValueError):
    """A malformed flax_model.msgpack (names the file and the parameter path)."""


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(name)
    except TypeError as e:
        raise FlaxMsgpackError(f"unknown dtype {name!r}") from e


def _array_from_ext(data: bytes) -> np.ndarray:
    shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
    dt = _dtype(dtype_name.decode() if isinstance(dtype_name, bytes) else dtype_name)
    shape = tuple(int(s) for s in shape)
    if len(buf) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise FlaxMsgpackError(f"array of shape {shape} / {dt} has {len(buf)} bytes")
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _array_from_ext(data)
    if code == _EXT_NPSCALAR:
        return _array_from_ext(data)[()]
    if code == _EXT_COMPLEX:
        re_, im = msgpack.unpackb(data)
        return complex(re_, im)
    raise FlaxMsgpackError(f"unknown msgpack extension type {code}")


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get(_CHUNKED):
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def read_tree(path: str | Path) -> dict[str, Any]:
    """The raw nested parameter dict of a flax msgpack file."""
    path = Path(path)
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_ext_hook, raw=False,
                               strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as e:
        raise FlaxMsgpackError(f"{path}: not a valid flax msgpack file ({e})") from e
    if not isinstance(tree, dict):
        raise FlaxMsgpackError(f"{path}: expected a parameter dict, found {type(tree).__name__}")
    return _unchunk(tree)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, str(k))))
        else:
            out[(*prefix, str(k))] = v
    return out


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Read transformers' flax_model.msgpack as a canonical-named numpy dict."""
    path = Path(path)
    tree = read_tree(path)
    # transformers wraps Flax params as {"params": ...} in some saves: unwrap
    if set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]
    out: dict[str, np.ndarray] = {}
    for keys, value in _flatten(tree).items():
        if not isinstance(value, np.ndarray):
            raise FlaxMsgpackError(f"{path}: {'/'.join(keys)} is not an array")
        *scope, leaf = keys
        name = ".".join([*scope, _LEAF_TO_CANON.get(leaf, leaf)])
        if leaf == "kernel":
            if value.ndim != 2:
                raise FlaxMsgpackError(f"{path}: {'/'.join(keys)} has rank {value.ndim}, expected 2")
            value = value.T  # (out, in) Conv1D / (in, out) Dense -> canonical
        out[name] = np.asarray(value, order="C")
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
                leaf, arr = "kernel", arr.T  # Conv1D (in,out) -> (out,in); Linear (out,in) -> (in,out)
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
    chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
    return {_CHUNKED: True, "shape": {str(i): d for i, d in enumerate(arr.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)}}


def _write_tree(f, packer: msgpack.Packer, tree: Mapping[str, Any],
                progress: Callable[[int], None] | None = None) -> None:
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


def save(state_dict: Mapping[str, np.ndarray], path: str | Path, config: GPT2Config,
         head: str, progress: Callable[[int], None] | None = None) -> Path:
    """Write a flax_model.msgpack that transformers' FlaxGPT2*Model.from_pretrained loads."""
    path = Path(path)
    tree = to_tree(state_dict, config, head)
    packer = msgpack.Packer(default=_pack_default, strict_types=True, use_bin_type=True)
    with atomic_output_file(path) as f:
        _write_tree(f, packer, tree, progress)
    return path
