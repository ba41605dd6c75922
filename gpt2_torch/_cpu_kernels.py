"""Bandwidth-bound fp32 kernels for single-token decoding on CPU (``csrc/gemv.c``).

Decoding one token multiplies a handful of rows by every weight matrix: the work is reading the
weights, so speed is memory bandwidth. torch's CPU GEMV for one row (MKL) streams about half of
what this machine can read; the two loops in ``csrc/gemv.c`` stream close to the limit. They are
compiled once with the system C compiler (``cc -O3 -march=native -fopenmp``), cached under
``$GPT2_ZOO_CACHE`` (default ``~/.cache/gpt2_zoo``) keyed by source, flags and CPU, and called
through ctypes. The OpenMP runtime they link is the one torch already loaded, so they share
torch's intra-op threads (``torch.set_num_threads``) instead of competing with them.

Everything here is optional: with no compiler, another architecture, another OpenMP runtime, or
``GPT2_ZOO_CPU_KERNELS=0`` in the environment, :func:`load` returns ``None`` and callers use
``torch.addmm``. The kernels only run on plain fp32 CPU tensors with no autograd (inference),
outside ``torch.compile`` / tracing, and for at most :data:`MAX_ROWS` rows.

Example:
    >>> from gpt2_torch import _cpu_kernels as K
    >>> if K.load() is not None:
    ...     y = K.linear_kn(x, weight, bias)  # == torch.addmm(bias, x, weight)
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: rows up to which one weight pass serving all rows beats torch's GEMM here (MKL is 1.4-3x slower
#: for 2-16 rows on this AMD CPU; at 32 rows they tie)
MAX_ROWS = 16
_SOURCE = Path(__file__).with_name("csrc") / "gemv.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_ABI = 2

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_threads_ok = True  # False when the kernels' OpenMP runtime is not torch's (then 1 thread)
_status = "not loaded"
_off = 0  # > 0 inside disabled()


def _enabled_by_env() -> bool:
    return os.environ.get("GPT2_ZOO_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_dir() -> Path:
    root = os.environ.get("GPT2_ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpt2_zoo")
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
        proc = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp], capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, out)  # atomic: concurrent builders each publish a complete file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; ``None`` where unavailable."""
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
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64",
                                                                      "aarch64", "arm64"):
            _status = f"unsupported platform {platform.system()} {platform.machine()}"
            return None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            _status = "no C compiler (cc / gcc / $CC) found"
            return None
        before = _openmp_runtimes()
        try:
            source = _SOURCE.read_bytes()
            key = hashlib.sha256(b"\0".join([source, " ".join(_FLAGS).encode(), cc.encode(),
                                             _cpu_signature().encode()])).hexdigest()[:20]
            path = _cache_dir() / f"gemv-{key}.so"
            if not path.exists():
                try:
                    _build(cc, path)
                except OSError:  # unwritable cache: build into a private temporary directory
                    path = Path(tempfile.mkdtemp(prefix="gpt2_zoo_kernels_")) / path.name
                    _build(cc, path)
            lib = ctypes.CDLL(str(path))
            if lib.gpt2_kernels_abi() != _ABI:
                raise RuntimeError(f"{path}: ABI {lib.gpt2_kernels_abi()} != {_ABI}")
        except Exception as e:  # a missing or broken toolchain only costs speed
            _status = f"unavailable: {e}"
            logger.info("gpt2_torch CPU kernels %s; using torch.addmm", _status)
            return None
        vp, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.gpt2_gemv_kn.argtypes = [vp, i64, vp, vp, vp, i64, i64, i64, i64, vp, cint]
        lib.gpt2_gemv_kn.restype = None
        lib.gpt2_gemv_nk.argtypes = [vp, i64, vp, vp, i64, i64, i64, i64, cint]
        lib.gpt2_gemv_nk.restype = None
        lib.gpt2_decode_step.argtypes = [vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, i64, i64,
                                         i64, i64, ctypes.c_float, cint, vp, vp, cint]
        lib.gpt2_decode_step.restype = None
        lib.gpt2_decode_work_floats.argtypes = [i64, i64, i64, i64, i64, cint]
        lib.gpt2_decode_work_floats.restype = i64
        after = _openmp_runtimes()
        # torch's libgomp has the same soname, so the loader reuses it and nothing new appears.
        # A second runtime (e.g. torch built with Intel OpenMP) would spin against torch's
        # threads: then the kernels run on the calling thread only.
        _threads_ok = len(after) <= 1 or after == before
        _lib = lib
        _status = f"loaded from {path}" + ("" if _threads_ok else " (single-threaded: "
                                           f"OpenMP runtimes {sorted(after)})")
        logger.debug("gpt2_torch CPU kernels %s", _status)
        return _lib


@contextlib.contextmanager
def disabled():
    """Run the block with torch ops only (e.g. to compare against the kernels).

    Example:
        >>> with _cpu_kernels.disabled():
        ...     reference = model.generate(ids, max_new_tokens=8)
    """
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def _reset() -> None:
    """Forget the loaded library (tests: load again under another environment)."""
    global _lib, _tried, _threads_ok, _status
    with _lock:
        _lib, _tried, _threads_ok, _status = None, False, True, "not loaded"


def _require() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f"gpt2_torch CPU kernels {_status}")
    return lib


def status() -> str:
    """A line saying whether the kernels are in use, and if not, why."""
    load()
    return _status


def _threads() -> int:
    return torch.get_num_threads() if _threads_ok else 1


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight``-style products may take the kernels: plain fp32 CPU tensors, no
    autograd, not inside torch.compile / jit tracing, at most :data:`MAX_ROWS` rows."""
    return (
        type(x) is torch.Tensor
        and type(weight) in (torch.Tensor, torch.nn.Parameter)
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.dim() >= 1
        and 0 < x.numel() <= MAX_ROWS * x.shape[-1]
        and weight.is_contiguous()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _off
        and load() is not None
    )


def linear_kn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``bias + x @ weight`` for ``weight`` (K, N) (GPT-2's Conv1D layout); x (..., K)."""
    K, N = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features, weight expects {K}")
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if bias is not None:
        if bias.shape != (N,) or bias.dtype != torch.float32 or bias.device.type != "cpu":
            raise ValueError(f"bias must be fp32 CPU of shape ({N},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    y = torch.empty(M, N, dtype=torch.float32)
    nt = _threads()
    scratch = torch.empty((nt - 1) * M * N if nt > 1 else 1, dtype=torch.float32)
    _require().gpt2_gemv_kn(x2.data_ptr(), K, weight.data_ptr(),
                      None if bias is None else bias.data_ptr(), y.data_ptr(), N, M, K, N,
                      scratch.data_ptr(), nt)
    return y.view(*x.shape[:-1], N)


def linear_nk(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for ``weight`` (N, K) (nn.Linear's layout, e.g. the tied LM head)."""
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features, weight expects {K}")
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=torch.float32)
    _require().gpt2_gemv_nk(x2.data_ptr(), K, weight.data_ptr(), y.data_ptr(), N, M, K, N, _threads())
    return y.view(*x.shape[:-1], N)


#: activation name -> the C kernel's code (every name of ``GPT2Config.ACTIVATIONS``)
ACTIVATION_CODES = {
    "gelu_new": 0, "gelu_pytorch_tanh": 0, "gelu_fast": 0, "gelu": 1, "relu": 2,
    "quick_gelu": 3, "silu": 4, "swish": 4, "tanh": 5, "sigmoid": 6, "linear": 7,
}


class DecodeStep:
    """A whole single-token GPT-2 step in one kernel call: embeddings, every block (layer norms,
    q/k/v, writing the new key/value into the static cache, attention, MLP) and the LM head.

    Python and per-op dispatch cost about 2-4 ms per token on this CPU, a fifth of a GPT-2 small
    step; here they are one ctypes call, and the team of threads stays together from the first
    weight to the last. Built per ``generate`` call over its cache; :meth:`unsupported_reason`
    says when it cannot be used (the caller then runs the torch modules).

    Example:
        >>> step = DecodeStep(model, cache, batch=1)
        >>> logits = step(ids, positions, pad_bias, slot)   # (B, V)
    """

    def __init__(self, model: torch.nn.Module, cache, batch: int) -> None:
        self._lib = _require()
        cfg = model.config
        tr = model.transformer
        self.C, self.H, self.F = cfg.n_embd, cfg.n_head, cfg.inner_dim
        self.V, self.n_layer = cfg.vocab_size, cfg.n_layer
        self.L, self.M = cache.max_length, batch
        self.eps = float(cfg.layer_norm_epsilon)
        self.act = ACTIVATION_CODES[cfg.activation_function]
        self._keep = []  # every tensor whose address the kernel holds

        def ptr(t: torch.Tensor) -> int:
            self._keep.append(t)
            return t.data_ptr()

        glob = [tr.wte.weight, tr.wpe.weight, tr.ln_f.weight, tr.ln_f.bias, model.lm_head.weight]
        self._glob = (ctypes.c_void_p * 5)(*[ptr(t) for t in glob])
        per_layer = []
        for block, k, v in zip(tr.h, cache.keys, cache.values):
            a, mlp = block.attn, block.mlp
            per_layer += [ptr(t) for t in (
                block.ln_1.weight, block.ln_1.bias, a.c_attn.weight, a.c_attn.bias,
                a.c_proj.weight, a.c_proj.bias, block.ln_2.weight, block.ln_2.bias,
                mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias, k, v)]
        self._layers = (ctypes.c_void_p * len(per_layer))(*per_layer)
        self._scales = torch.tensor([float(b.attn.scale) for b in tr.h], dtype=torch.float32)

    @staticmethod
    def unsupported_reason(model: torch.nn.Module, cache, batch: int) -> str | None:
        """``None`` if the fused step can run this model and cache, else why not."""
        if _off:
            return "CPU kernels disabled()"
        if load() is None:
            return f"CPU kernels {_status}"
        cfg = model.config
        if model.training:
            return "model in training mode (dropout)"
        if batch > MAX_ROWS:
            return f"batch {batch} > {MAX_ROWS} rows"
        if cfg.activation_function not in ACTIVATION_CODES:
            return f"activation {cfg.activation_function!r}"
        if getattr(cfg, "add_cross_attention", False):
            return "cross-attention"
        tensors = [p for p in model.parameters()] + list(cache.keys) + list(cache.values)
        for t in tensors:
            if (type(t) not in (torch.Tensor, torch.nn.Parameter) or t.dtype != torch.float32
                    or t.device.type != "cpu" or not t.is_contiguous()):
                return "weights or cache not contiguous fp32 CPU tensors"
        if tuple(model.lm_head.weight.shape) != (cfg.vocab_size, cfg.n_embd):
            return "LM head shape"
        if cache.max_length > cfg.n_positions:  # positions < slots < max_length index wpe
            return f"cache length {cache.max_length} > n_positions {cfg.n_positions}"
        return None

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor,
                 slot: int) -> torch.Tensor:
        """Logits (B, V) after feeding ``ids`` (B,) at ``positions`` (B,) into cache ``slot``;
        ``bias`` (B, L) is the additive padding mask over cache slots."""
        M, L = self.M, self.L
        ids = ids.reshape(M).to(torch.int64).contiguous()
        positions = positions.reshape(M).to(torch.int64).contiguous()
        bias = bias.reshape(M, L).to(torch.float32).contiguous()
        if not 0 <= slot < L:
            raise ValueError(f"cache slot {slot} outside [0, {L})")
        nt = _threads()
        work = torch.empty(self._lib.gpt2_decode_work_floats(M, self.C, self.H, L, self.F, nt),
                           dtype=torch.float32)
        logits = torch.empty(M, self.V, dtype=torch.float32)
        self._lib.gpt2_decode_step(ids.data_ptr(), positions.data_ptr(), self._glob, self._layers,
                              self._scales.data_ptr(), bias.data_ptr(), slot, M, self.C, self.H,
                              L, self.F, self.V, self.n_layer, self.eps, self.act,
                              logits.data_ptr(), work.data_ptr(), nt)
        return logits
