"""JAX side of the CPU decoding kernel: the fused decode step as an XLA FFI custom call.

``generate`` runs one jitted ``lax.while_loop``. On a CPU, each iteration's forward pass can be
one call of ``gpt2_decode_step`` (``gpt2_core/csrc/gpt2_kernels.c``, the kernel torch and TF
decode with) instead of XLA's own ops: :func:`decode_forward` returns a drop-in for the loop's
forward that calls it through ``jax.ffi.ffi_call``. It reads the model's weight buffers where
they are and writes the new key/value into the static cache, whose buffers are aliased input to
output, so XLA updates them in place. It is an instruction of the compiled program, not a host
callback; the token choice, beam bookkeeping and stopping stay in XLA.

The handler (``gpt2_core/csrc/gpt2_xla_ffi.cc``) is compiled at first use against jax's FFI
headers (``jax.ffi.include_dir()``) and linked with ``gpt2_kernels.c`` into one library, cached
under ``$GPT2_ZOO_CACHE`` keyed by both sources, the flags, the compilers, the CPU and jaxlib's
version, and published by an atomic rename. It is used only where it computes what the XLA
forward computes: a CPU backend, every parameter on one CPU device, weight matrices all
float32, all bfloat16, or all int8 with per-output-channel scales (:mod:`gpt2_flax.quantize`),
at most :data:`gpt2_core.cpu_kernels.MAX_ROWS` rows (batch x beams), no cross-attention.
Everything else, and ``GPT2_ZOO_CPU_KERNELS=0`` or ``gpt2_core.cpu_kernels.disabled()``, keeps
the all-XLA loop; :func:`unsupported_reason` says why. With bfloat16 weights the step keeps
activations and the cache in float32 (as torch's), so its tokens may differ from the all-XLA
bf16 loop, which rounds activations to bf16.

Example:
    >>> from gpt2_flax import _cpu_kernels as K
    >>> K.unsupported_reason(model, rows=1, cache_len=128)   # None: generate uses the kernel
    >>> K.status()                                          # doctest: +SKIP
    'loaded from /root/.cache/gpt2_zoo/kernels/gpt2_xla_ffi-....so'
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_core import cpu_kernels as core

logger = logging.getLogger(__name__)

TARGET = "gpt2_zoo_decode_step"
PREFILL_TARGET = "gpt2_zoo_prefill"
_SOURCE = core._SOURCE.with_name("gpt2_xla_ffi.cc")
_CXX_FLAGS = ["-O2", "-march=native", "-fopenmp", "-fPIC", "-std=c++17", "-w"]
_ABI = 4
_KERNEL_ABI = 6  # gpt2_kernels.c's gpt2_kernels_abi() this handler is written against
#: parameter dtypes the step reads (the weight matrices all one of them, or all int8 with
#: float32 per-output-channel scales: a model quantized by :mod:`gpt2_flax.quantize`)
STEP_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


_lock = threading.Lock()
_tried = False
_lib: ctypes.CDLL | None = None
_status = "not loaded"
_registered = False  # XLA keeps a target's first registration for the whole process


def _build(cc: str, cxx: str, include: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=out.name + ".") as tmp:
        obj, lib = os.path.join(tmp, "kernels.o"), os.path.join(tmp, out.name)
        c_flags = [f for f in core._FLAGS if f != "-shared"]
        for cmd in (
            [cc, *c_flags, "-w", "-c", str(core._SOURCE), "-o", obj],
            [cxx, *_CXX_FLAGS, "-shared", f"-I{include}", str(_SOURCE), obj, "-o", lib, "-lm"],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.strip()[:500]}")
        os.replace(lib, out)  # atomic: concurrent builders each publish a complete file


def load() -> ctypes.CDLL | None:
    """The compiled handler, built and registered with XLA on first use; ``None`` where
    unavailable (see :func:`status`)."""
    global _tried, _lib, _status, _registered
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        # the C kernels first: they honour GPT2_ZOO_CPU_KERNELS, check the platform and bring
        # in the OpenMP runtime (with the short GOMP_SPINCOUNT) this library then shares
        if core.load() is None:
            _status = f"CPU kernels {core.status()}"
            return None
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if not cc or not cxx:
            _status = "unavailable: no C and C++ compiler ($CC / cc, $CXX / c++) found"
            logger.info("gpt2_flax CPU kernel %s; using XLA ops", _status)
            return None
        try:
            include = jax.ffi.include_dir()
            key = hashlib.sha256(
                b"\0".join(
                    [
                        _SOURCE.read_bytes(),
                        core._SOURCE.read_bytes(),
                        " ".join(core._FLAGS).encode(),
                        " ".join(_CXX_FLAGS).encode(),
                        cc.encode(),
                        cxx.encode(),
                        core._cpu_signature().encode(),
                        jax.lib.__version__.encode(),
                    ]
                )
            ).hexdigest()[:20]
            path = core._cache_dir() / f"gpt2_xla_ffi-{key}.so"
            if not path.exists():
                try:
                    _build(cc, cxx, include, path)
                except OSError:  # unwritable cache: build into a private temporary directory
                    path = Path(tempfile.mkdtemp(prefix="gpt2_zoo_kernels_")) / path.name
                    _build(cc, cxx, include, path)
            lib = ctypes.CDLL(str(path))
            abi = (lib.gpt2_xla_ffi_abi(), lib.gpt2_kernels_abi())
            if abi != (_ABI, _KERNEL_ABI):
                raise RuntimeError(f"{path}: ABI {abi} != {(_ABI, _KERNEL_ABI)}")
            if not _registered:
                jax.ffi.register_ffi_target(
                    TARGET, jax.ffi.pycapsule(lib.Gpt2DecodeStep), platform="cpu"
                )
                jax.ffi.register_ffi_target(
                    PREFILL_TARGET, jax.ffi.pycapsule(lib.Gpt2Prefill), platform="cpu"
                )
                _registered = True
        except Exception as e:  # a missing or broken toolchain only costs speed
            _status = f"unavailable: {e}"
            logger.info("gpt2_flax CPU kernel %s; using XLA ops", _status)
            return None
        _lib = lib
        _status = f"loaded from {path}"
        logger.debug("gpt2_flax CPU kernel %s", _status)
        return _lib


def status() -> str:
    """A line saying whether the kernel is available to Flax, and if not, why."""
    load()
    return (
        "gpt2_core.cpu_kernels.disabled() in effect"
        if _lib is not None and not core.active()
        else _status
    )


def _reset() -> None:
    """Forget the loaded library (tests: load again under another environment)."""
    global _tried, _lib, _status
    with _lock:
        _tried, _lib, _status = False, None, "not loaded"


def _weights(model: Any, state: Any = None) -> dict[str, jax.Array]:
    """Canonical name -> the model's own parameter array (kernels in their (in, out) layout).
    For an int8 model (:mod:`gpt2_flax.quantize`): the int8 matrices under the float names,
    and their float32 scales under ``<name>_scale`` (the tied head reads wte's). ``state``:
    the model's ``nnx.split`` state when the caller has it (0.3 ms to read, where walking the
    module graph again costs ~14 ms per ``generate`` call)."""
    from flax import nnx

    from gpt2_flax import weights as W

    if state is None:
        params = W._params(model)
    else:
        params = [(p, v) for p, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param)]
    out = {W.canonical_key(path): var.get_value() for path, var in params}
    if getattr(model, "quantization", None) == "int8":
        from gpt2_flax import quantize as Q

        tr = model.transformer
        out["transformer.wte.weight"] = tr.wte.table.get_value()
        out["transformer.wte.weight_scale"] = tr.wte.table_scale.get_value()
        linears = {
            f"transformer.h.{i}.{path}.weight": getattr(
                getattr(block, path.split(".")[0]), path.split(".")[1]
            )
            for i, block in enumerate(tr.h)
            for path in Q.BLOCK_MATRICES
        }
        if isinstance(getattr(model, "lm_head", None), Q.QuantizedLinear):
            linears["lm_head.weight"] = model.lm_head
        for name, lin in linears.items():
            out[name] = lin.kernel.get_value()
            out[name + "_scale"] = lin.kernel_scale.get_value()
    return out


#: the environment variable that keeps fp32 weights off the kernel (``=0``: XLA's own loop;
#: read on each ``generate``). Measured (bench_flax_generate.py --vs-torch, GPT-2 small, 2
#: threads, 5 rotated rounds, 2026-12-04): the kernel 52.3 tok/s against XLA's own loop 45.8
#: (1.15x, every round 1.10-1.29x) for fp32 weights, 87.1 against 43.0 for bf16 weights. (Before
#: the kernel's LM head read four rows at a time, fp32 was the other way round, 35 against 42,
#: and fp32 defaulted to XLA's loop.)
FP32_KERNEL_ENV = "GPT2_ZOO_FLAX_FP32_KERNEL"


def unsupported_reason(model: Any, rows: int, cache_len: int, state: Any = None) -> str | None:
    """``None`` when ``generate`` may decode ``rows`` rows over a ``cache_len``-slot cache on
    the kernel, else why not. Called outside ``jit``, on the concrete model (``state``: its
    ``nnx.split`` state, if at hand)."""
    config = model.config
    quantization = getattr(model, "quantization", None)
    if quantization not in (None, "int8"):
        return f"{quantization} weights: the kernel reads float32, bfloat16 or int8 matrices"
    if not core.active():
        return f"CPU kernels {core.status()}"
    if jax.default_backend() != "cpu":
        return f"JAX's default backend is {jax.default_backend()!r}"
    # positions index wpe: they stay below n_positions whatever the (bucketed) cache length
    reason = core.DecodeStep.unsupported_reason(config, rows, min(cache_len, config.n_positions))
    if reason is not None:
        return reason
    if load() is None:
        return status()
    params = _weights(model, state)
    matrices = {
        params[k].dtype
        for k in params
        if k.endswith(".weight")
        and (k.split(".")[-2] in ("c_attn", "c_proj", "c_fc", "wte", "lm_head"))
    }
    kinds = STEP_DTYPES if quantization is None else (jnp.dtype(jnp.int8),)
    if len(matrices) != 1 or next(iter(matrices)) not in kinds:
        return f"weight matrices of dtype {sorted(d.name for d in matrices)}"
    for name, a in params.items():
        if a.dtype not in STEP_DTYPES and not (a.dtype == jnp.int8 and name.endswith(".weight")):
            return f"{name} is {a.dtype}"
        devices = a.sharding.device_set if hasattr(a, "sharding") else set()
        if len(devices) != 1 or next(iter(devices)).platform != "cpu":
            return f"{name} is on {sorted(str(d) for d in devices)}, not one CPU device"
    if next(iter(matrices)) == jnp.float32 and jnp.dtype(model.transformer.dtype) != jnp.float32:
        return f"compute dtype {jnp.dtype(model.transformer.dtype).name} over float32 weights"
    if next(iter(matrices)) == jnp.float32 and os.environ.get(FP32_KERNEL_ENV, "1") == "0":
        return f"float32 weights and {FP32_KERNEL_ENV}=0"
    return None


def _operands(model: Any) -> tuple[list, list, jax.Array, dict]:
    """The kernel's operands for ``model``: (weights in gpt2_decode_step's order, int8 scales
    (empty for float weights), per-layer attention scales, the call's attributes). The small
    float weights are widened to float32 once, here."""
    config = model.config
    params = _weights(model)
    tied = "lm_head.weight" not in params
    wq = core.WEIGHT_KINDS[np.dtype(params["transformer.wte.weight"].dtype)]

    def get(name: str, matrix: bool = False) -> jax.Array:
        a = params[name]
        return a if matrix else a.astype(jnp.float32)  # vectors and wpe: widened, exactly

    operands = [
        get("transformer.wte.weight", True),
        get("transformer.wpe.weight"),
        get("transformer.ln_f.weight"),
        get("transformer.ln_f.bias"),
        get("transformer.wte.weight" if tied else "lm_head.weight", True),
    ]
    for i in range(config.n_layer):
        operands += [
            get(f"transformer.h.{i}.{n}", n in core.DecodeStep.MATRICES)
            for n in core.DecodeStep.LAYER_NAMES
        ]
    qscales = []  # int8: gpt2_decode_step's qscale order, passed after the caches
    if wq == core.INT8:
        head = "transformer.wte.weight" if tied else "lm_head.weight"
        qscales = [params["transformer.wte.weight_scale"], params[head + "_scale"]]
        qscales += [
            params[f"transformer.h.{i}.{n}_scale"]
            for i in range(config.n_layer)
            for n in core.DecodeStep.LAYER_NAMES
            if n in core.DecodeStep.MATRICES
        ]
        qscales = [jnp.asarray(q, jnp.float32) for q in qscales]
    scales = jnp.asarray(core.attention_scales(config), jnp.float32)
    attrs = dict(
        eps=np.float32(config.layer_norm_epsilon),
        act=np.int64(core.ACTIVATION_CODES[config.activation_function]),
        head_kn=np.int64(not tied),
        n_head=np.int64(config.n_head),
        threads=np.int64(core.threads()),
        wq=np.int64(wq),
    )
    return operands, qscales, scales, attrs


def _ffi_call(target: str, config: Any, rows: int, cache_len: int, first_cache: int):
    """``jax.ffi.ffi_call`` of a handler returning logits (rows, V) and the 2 * n_layer
    caches, each aliased to its operand (``first_cache`` = the operand index of keys[0])."""
    n = 2 * config.n_layer
    cache_type = jax.ShapeDtypeStruct(
        (rows, config.n_head, cache_len, config.head_dim), jnp.float32
    )
    return jax.ffi.ffi_call(
        target,
        (jax.ShapeDtypeStruct((rows, config.vocab_size), jnp.float32), *([cache_type] * n)),
        input_output_aliases={first_cache + j: 1 + j for j in range(n)},
    )


def kernel_prefill(model: Any, rows: int) -> bool:
    """Whether ``generate`` runs a prompt of ``rows`` (batch x prompt length) tokens through
    the kernel's prefill too (when it decodes on the kernel):
    :func:`gpt2_core.cpu_kernels.kernel_prefill` for the model's matrices."""
    return core.kernel_prefill(_weights(model)["transformer.wte.weight"].dtype, rows)


def prefill_forward(model: Any, rows: int, cache_len: int):
    """A replacement for the prompt's ``forward(ids, cache, positions, mask) -> (logits,
    cache)`` (ids (rows, T) into slots [0, T) of an empty float32 cache; ``mask`` (rows,
    cache_len)) through one call of the kernel's prefill (:meth:`gpt2_core.cpu_kernels.
    DecodeStep.prefill`): each weight read and widened once for the whole prompt."""
    from gpt2_flax.modeling import StaticCache  # modeling imports generation, which imports this

    config = model.config
    operands, qscales, scales, attrs = _operands(model)
    call = _ffi_call(PREFILL_TARGET, config, rows, cache_len, 4 + len(operands))
    neg = np.float32(np.finfo(np.float32).min / 2)  # finite: a padded query row stays uniform

    def forward(ids, cache, positions, mask):
        bias = jnp.where(mask != 0, 0.0, neg).astype(jnp.float32)  # (R, M)
        caches = [c for kv in zip(cache.keys, cache.values) for c in kv]
        logits, *caches = call(
            ids.astype(jnp.int32),
            positions.astype(jnp.int32),
            bias,
            scales,
            *operands,
            *caches,
            *qscales,
            **attrs,
        )
        return logits, StaticCache(
            keys=tuple(caches[0::2]), values=tuple(caches[1::2]), index=cache.index + ids.shape[1]
        )

    return forward


def decode_forward(model: Any, rows: int, cache_len: int):
    """A replacement for the loop's ``forward(tokens, cache, pos, row_mask) -> (logits, cache)``
    that runs the fused step (called while tracing, after :func:`unsupported_reason` said
    ``None``). The weights are gathered and the small ones widened once, before the loop."""
    from gpt2_flax.modeling import StaticCache  # modeling imports generation, which imports this

    operands, qscales, scales, attrs = _operands(model)
    call = _ffi_call(TARGET, model.config, rows, cache_len, 5 + len(operands))

    def forward(tokens, cache, pos, row_mask):
        bias = jnp.where(row_mask != 0, 0.0, -jnp.inf).astype(jnp.float32)  # (R, M)
        caches = [c for kv in zip(cache.keys, cache.values) for c in kv]
        logits, *caches = call(
            tokens.astype(jnp.int32),
            pos.astype(jnp.int32),
            bias,
            cache.index.astype(jnp.int32),
            scales,
            *operands,
            *caches,
            *qscales,
            **attrs,
        )
        return logits, StaticCache(
            keys=tuple(caches[0::2]), values=tuple(caches[1::2]), index=cache.index + 1
        )

    return forward
