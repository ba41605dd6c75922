"""Loading at one copy: give back a memory-mapped tensor's pages once a backend holds its own.

``from_pretrained`` reads safetensors through a read-only memory map
(:func:`gpt2_core.formats.safetensors.load_file`): nothing is read until a tensor is used, and
the pages a backend touches while copying a tensor into its own buffer count in the process'
resident set. Left alone, a loaded model would therefore peak at two copies of the weights:
the framework's buffers plus the whole mapped file. :func:`release` drops the pages of one
array right after it was copied, so the peak stays near one copy plus the largest tensor.

It is only ever a memory hint: the mapping stays valid (a later read of the same array faults
the bytes back in from the file), arrays that are not memory-mapped are left alone, and
platforms without ``madvise`` simply skip it.

Example:
    >>> from gpt2_core.formats.safetensors import load_file
    >>> sd = load_file("model.safetensors")                 # doctest: +SKIP
    >>> wte = torch.from_numpy(np.array(sd["wte.weight"]))  # doctest: +SKIP
    >>> release(sd["wte.weight"])                           # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from typing import Any

import numpy as np

_PAGE = mmap.PAGESIZE
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def mapped_buffer(arr: Any) -> mmap.mmap | None:
    """The ``mmap.mmap`` an array's memory belongs to, or None (an ordinary array)."""
    base = arr
    for _ in range(64):  # numpy collapses view chains; the bound only guards odd bases
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None)
        if base is None:
            return None
    return None


def release(arr: Any, *, unwritten: bool = False) -> bool:
    """Drop the resident pages of a memory-mapped ``arr`` (no-op for other arrays).

    Returns True when pages were released. Safe to call on any array: the data stays readable
    (re-read from the file on the next access), so a wrong call costs time, never correctness.
    Only read-only mappings are touched (a private writable mapping would lose its writes),
    unless ``unwritten``: the caller knows nothing wrote to this copy-on-write map (a loader's
    own fresh ``mmap="private"`` map), so its pages are still the file's.
    """
    if _DONTNEED is None or not isinstance(arr, np.ndarray) or arr.size == 0:
        return False
    mm = mapped_buffer(arr)
    if mm is None or mm.closed:
        return False
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        return False
    if view.flags.writeable and not unwritten:  # ACCESS_WRITE / COPY: could drop writes
        return False
    lo, hi = np.lib.array_utils.byte_bounds(arr)
    base = view.ctypes.data
    start = max(0, (lo - base) // _PAGE * _PAGE)
    end = min(len(mm), -(-(hi - base) // _PAGE) * _PAGE)
    if end <= start:
        return False
    try:
        mm.madvise(_DONTNEED, start, end - start)
    except (OSError, ValueError):
        return False
    return True


_HUGE = 2 * 1024 * 1024
_MADV_HUGEPAGE = 14  # Linux


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise()


def _fresh(nbytes: int, align: int) -> np.ndarray:
    """``nbytes`` of new memory aligned to ``align``; big buffers ask for transparent huge
    pages: first-touch page faults, not the copy, bound loading speed on a VM (0.3-0.5 GB/s
    with 4 KB pages here, about 1.7x that with 2 MB pages)."""
    if nbytes < 4 * _HUGE or _madvise is None:
        raw = np.empty(nbytes + align, np.uint8)
        offset = (-raw.ctypes.data) % align
        return raw[offset : offset + nbytes]
    raw = np.empty(nbytes + _HUGE, np.uint8)
    offset = (-raw.ctypes.data) % _HUGE
    _madvise(raw.ctypes.data + offset, nbytes - nbytes % _HUGE, _MADV_HUGEPAGE)  # a hint only
    return raw[offset : offset + nbytes]


#: block size for :func:`owned_copy`: the most a copy holds of the source at once
BLOCK_BYTES = 16 * 1024 * 1024


def owned_copy(
    arr: Any, dtype: Any = None, *, align: int = 64, unwritten: bool = False
) -> np.ndarray:
    """A C-contiguous copy of ``arr`` (cast to ``dtype``) in new memory aligned to ``align``.

    Made in row blocks of about :data:`BLOCK_BYTES`, releasing each memory-mapped source
    block as it is copied, so the transient is one block, not a second tensor. The alignment
    lets a framework adopt the buffer instead of copying it again (``jax.device_put`` aliases
    a 64-byte-aligned host array on CPU).

    Example:
        >>> owned_copy(np.arange(6, dtype=np.float32).reshape(2, 3).T, np.float64).shape
        (3, 2)
    """
    arr = np.asarray(arr)
    dt = np.dtype(dtype) if dtype is not None else arr.dtype
    out = _fresh(arr.size * dt.itemsize, align).view(dt).reshape(arr.shape)
    if arr.ndim == 0 or arr.size == 0:
        out[...] = arr
        return out
    row_bytes = max(1, arr[:1].size * max(arr.dtype.itemsize, dt.itemsize))
    rows = max(1, BLOCK_BYTES // row_bytes)
    contiguous = arr.flags.c_contiguous
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        out[start : start + rows] = block
        if contiguous:
            release(block, unwritten=unwritten)
    release(arr, unwritten=unwritten)
    return out
