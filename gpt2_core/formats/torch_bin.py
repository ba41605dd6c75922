"""``pytorch_model.bin`` without torch and without running code from the file.

A ``.bin`` checkpoint is a pickle, and unpickling runs whatever callables the file names — a
well-known way to ship malware inside "weights". This reader uses a restricted unpickler that
resolves only the handful of globals a state dict needs (``collections.OrderedDict``, torch's
tensor-rebuild functions and storage types) to harmless numpy stand-ins; any other global
raises :class:`UnsafeCheckpointError` naming it. Tensors are rebuilt with numpy from the raw
storage bytes.

Two container layouts exist:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one ``<root>/data/<key>`` entry of
  raw bytes per storage;
* the legacy format (old hub checkpoints, ``_use_new_zipfile_serialization=False``): a stream
  of pickles (magic number, protocol, sys info, the object, the storage keys) followed by each
  storage as an int64 element count and its raw bytes.

Writing produces the zip format, loadable by ``torch.load(weights_only=True)`` and transformers.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from gpt2_core.io_utils import atomic_output_file

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle names a global that a state dict never needs: refused, nothing was run."""


class TorchBinError(ValueError):
    """A malformed pytorch_model.bin (bad archive, missing storage, inconsistent sizes)."""


# storage class name -> numpy dtype (legacy typed-storage names are what torch.save writes)
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("bool"),
}
# torch.<dtype> globals (used by _rebuild_tensor_v3 and UntypedStorage files)
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("bool"),
}
_NP_TO_STORAGE = {v: k for k, v in _STORAGE_DTYPES.items()}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the dtype. Immutable, and a fresh
    one per load, so a crafted pickle cannot change what a later load sees."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype | None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise UnsafeCheckpointError(f"the pickle tries to set {key!r} on torch.{self.name}")


class _DType:
    """Stand-in for ``torch.float32`` etc. (immutable, fresh per load)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise UnsafeCheckpointError(f"the pickle tries to set {key!r} on a torch dtype")


class _Storage:
    """A storage resolved by persistent_load: raw bytes interpreted with ``dtype``."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data  # 1-D array of the storage's dtype


class _Budget:
    """Per-load bound on the bytes tensors may copy out of their storages (a stride-0 or
    repeated view of a small storage must not allocate gigabytes), and on shapes."""

    def __init__(self, source: str, limits: Any = None) -> None:
        self.source, self.limits = source, limits
        self.storage_bytes = 0
        self.copied = 0
        self.tensors = 0

    def take(self, shape: tuple[int, ...], nbytes: int) -> None:
        self.tensors += 1
        if self.limits is not None:
            self.limits.check(self.source, f"tensor #{self.tensors}", shape)
            self.limits.check_count(self.source, self.tensors)
        self.copied += nbytes
        # tied weights share a storage (2x); 4x leaves room for any honest layout
        if self.copied > 4 * self.storage_bytes + (1 << 20):
            raise TorchBinError(
                f"{self.source}: tensors copy {self.copied} bytes out of {self.storage_bytes} "
                "bytes of storage (overlapping views); refused"
            )


def _rebuild_tensor(
    storage: _Storage,
    offset: int,
    size: tuple,
    stride: tuple,
    *_: Any,
    budget: _Budget | None = None,
) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise TorchBinError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    data = storage.data
    try:
        size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        offset = int(offset)
    except (TypeError, ValueError) as e:
        raise TorchBinError(f"tensor size/stride/offset are not integers ({e})") from None
    if len(size) != len(stride):
        raise TorchBinError(f"tensor size {size} and stride {stride} have different ranks")
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise TorchBinError(f"negative size/stride/offset in tensor ({size}, {stride}, {offset})")
    n = math.prod(size)
    if n == 0:
        if budget is not None:
            budget.take(size, 0)
        return np.zeros(size, dtype=data.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= data.size:
        raise TorchBinError(
            f"tensor of size {size} / stride {stride} / offset {offset} reads past its storage "
            f"of {data.size} elements"
        )
    if n > data.size - offset:
        raise TorchBinError(
            f"tensor of size {size} / stride {stride} has {n} elements but its storage only "
            f"{data.size - offset} from offset {offset} (overlapping, e.g. stride-0, views are "
            "not weights)"
        )
    if budget is not None:
        budget.take(size, n * data.itemsize)
    view = np.lib.stride_tricks.as_strided(
        data[offset:],
        shape=size,
        strides=tuple(st * data.itemsize for st in stride),
        writeable=False,
    )
    return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_, budget=None):
    if not isinstance(storage, _Storage):
        raise TorchBinError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if isinstance(dtype, _DType) and storage.data.dtype != dtype.dtype:
        raw = storage.data.view(np.uint8)
        if raw.size % dtype.dtype.itemsize:
            raise TorchBinError(
                f"storage of {raw.size} bytes is not a whole number of {dtype.dtype}"
            )
        storage = _Storage(raw.view(dtype.dtype))
    return _rebuild_tensor(storage, offset, size, stride, budget=budget)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def _safe_globals(budget: _Budget | None) -> dict[tuple[str, str], Any]:
    """The globals a state dict needs, with fresh stand-ins for this load only."""

    def v2(*args):
        return _rebuild_tensor(*args[:4], budget=budget)

    def v3(*args):
        return _rebuild_tensor_v3(*args, budget=budget)

    out: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): v2,
        ("torch._utils", "_rebuild_tensor_v2"): v2,
        ("torch._utils", "_rebuild_tensor_v3"): v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): tuple,
    }
    for name, dt in _STORAGE_DTYPES.items():
        out[("torch", name)] = _StorageType(name, dt)
    out[("torch", "UntypedStorage")] = _StorageType("UntypedStorage", None)
    for name, dt in _TORCH_DTYPES.items():
        out[("torch", name)] = _DType(dt)
    return out


class _ClampedReader:
    """A file whose ``read(n)`` never asks for more than what is left: a pickle opcode
    declaring a 2**60-byte string must fail on a short read, not allocate first."""

    def __init__(self, f, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(min(self.left, 1 << 20))
        self.left -= len(line)
        return line


def _remaining(f) -> int:
    pos = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return end - pos


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with three changes: ``find_class`` resolves only the
    allow-list (fresh stand-ins per load), ``persistent_load`` only storages, and BUILD (which
    sets attributes or calls ``__setstate__``) only on the dicts the pickle itself created —
    the ``_metadata`` of a state dict, which is dropped. Protocol 5 out-of-band buffers are
    refused (a BYTEARRAY8 opcode allocates its declared size before reading)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file,
        load_storage,
        source: str,
        overrides: dict[tuple[str, str], Any] | None = None,
        budget: _Budget | None = None,
    ) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._source = source
        self._globals = {**_safe_globals(budget), **(overrides or {})}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load global '{module}.{name}' — a weights file "
                "never needs it, and unpickling it could run code. Nothing was executed."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise UnsafeCheckpointError(f"{self._source}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._source}: bad storage type in {pid!r}")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise TorchBinError(f"{self._source}: bad storage size in {pid!r}")
        return self._load_storage(storage_type, str(key), numel)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) not in (OrderedDict, dict) or not isinstance(state, dict | tuple):
            raise UnsafeCheckpointError(
                f"{self._source}: the pickle sets the state of a {type(inst).__name__} (BUILD); "
                "a state dict only sets its own _metadata. Refused, nothing was changed."
            )
        # the state (torch's _metadata: version numbers) is not needed: dropped

    def _refuse(self) -> None:
        raise UnsafeCheckpointError(
            f"{self._source}: out-of-band pickle buffers are not used by weights files; refused"
        )

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _refuse
    dispatch[pickle.NEXT_BUFFER[0]] = _refuse
    dispatch[pickle.READONLY_BUFFER[0]] = _refuse

    def load(self) -> Any:
        try:
            return super().load()
        except UnsafeCheckpointError:
            raise
        except TorchBinError as e:
            if str(e).startswith(self._source):
                raise
            raise TorchBinError(f"{self._source}: {e}") from None
        except RecursionError:
            raise TorchBinError(f"{self._source}: the pickle is nested too deeply") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            struct.error,
            OverflowError,
            UnicodeDecodeError,
        ) as e:
            raise TorchBinError(
                f"{self._source}: malformed pickle ({type(e).__name__}: {str(e)[:200]})"
            ) from None


#: a zip entry expanding more than this (deflate tops out near 1032x on zeros; real weights
#: compress ~1.1x) is a decompression bomb
_MAX_COMPRESSION_RATIO = 64
_MAX_PICKLE_BYTES = 256 * 1024 * 1024


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ):
        raise TorchBinError(
            f"{path}: archive entry {info.filename} expands {info.compress_size} bytes to "
            f"{info.file_size} (a decompression bomb?); refused before reading"
        )


def _load_zip(path: Path, limits: Any = None) -> Any:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise TorchBinError(f"{path}: not a zip archive ({e})") from e
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        names = list(infos)
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchBinError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
        root = pkl[0][: -len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names:
            _check_entry(path, infos[byteorder])
            if infos[byteorder].file_size > 64 or zf.read(byteorder).strip() not in (
                b"little",
                b"",
            ):
                raise TorchBinError(f"{path}: big-endian checkpoints are not supported")
        cache: dict[str, _Storage] = {}
        budget = _Budget(str(path), limits)

        def load_storage(stype: _StorageType, key: str, numel: int) -> _Storage:
            if key not in cache:
                entry = f"{root}data/{key}"
                if entry not in names:
                    raise TorchBinError(f"{path}: storage {key} is missing from the archive")
                info = infos[entry]
                dtype = stype.dtype or np.dtype("u1")
                _check_entry(path, info)
                if info.file_size != numel * dtype.itemsize:
                    raise TorchBinError(
                        f"{path}: storage {key} declares {numel} x {dtype} but its archive "
                        f"entry holds {info.file_size} bytes"
                    )
                if limits is not None:
                    limits.check(str(path), f"storage {key}", (numel,))
                raw = zf.read(entry)
                if len(raw) % dtype.itemsize:
                    raise TorchBinError(f"{path}: storage {key} size is not a multiple of {dtype}")
                cache[key] = _Storage(np.frombuffer(raw, dtype=dtype))
                budget.storage_bytes += len(raw)
            return cache[key]

        info = infos[pkl[0]]
        _check_entry(path, info)
        if info.file_size > _MAX_PICKLE_BYTES:
            raise TorchBinError(
                f"{path}: data.pkl of {info.file_size} bytes is too large for a state dict"
            )
        try:
            with zf.open(pkl[0]) as f:
                return _RestrictedUnpickler(
                    _ClampedReader(f, info.file_size), load_storage, str(path), budget=budget
                ).load()
        except (zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
            raise TorchBinError(f"{path}: damaged archive ({e})") from None


def _load_legacy(path: Path, limits: Any = None) -> Any:
    budget = _Budget(str(path), limits)
    with open(path, "rb") as f:

        def small_load():
            return _RestrictedUnpickler(
                _ClampedReader(f, _remaining(f)), _no_storage, str(path)
            ).load()

        def _no_storage(*_):
            raise UnsafeCheckpointError(f"{path}: storage reference in a header pickle")

        try:
            magic = small_load()
        except TorchBinError as e:
            raise TorchBinError(
                f"{path}: neither a zip archive nor a legacy torch file ({e})"
            ) from e
        if magic != _LEGACY_MAGIC:
            raise TorchBinError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        if small_load() != _LEGACY_PROTOCOL:
            raise TorchBinError(f"{path}: unsupported legacy protocol version")
        sys_info = small_load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise TorchBinError(f"{path}: big-endian checkpoints are not supported")
        pending: dict[str, tuple[_StorageType, int]] = {}
        storages: dict[str, _Storage] = {}

        def load_storage(stype: _StorageType, key: str, numel: int) -> _Storage:
            # storages come after the object pickle: hand out a placeholder filled in below
            if key not in storages:
                pending[key] = (stype, numel)
                storages[key] = _Storage(np.zeros(0, dtype=stype.dtype or np.dtype("u1")))
            return storages[key]

        # The object pickle references storages that are only read afterwards, so tensors are
        # rebuilt lazily: record the calls, then resolve them once the bytes are known.
        deferred: list[tuple[Any, ...]] = []

        class _Lazy:
            def __init__(self, args: tuple) -> None:
                self.args = args
                deferred.append(args)

        def lazy_rebuild(storage, offset, size, stride, *rest):
            return _Lazy((storage, offset, size, stride))

        overrides = {
            ("torch._utils", "_rebuild_tensor_v2"): lazy_rebuild,
            ("torch._utils", "_rebuild_tensor"): lazy_rebuild,
        }
        obj = _RestrictedUnpickler(
            _ClampedReader(f, _remaining(f)), load_storage, str(path), overrides
        ).load()
        keys = _RestrictedUnpickler(_ClampedReader(f, _remaining(f)), _no_storage, str(path)).load()
        if not isinstance(keys, list):
            raise TorchBinError(f"{path}: malformed storage key list")
        for key in keys:
            key = str(key)
            if key not in pending:
                raise TorchBinError(f"{path}: unknown storage {key}")
            stype, numel = pending[key]
            head = f.read(8)
            if len(head) < 8:
                raise TorchBinError(f"{path}: truncated before storage {key}")
            (count,) = struct.unpack("<q", head)
            dtype = stype.dtype or np.dtype("u1")
            if count < 0 or count * dtype.itemsize > _remaining(f):
                raise TorchBinError(
                    f"{path}: storage {key} declares {count} elements, more than the file holds"
                )
            if limits is not None:
                limits.check(str(path), f"storage {key}", (count,))
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise TorchBinError(f"{path}: storage {key} is truncated")
            storages[key].data = np.frombuffer(raw, dtype=dtype)
            budget.storage_bytes += len(raw)

    def resolve(x: Any) -> Any:
        if isinstance(x, _Lazy):
            return _rebuild_tensor(*x.args, budget=budget)
        if isinstance(x, dict):
            out = type(x)() if isinstance(x, OrderedDict) else {}
            for k, v in x.items():
                out[k] = resolve(v)
            return out
        if isinstance(x, list | tuple):
            return type(x)(resolve(v) for v in x)
        return x

    try:
        return resolve(obj)
    except RecursionError:
        raise TorchBinError(f"{path}: the state dict is nested too deeply") from None
    except TorchBinError as e:
        if str(e).startswith(str(path)):
            raise
        raise TorchBinError(f"{path}: {e}") from None


def load(path: str | Path, limits: Any = None) -> dict[str, np.ndarray]:
    """Read a ``pytorch_model.bin`` (zip or legacy) as ``{name: np.ndarray}`` without torch.

    ``limits`` (a :class:`gpt2_core.naming.TensorLimits`) bounds tensor counts and shapes.
    """
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise TorchBinError(f"{path}: cannot read ({e})") from e
    obj = _load_zip(path, limits) if is_zip else _load_legacy(path, limits)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(obj, Mapping):
        raise TorchBinError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TorchBinError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = v
    return out


def read_index(path: str | Path) -> dict[str, str]:
    """weight_map of a ``pytorch_model.bin.index.json`` (unique keys, plain shard names)."""
    from gpt2_core.formats.safetensors import read_weight_map

    return read_weight_map(Path(path), TorchBinError)


def load_checkpoint(
    path: str | Path, limits: Any = None
) -> tuple[dict[str, np.ndarray], list[Path]]:
    """Read ``pytorch_model.bin`` or a sharded ``pytorch_model.bin.index.json``.

    Each shard must hold exactly the tensors the index assigns to it: a key the index puts in
    another shard, or does not list, is refused naming both files.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        weight_map = read_index(path)
        if limits is not None:
            limits.check_count(str(path), len(weight_map))
        shards = sorted(set(weight_map.values()))
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            shard_path = path.parent / shard
            part = load(shard_path, limits)
            for k in part:
                if weight_map.get(k) != shard:
                    where = weight_map.get(k)
                    raise TorchBinError(
                        f"{shard_path}: holds {k!r}, which {path} "
                        + (f"assigns to {where}" if where else "does not list")
                    )
            listed = [k for k, v in weight_map.items() if v == shard and k not in part]
            if listed:
                raise TorchBinError(
                    f"{shard_path}: lacks {listed[0]!r}, which {path} assigns "
                    f"to it" + (f" (and {len(listed) - 1} more)" if len(listed) > 1 else "")
                )
            out.update(part)
        return out, [path, *(path.parent / s for s in shards)]
    return load(path, limits), [path]


# ---------------------------------------------------------------------------- writer
# The pickle is emitted opcode by opcode: pickling stand-in objects would make the pickler
# import torch to verify the globals it names.
def _op_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _op_int(n: int) -> bytes:
    if 0 <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(b)]) + b


def _op_tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _pickle_state_dict(entries: list[tuple[str, str, str, int, tuple, tuple]]) -> bytes:
    """entries: (name, storage_class, storage_key, numel, size, stride)."""
    empty_od = _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    out = [pickle.PROTO + bytes([2]), empty_od, pickle.MARK]
    for name, storage_cls, key, numel, size, stride in entries:
        pid = (
            _op_tuple(
                [
                    _op_str("storage"),
                    _op_global("torch", storage_cls),
                    _op_str(key),
                    _op_str("cpu"),
                    _op_int(numel),
                ]
            )
            + pickle.BINPERSID
        )
        args = _op_tuple(
            [
                pid,
                _op_int(0),
                _op_tuple([_op_int(d) for d in size]),
                _op_tuple([_op_int(d) for d in stride]),
                pickle.NEWFALSE,
                empty_od,
            ]
        )
        out += [
            _op_str(name),
            _op_global("torch._utils", "_rebuild_tensor_v2"),
            args,
            pickle.REDUCE,
        ]
    out += [pickle.SETITEMS, pickle.STOP]
    return b"".join(out)


def save(
    state_dict: Mapping[str, np.ndarray],
    path: str | Path,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``state_dict`` as a zip-format ``pytorch_model.bin`` (atomically).

    Arrays that are the same object (tied weights) share one storage, as torch.save does.
    """
    path = Path(path)
    storages: list[np.ndarray] = []
    by_id: dict[int, str] = {}
    entries = []
    for name, value in state_dict.items():
        if id(value) not in by_id:
            arr = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
            if arr.dtype not in _NP_TO_STORAGE:
                raise TorchBinError(
                    f"cannot store {name!r} of dtype {arr.dtype} in pytorch_model.bin"
                )
            by_id[id(value)] = str(len(storages))
            storages.append(arr)
        key = by_id[id(value)]
        arr = storages[int(key)]
        stride = []
        acc = 1
        for d in reversed(arr.shape):
            stride.insert(0, acc)
            acc *= d
        entries.append((name, _NP_TO_STORAGE[arr.dtype], key, arr.size, arr.shape, tuple(stride)))
    data = _pickle_state_dict(entries)
    root = "archive/"
    with atomic_output_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(root + "data.pkl", data)
        zf.writestr(root + "byteorder", "little")
        for i, arr in enumerate(storages):
            with zf.open(f"{root}data/{i}", "w", force_zip64=True) as entry:
                entry.write(memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b"")
            if progress:
                progress(arr.nbytes)
        zf.writestr(root + "version", "3\n")
    return path
