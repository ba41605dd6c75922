"""Bandwidth-bound fp32 CPU kernels for single-token decoding (``csrc/gpt2_kernels.c``).

Decoding one token multiplies a handful of rows by every weight matrix: the work is reading the
weights, so speed is memory bandwidth. Framework GEMVs for one row (MKL under torch, XLA's dot)
stream well below what this machine can read; the loops in ``csrc/gpt2_kernels.c`` stream close
to the limit, and :class:`DecodeStep` runs a whole GPT-2 token (embeddings, every block, the LM
head) in one call, so no per-op dispatch is paid either; :meth:`DecodeStep.prefill` runs a
whole prompt the same way (a small GEMM that widens bf16 / int8 weights once per prompt). The
three backends use them for fp32, bf16 and int8 generation on CPU (gpt2_flax through
``jax.ffi``); everything else keeps the framework's own ops.

The C file is compiled once with the system compiler (``cc -O3 -march=native -fopenmp``),
cached under ``$GPT2_ZOO_CACHE`` (default ``~/.cache/gpt2_zoo``) keyed by source, flags and CPU,
and called through ctypes. Everything here is optional: with no compiler, another architecture,
or ``GPT2_ZOO_CPU_KERNELS=0`` in the environment, :func:`load` returns ``None`` and the backends
use their framework ops. numpy only: no framework is imported here.

Example:
    >>> from gpt2_core import cpu_kernels
    >>> cpu_kernels.status()                       # doctest: +SKIP
    'loaded from /root/.cache/gpt2_zoo/kernels/gpt2_kernels-....so'
    >>> y = cpu_kernels.linear_kn(x, w, b)          # == b + x @ w, x (M, K), w (K, N) float32
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

logger = logging.getLogger(__name__)

#: rows up to which one weight pass serving all rows beats a framework GEMM here (MKL is
#: 1.4-3x slower for 2-16 rows on this AMD CPU; at 32 rows they tie)
MAX_ROWS = 16
#: activation name -> the C kernel's code (every name of ``GPT2Config.ACTIVATIONS``)
ACTIVATION_CODES = {
    "gelu_new": 0,
    "gelu_pytorch_tanh": 0,
    "gelu_fast": 0,
    "gelu": 1,
    "relu": 2,
    "quick_gelu": 3,
    "silu": 4,
    "swish": 4,
    "tanh": 5,
    "sigmoid": 6,
    "linear": 7,
}

_SOURCE = Path(__file__).with_name("csrc") / "gpt2_kernels.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_ABI = 6

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_threads_ok = True  # False when loading them brought a second OpenMP runtime (then 1 thread)
_status = "not loaded"
_off = 0  # > 0 inside disabled()


def _enabled_by_env() -> bool:
    flag = os.environ.get("GPT2_ZOO_CPU_KERNELS", "1").strip().lower()
    return flag not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    root = os.environ.get("GPT2_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpt2_zoo"
    )
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags."""
    sig = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    sig.append(line.strip())
                if len(sig) >= 4:
                    break
    except OSError:
        pass
    return "\n".join(sig)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX512-BF16 / AMX-BF16, Arm BF16).

    Without it, frameworks emulate bf16 matrix products: torch's bf16 prefill of a 16-token
    prompt for GPT-2 small takes 3.3 s on this AVX2 machine against 0.2 s in fp32, so
    ``generate`` runs the prompts of bf16 models through :meth:`DecodeStep.prefill` instead.
    """
    flags = set(_cpu_signature().replace(":", " ").split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _openmp_runtimes() -> set[str]:
    """Distinct OpenMP runtime files mapped into this process (Linux)."""
    found = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                name = os.path.basename(path)
                if name.startswith(("libgomp", "libiomp", "libomp")) and ".so" in name:
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return found


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, out)  # atomic: concurrent builders each publish a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64, cint, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.gpt2_gemv_kn.argtypes = [vp, i64, vp, cint, vp, vp, vp, i64, i64, i64, i64, vp, cint]
    lib.gpt2_gemv_kn.restype = None
    lib.gpt2_gemv_nk.argtypes = [vp, i64, vp, cint, vp, vp, i64, i64, i64, i64, cint]
    lib.gpt2_gemv_nk.restype = None
    lib.gpt2_decode_step.argtypes = [
        vp,
        vp,
        vp,
        vp,
        vp,
        vp,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f32,
        cint,
        cint,
        vp,
        vp,
        cint,
        cint,
        vp,
    ]
    lib.gpt2_decode_step.restype = None
    lib.gpt2_prefill.argtypes = lib.gpt2_decode_step.argtypes
    lib.gpt2_prefill.restype = None
    lib.gpt2_prefill_work_floats.argtypes = [i64, i64, i64, i64, i64, cint]
    lib.gpt2_prefill_work_floats.restype = i64
    lib.gpt2_decode_work_floats.argtypes = [i64, i64, i64, i64, i64, i64, cint]
    lib.gpt2_decode_work_floats.restype = i64


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where unavailable (see
    :func:`status`)."""
    global _lib, _tried, _threads_ok, _status
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if not _enabled_by_env():
            _status = "disabled by GPT2_ZOO_CPU_KERNELS"
            return None
        if platform.system() != "Linux" or platform.machine() not in (
            "x86_64",
            "AMD64",
            "aarch64",
            "arm64",
        ):
            _status = f"unsupported platform {platform.system()} {platform.machine()}"
            return None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            _status = "unavailable: no C compiler (cc / gcc / $CC) found"
            return None
        before = _openmp_runtimes()
        if not before and not ({"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ)):
            # our libgomp is the process's first OpenMP runtime: it reads this as it loads.
            # libgomp's default (~300k spins before sleeping) makes a waiting thread burn a
            # core; on a busy machine that halved TF generation here (16.8 vs 30.2 tok/s with
            # two competing processes), and idle it changes nothing measurable.
            os.environ["GOMP_SPINCOUNT"] = "10000"
        try:
            source = _SOURCE.read_bytes()
            key = hashlib.sha256(
                b"\0".join(
                    [source, " ".join(_FLAGS).encode(), cc.encode(), _cpu_signature().encode()]
                )
            ).hexdigest()[:20]
            path = _cache_dir() / f"gpt2_kernels-{key}.so"
            if not path.exists():
                try:
                    _build(cc, path)
                except OSError:  # unwritable cache: build into a private temporary directory
                    path = Path(tempfile.mkdtemp(prefix="gpt2_zoo_kernels_")) / path.name
                    _build(cc, path)
            lib = ctypes.CDLL(str(path))
            abi = lib.gpt2_kernels_abi()
            if abi != _ABI:
                raise RuntimeError(f"{path}: ABI {abi} != {_ABI}")
            _declare(lib)
        except Exception as e:  # a missing or broken toolchain only costs speed
            _status = f"unavailable: {e}"
            logger.info("gpt2 CPU kernels %s; using framework ops", _status)
            return None
        after = _openmp_runtimes()
        # torch's libgomp has the same soname as the system one, so the loader reuses it and
        # nothing new appears. A second runtime next to an existing one (e.g. torch built with
        # Intel OpenMP) would spin against its threads: then the kernels run single-threaded.
        _threads_ok = not before or after == before
        _lib = lib
        _status = f"loaded from {path}" + (
            "" if _threads_ok else f" (single-threaded: OpenMP runtimes {sorted(after)})"
        )
        logger.debug("gpt2 CPU kernels %s", _status)
        return _lib


def status() -> str:
    """A line saying whether the kernels are in use, and if not, why."""
    load()
    return "disabled() in effect" if _off and _lib is not None else _status


def active() -> bool:
    """Loaded, and not inside :func:`disabled`."""
    return not _off and load() is not None


@contextlib.contextmanager
def disabled():
    """Run the block with framework ops only (e.g. to compare against the kernels).

    Example:
        >>> with cpu_kernels.disabled():
        ...     reference = model.generate(ids, max_new_tokens=8)   # doctest: +SKIP
    """
    global _off
    with _lock:
        _off += 1
    try:
        yield
    finally:
        with _lock:
            _off -= 1


def _reset() -> None:
    """Forget the loaded library (tests: load again under another environment)."""
    global _lib, _tried, _threads_ok, _status
    with _lock:
        _lib, _tried, _threads_ok, _status = None, False, True, "not loaded"


def library() -> ctypes.CDLL:
    """The loaded library; raises RuntimeError (with :func:`status`) where unavailable."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"gpt2 CPU kernels {_status}")
    return lib


def threads(requested: int | None = None) -> int:
    """Threads to use: ``requested`` (default ``$GPT2_ZOO_CPU_THREADS``, else the CPUs this
    process may run on), or 1 where the kernels' OpenMP runtime is a second one."""
    if not _threads_ok:
        return 1
    if requested is None:
        env = os.environ.get("GPT2_ZOO_CPU_THREADS")
        if env:
            requested = int(env)
        else:
            try:
                requested = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                requested = os.cpu_count() or 1
    return max(1, int(requested))


# ----------------------------------------------------------------------------- numpy entry points
#: the weight dtypes the kernels read: float32, bfloat16 (``ml_dtypes``) widened on the fly, and
#: int8 with one float32 scale per output channel (:mod:`gpt2_core.quantize`)
BF16 = np.dtype(ml_dtypes.bfloat16)
#: the C kernels' weight kinds (``wq``), by numpy dtype
WEIGHT_KINDS = {np.dtype(np.float32): 0, BF16: 1, np.dtype(np.int8): 2}
INT8 = 2


# prompt rows (batch x prompt length) up to which a bf16 prompt runs on the kernel's prefill
# even where the CPU multiplies bf16 natively (see kernel_prefill)
NATIVE_BF16_PREFILL_ROWS = 32


def kernel_prefill(weight_dtype: Any, rows: int) -> bool:
    """Whether ``generate`` should run a prompt of ``rows`` (batch x prompt length) tokens
    through :meth:`DecodeStep.prefill` rather than the framework's own forward, for weight
    matrices of ``weight_dtype``. The one rule of all three backends:

    * int8: always (the frameworks dequantize every weight per call: ~200 ms for a 16-token
      GPT-2 small prompt in XLA, the kernel's prefill ~40-55 ms);
    * bf16 on a CPU without native bf16 products: always (torch's emulated bf16 GEMM took
      3.3 s, XLA's bf16 program 206 ms);
    * bf16 with native bf16 (AVX512-BF16): up to :data:`NATIVE_BF16_PREFILL_ROWS` rows. On the
      2-core AVX512-BF16 EPYC, the prompt plus one token for GPT-2 small took (kernel /
      framework) torch 40 / 69 ms at 16 rows, 59 / 76 at 32, 101 / 90 at 64; TF 47 / 56,
      66 / 74, 115 / 106: the frameworks' bf16 GEMMs win from ~48 rows on;
    * fp32: never (the frameworks' fp32 GEMMs cost about the kernel's: torch 50 / 62 ms at 16
      rows, 77 / 78 at 32; XLA faster from 32 rows)."""
    kind = np.dtype(weight_dtype)
    if kind == np.int8:
        return True
    if kind != BF16:
        return False
    return not native_bf16() or rows <= NATIVE_BF16_PREFILL_ROWS


def _f32(a: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32 numpy array")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return a


def _weight(a: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> int:
    """Check a weight matrix (C-contiguous float32, bfloat16 or int8); its kind (0, 1, 2)."""
    if not isinstance(a, np.ndarray) or a.dtype not in WEIGHT_KINDS or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous float32, bfloat16 or int8 numpy array")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return WEIGHT_KINDS[a.dtype]


def _scale(kind: int, scale: np.ndarray | None, name: str, n: int) -> int | None:
    """The address of an int8 weight's ``n`` per-channel scales (None for float weights)."""
    if kind != INT8:
        if scale is not None:
            raise ValueError(f"{name}: a scale goes with int8 weights only")
        return None
    if scale is None:
        raise ValueError(f"{name} is int8: its per-channel scales are required")
    return _f32(scale, f"{name} scale", (n,)).ctypes.data


def linear_kn(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    nt: int | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``b + x @ w`` for x (M, K), w (K, N) (GPT-2's Conv1D layout); x and b float32, w float32
    or bfloat16 (widened to fp32 in registers: the sums are fp32 either way), or int8 with
    ``scale`` (N,) float32 (then ``b + (x @ w) * scale``)."""
    wq = _weight(w, "w")
    K, N = w.shape
    s = _scale(wq, scale, "w", N)
    x = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} features, w expects {K}")
    if b is not None:
        _f32(b, "bias", (N,))
    M = x.shape[0]
    nt = threads(nt)
    y = np.empty((M, N), np.float32)
    scratch = np.empty(max(1, (nt - 1) * M * N), np.float32)
    library().gpt2_gemv_kn(
        x.ctypes.data,
        K,
        w.ctypes.data,
        wq,
        s,
        None if b is None else b.ctypes.data,
        y.ctypes.data,
        N,
        M,
        K,
        N,
        scratch.ctypes.data,
        nt,
    )
    return y


def linear_nk(
    x: np.ndarray, w: np.ndarray, nt: int | None = None, scale: np.ndarray | None = None
) -> np.ndarray:
    """``x @ w.T`` for x (M, K), w (N, K) (nn.Linear's layout, e.g. the tied LM head); w
    float32 or bfloat16, or int8 with ``scale`` (N,) (one per row of w)."""
    wq = _weight(w, "w")
    N, K = w.shape
    s = _scale(wq, scale, "w", N)
    x = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    if x.shape[1] != K:
        raise ValueError(f"x has {x.shape[1]} features, w expects {K}")
    y = np.empty((x.shape[0], N), np.float32)
    library().gpt2_gemv_nk(
        x.ctypes.data, K, w.ctypes.data, wq, s, y.ctypes.data, N, x.shape[0], K, N, threads(nt)
    )
    return y


def attention_scales(config: Any) -> list[float]:
    """The score scale of each layer: 1/sqrt(head_dim) (``scale_attn_weights``) divided by
    layer_idx + 1 (``scale_attn_by_inverse_layer_idx``)."""
    base = 1.0 / math.sqrt(config.n_embd // config.n_head) if config.scale_attn_weights else 1.0
    return [
        base / (i + 1) if config.scale_attn_by_inverse_layer_idx else base
        for i in range(config.n_layer)
    ]


class DecodeStep:
    """A whole single-token GPT-2 step in one kernel call: embeddings, every block (layer norms,
    q/k/v, writing the new key/value into a static cache, attention, MLP) and the LM head.

    Python and per-op dispatch cost 2-4 ms per token on this CPU, a fifth of a GPT-2 small step;
    here they are one ctypes call, and the team of threads stays together from the first weight
    to the last. The backends build one per ``generate`` call over views of their own weights
    (no copies) and a (B, H, L, D) key and value buffer per layer.

    Args:
        config: the GPT2Config.
        weights: canonical name -> C-contiguous array, canonical layouts (Conv1D (in, out));
            ``lm_head.weight`` (V, C), or (C, V) with ``head_transposed``. The matrices (wte,
            the LM head, c_attn, c_proj, c_fc) are all float32, all bfloat16 (half the bytes
            to read per token; widened to fp32 in registers) or all int8 (a quarter), each int8
            one with its float32 per-output-channel scales under ``<name>_scale`` (e.g.
            ``transformer.wte.weight_scale`` (V,), one per vocabulary entry for both the
            embedding and the head; see :mod:`gpt2_core.quantize`); the layer norms, biases and
            wpe are float32, or bfloat16 widened to a float32 copy here (they are small).
        keys, values: per layer (B, H, L, D) float32 buffers, written at each step's slot.
        batch: B rows (at most :data:`MAX_ROWS`).
        scales: per-layer attention scales (default :func:`attention_scales`).
        nt: threads (default :func:`threads`).

    Example:
        >>> step = DecodeStep(cfg, weights, keys, values, batch=1)      # doctest: +SKIP
        >>> logits = step(ids, positions, bias, slot)                    # (B, V)
    """

    LAYER_NAMES = (
        "ln_1.weight",
        "ln_1.bias",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    )
    MATRICES = frozenset(
        ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    )

    @staticmethod
    def unsupported_reason(config: Any, batch: int, max_length: int) -> str | None:
        """``None`` if the configuration can run here, else why not (framework-independent
        part: the backends add dtype, device and mode checks)."""
        if not active():
            return f"CPU kernels {status()}"
        if batch > MAX_ROWS:
            return f"batch {batch} > {MAX_ROWS} rows"
        if config.activation_function not in ACTIVATION_CODES:
            return f"activation {config.activation_function!r}"
        if getattr(config, "add_cross_attention", False):
            return "cross-attention"
        if max_length > config.n_positions:  # positions <= slots < max_length index wpe
            return f"cache length {max_length} > n_positions {config.n_positions}"
        return None

    def __init__(
        self,
        config: Any,
        weights: dict[str, np.ndarray],
        keys: list[np.ndarray],
        values: list[np.ndarray],
        batch: int,
        head_transposed: bool = False,
        scales: list[float] | None = None,
        nt: int | None = None,
    ) -> None:
        self._lib = library()
        C, H, V = config.n_embd, config.n_head, config.vocab_size
        F = config.inner_dim
        self.C, self.H, self.F, self.V, self.n_layer = C, H, F, V, config.n_layer
        self.M = batch
        self.P = config.n_positions
        self.L = keys[0].shape[2]
        self.eps = float(config.layer_norm_epsilon)
        self.act = ACTIVATION_CODES[config.activation_function]
        self.head_kn = int(head_transposed)
        self.nt = threads(nt)
        self._keep: list[np.ndarray] = []  # every array whose address the kernel holds
        D = C // H
        cache_shape = (batch, H, self.L, D)

        wte = weights["transformer.wte.weight"]
        self.wq = _weight(wte, "transformer.wte.weight", (config.vocab_size, C))
        qscales: list[int] = []

        def ptr(name: str, shape: tuple[int, ...] | None = None, matrix: bool = False) -> int:
            a = weights[name]
            if matrix:
                if _weight(a, name, shape) != self.wq:
                    raise TypeError(
                        f"{name} is {a.dtype} but transformer.wte.weight is "
                        f"{wte.dtype}: the weight matrices must share one dtype"
                    )
                if self.wq == INT8:  # one scale per output channel: the last axis, but rows
                    n = (
                        shape[0]
                        if name in ("transformer.wte.weight", "lm_head.weight")
                        and not (name == "lm_head.weight" and head_transposed)
                        else shape[1]
                    )
                    s = weights.get(name + "_scale")
                    if s is None and name == "lm_head.weight" and a is wte:  # tied
                        s = weights.get("transformer.wte.weight_scale")
                    qscales.append(_scale(INT8, s, name, n))
                    self._keep.append(s)
            else:
                if isinstance(a, np.ndarray) and a.dtype == BF16:
                    a = a.astype(np.float32)  # a vector or wpe: widened once, exactly
                _f32(a, name, shape)
            self._keep.append(a)
            return a.ctypes.data

        head_shape = (C, V) if head_transposed else (V, C)
        glob = [
            ptr("transformer.wte.weight", (V, C), matrix=True),
            ptr("transformer.wpe.weight", (config.n_positions, C)),
            ptr("transformer.ln_f.weight", (C,)),
            ptr("transformer.ln_f.bias", (C,)),
            ptr("lm_head.weight", head_shape, matrix=True),
        ]
        shapes = [
            (C,),
            (C,),
            (C, 3 * C),
            (3 * C,),
            (C, C),
            (C,),
            (C,),
            (C,),
            (C, F),
            (F,),
            (F, C),
            (C,),
        ]
        per_layer = []
        if len(keys) != config.n_layer or len(values) != config.n_layer:
            raise ValueError(f"need {config.n_layer} key and value buffers")
        for i, (k, v) in enumerate(zip(keys, values)):
            per_layer += [
                ptr(f"transformer.h.{i}.{n}", s, matrix=n in self.MATRICES)
                for n, s in zip(self.LAYER_NAMES, shapes)
            ]
            for name, buf in (("keys", k), ("values", v)):
                _f32(buf, f"{name}[{i}]", cache_shape)
                if not buf.flags.writeable:
                    raise ValueError(f"{name}[{i}] is read-only")
                self._keep.append(buf)
                per_layer.append(buf.ctypes.data)
        self._glob = (ctypes.c_void_p * 5)(*glob)
        self._qscales = (ctypes.c_void_p * max(1, len(qscales)))(*qscales)
        self._layers = (ctypes.c_void_p * len(per_layer))(*per_layer)
        self._scales = np.asarray(
            scales if scales is not None else attention_scales(config), np.float32
        )
        self._work = np.empty(
            self._lib.gpt2_decode_work_floats(batch, C, H, self.L, F, V, self.nt), np.float32
        )

    def __call__(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        bias: np.ndarray,
        slot: int,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits (B, V) after feeding ``ids`` (B,) at ``positions`` (B,) into cache ``slot``;
        ``bias`` (B, L) is the additive padding mask over cache slots (slots after ``slot`` are
        never read). An id outside the vocabulary or a position outside wpe is a ValueError."""
        M, L = self.M, self.L
        ids = np.ascontiguousarray(ids, np.int64).reshape(M)
        positions = np.ascontiguousarray(positions, np.int64).reshape(M)
        self._check_tokens(ids, positions)
        bias = np.ascontiguousarray(bias, np.float32).reshape(M, L)
        if not 0 <= slot < L:
            raise ValueError(f"cache slot {slot} outside [0, {L})")
        if out is None:
            out = np.empty((M, self.V), np.float32)
        else:
            _f32(out, "out", (M, self.V))
        self._run(self._lib.gpt2_decode_step, ids, positions, bias, slot, out, self._work)
        return out

    def _run(self, fn, ids, positions, bias, slot_or_len: int, out, work) -> None:
        """``fn`` (gpt2_decode_step or gpt2_prefill: the same arguments) over this step's
        weights and caches."""
        fn(
            ids.ctypes.data,
            positions.ctypes.data,
            self._glob,
            self._layers,
            self._scales.ctypes.data,
            bias.ctypes.data,
            slot_or_len,
            self.M,
            self.C,
            self.H,
            self.L,
            self.F,
            self.V,
            self.n_layer,
            self.eps,
            self.act,
            self.head_kn,
            out.ctypes.data,
            work.ctypes.data,
            self.nt,
            self.wq,
            self._qscales,
        )

    def prefill(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        bias: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits (B, V) of the last token after feeding each row's whole prompt ``ids`` (B, T)
        at ``positions`` (B, T) into cache slots [0, T) in one call; ``bias`` (B, L) as in
        :meth:`__call__`. Each weight is read (and, for bf16 / int8, widened) once for all
        B * T tokens, where T single-token steps would read it T times: the prompt of a bf16
        or int8 model costs about what its fp32 prompt costs in a framework GEMM, not T steps.

        Example:
            >>> logits = step.prefill(ids, positions, bias)   # then step(next, pos, bias, T)
        """
        M, L = self.M, self.L
        ids = np.ascontiguousarray(ids, np.int64)
        positions = np.ascontiguousarray(positions, np.int64)
        if ids.ndim != 2 or ids.shape[0] != M or positions.shape != ids.shape:
            raise ValueError(
                f"prompt ids {ids.shape} and positions {positions.shape} must both be ({M}, T)"
            )
        T = ids.shape[1]
        if not 0 < T <= L:
            raise ValueError(f"prompt of {T} tokens does not fit cache slots [0, {L})")
        self._check_tokens(ids, positions)
        bias = np.ascontiguousarray(bias, np.float32).reshape(M, L)
        if out is None:
            out = np.empty((M, self.V), np.float32)
        else:
            _f32(out, "out", (M, self.V))
        work = np.empty(
            self._lib.gpt2_prefill_work_floats(M, T, self.C, L, self.F, self.nt), np.float32
        )
        self._run(self._lib.gpt2_prefill, ids, positions, bias, T, out, work)
        return out

    def _check_tokens(self, ids: np.ndarray, positions: np.ndarray) -> None:
        """The kernel indexes wte and wpe with these: out of range would read other memory."""
        bad = (ids < 0) | (ids >= self.V)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} outside the vocabulary [0, {self.V})")
        bad = (positions < 0) | (positions >= self.P)
        if bad.any():
            raise ValueError(
                f"position {int(positions[bad][0])} outside [0, {self.P}) (n_positions)"
            )

    @property
    def wbf16(self) -> int:
        """1 if the matrices are bfloat16 (see :attr:`wq`: 0 float32, 1 bfloat16, 2 int8)."""
        return int(self.wq == 1)
