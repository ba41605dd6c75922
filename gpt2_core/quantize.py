"""int8 weight-only quantization of a canonical GPT-2 state dict (numpy; no framework).

Decoding one token reads every weight once, so on a CPU its speed is the bytes per weight:
int8 weights are a quarter of fp32's. Only the weights are quantized; activations, layer norms,
biases, ``wpe`` and the key/value cache stay float32, and every product sums in float32.

Scheme: symmetric, one float32 scale per **output channel**, ``q = round(w / s)`` clipped to
[-127, 127] with ``s = max|w| / 127`` over the channel (a channel of zeros gets ``s = 1``):

* the Conv1D matrices ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj`` are stored
  (in, out), so each **column** has a scale: ``scale`` shape (out,);
* ``transformer.wte.weight`` (V, C) gets one scale per **row** (vocabulary entry). GPT-2 ties
  the LM head to it, and the head's output channels are exactly those rows, so one int8 matrix
  and one scale vector serve both the embedding lookup (dequantize one row) and the head. The
  head is 38.6M of GPT-2 small's 124M weights (31% of the bytes read per token): leaving it in
  fp32 would cap int8 decoding at about 2x fp32, so it is quantized too. An untied
  ``lm_head.weight`` (V, C) is quantized per row the same way.

Everything else (``wpe``, layer norms, biases, classifier heads) is left as it is: together
0.1% of GPT-2 small's bytes per token, and the layer norms are where precision matters most.

The rounding error of one weight is at most ``s / 2`` (:func:`max_abs_error`). Scales are
stored next to their matrix as ``<name>_scale`` (e.g. ``transformer.h.0.mlp.c_fc.weight_scale``),
which is the layout :class:`gpt2_core.cpu_kernels.DecodeStep` reads.

Example:
    >>> import numpy as np
    >>> w = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)   # (in, out)
    >>> q, s = quantize_int8(w, axis=0)                         # scales over the in axis
    >>> q.dtype, s.shape
    (dtype('int8'), (2,))
    >>> bool(np.abs(dequantize_int8(q, s, axis=0) - w).max() <= s.max() / 2)
    True
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

#: quantization schemes this project implements (``quantize=`` / ``--quantize``)
SCHEMES = ("int8",)
#: the Conv1D matrices of each block, stored (in, out): one scale per column
_CONV1D = re.compile(r"(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
#: the (V, C) matrices: one scale per row (vocabulary entry)
_ROWS = re.compile(r"(^|\.)(wte\.weight|lm_head\.weight)$")
#: suffix of the scale vector stored next to an int8 matrix
SCALE_SUFFIX = "_scale"


def check_scheme(quantize: str | None) -> str | None:
    """Validate a ``quantize=`` argument: ``None`` (no quantization) or one of :data:`SCHEMES`.

    Raises:
        ValueError: any other value, naming the choices (e.g. ``"int4"``).
    """
    if quantize is None:
        return None
    if not isinstance(quantize, str) or quantize.lower() not in SCHEMES:
        raise ValueError(
            f"quantize={quantize!r} is not supported; choose one of {SCHEMES} "
            "(or None for unquantized weights)"
        )
    return quantize.lower()


def resolve(dtype, quantize: str | None) -> tuple[object, str | None]:
    """The ``(dtype, scheme)`` a ``from_pretrained(dtype=..., quantize=...)`` call means.

    ``dtype="int8"`` is a synonym of ``quantize="int8"`` (the float parts then load in float32,
    returned as ``"float32"``, a spelling every backend takes); ``quantize`` alone keeps ``dtype`` for the
    float parts, which must then be float32 (the kernels' activations and cache are float32).

    Raises:
        ValueError: an unknown scheme, or a ``dtype`` that contradicts ``quantize``.
    """
    scheme = check_scheme(quantize)
    if isinstance(dtype, str) and dtype.lower() in SCHEMES:
        if scheme is not None and scheme != dtype.lower():
            raise ValueError(f"dtype={dtype!r} contradicts quantize={quantize!r}")
        return "float32", dtype.lower()
    if isinstance(dtype, str) and dtype.lower().startswith("int"):
        raise ValueError(
            f"dtype={dtype!r} is not supported; for quantized weights use "
            f"dtype='int8' or quantize='int8' (schemes: {SCHEMES})"
        )
    if (
        scheme is not None
        and dtype is not None
        and "float32" not in str(dtype)
        and str(dtype) not in ("fp32", "auto")
    ):
        raise ValueError(
            f"quantize={scheme!r} keeps the layer norms, biases and activations in "
            f"float32; dtype={dtype!r} is not supported with it"
        )
    return dtype, scheme


def quantize_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of a 2-D float matrix with one scale per output channel.

    Args:
        w: (rows, cols) float matrix (any float dtype; computed in float64 and rounded once).
        axis: the axis summed over by the matrix product (the input axis): 0 for a Conv1D
            (in, out) weight (a scale per column), 1 for a (V, C) embedding / LM head (a scale
            per row).

    Returns:
        ``(q, scale)``: ``q`` int8 with ``w``'s shape (C-contiguous), ``scale`` float32 with
        one entry per output channel.
    """
    w = np.asarray(w)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) and w.dtype.kind != "V":
        raise ValueError(f"quantize_int8 takes a 2-D float matrix, got {w.dtype} {w.shape}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis}")
    w64 = w.astype(np.float64)
    if not np.isfinite(w64).all():
        raise ValueError("cannot quantize a matrix with NaN or infinite values")
    amax = np.abs(w64).max(axis=axis)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    s = scale.astype(np.float64)
    q = np.rint(w64 / (s[None, :] if axis == 0 else s[:, None]))
    return np.ascontiguousarray(np.clip(q, -127, 127).astype(np.int8)), scale


def dequantize_int8(
    q: np.ndarray, scale: np.ndarray, axis: int, dtype: type = np.float32
) -> np.ndarray:
    """The float matrix an int8 one stands for: ``q * scale`` broadcast over output channels
    (the reference every backend's int8 path is checked against)."""
    s = np.asarray(scale, np.float32)
    out = q.astype(np.float32) * (s[None, :] if axis == 0 else s[:, None])
    return out.astype(dtype, copy=False)


def max_abs_error(scale: np.ndarray) -> float:
    """The largest |w - dequantized(w)| any weight can have: half a step of its channel."""
    return float(np.asarray(scale, np.float64).max() / 2)


def reduction_axis(key: str) -> int | None:
    """The input axis of a canonical weight that :func:`quantize_state_dict` quantizes (0 for
    the Conv1D matrices, 1 for wte / lm_head), or ``None`` for one it leaves alone."""
    if _CONV1D.search(key):
        return 0
    if _ROWS.search(key):
        return 1
    return None


def is_quantized(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict holds int8 matrices (with their ``_scale`` vectors)."""
    return any(k.endswith(SCALE_SUFFIX) for k in state_dict)


def quantize_state_dict(
    state_dict: Mapping[str, np.ndarray], scheme: str = "int8"
) -> dict[str, np.ndarray]:
    """A canonical state dict with every quantizable matrix (:func:`reduction_axis`) replaced by
    int8 and its scales added under ``<key>_scale``; other entries float32.

    Tied entries (the same array under two keys, e.g. ``lm_head.weight`` and
    ``transformer.wte.weight``) stay one int8 array and one scale vector.
    """
    check_scheme(scheme)
    out: dict[str, np.ndarray] = {}
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for key, arr in state_dict.items():
        if key.endswith(SCALE_SUFFIX) or np.asarray(arr).dtype == np.int8:
            raise ValueError(f"{key}: the state dict is already quantized")
        axis = reduction_axis(key)
        if axis is None:
            a = np.asarray(arr)
            out[key] = a.astype(np.float32) if a.dtype.kind in "fV" else a
            continue
        if id(arr) not in done:
            done[id(arr)] = quantize_int8(arr, axis)
        out[key], out[key + SCALE_SUFFIX] = done[id(arr)]
    return out


def dequantize_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float32 state dict a quantized one stands for (drops the ``_scale`` entries)."""
    out = {}
    for key, arr in state_dict.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = state_dict.get(key + SCALE_SUFFIX)
        out[key] = arr if scale is None else dequantize_int8(arr, scale, reduction_axis(key))
    return out
