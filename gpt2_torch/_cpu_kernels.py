"""torch side of the CPU decoding kernels (:mod:`gpt2_core.cpu_kernels`).

``Conv1D`` sends a few rows without autograd (decoding) through :func:`linear_kn`; ``generate``
runs each single-token step through :class:`DecodeStep` (one kernel call per token) where
:meth:`DecodeStep.unsupported_reason` allows, and through the torch modules otherwise. Models
in float32 or bfloat16 both take the step (bf16 weights are read as they are, half the bytes;
the cache and the sums stay fp32, see :data:`CACHE_DTYPE`). The
kernels' OpenMP runtime is the one torch already loaded, so they run on torch's intra-op
threads (``torch.set_num_threads``).

Example:
    >>> from gpt2_torch import _cpu_kernels as K
    >>> with torch.no_grad():
    ...     y = K.linear_kn(x, conv.weight, conv.bias)   # == torch.addmm(bias, x, weight)
"""

from __future__ import annotations

import torch

from gpt2_core import cpu_kernels as core
from gpt2_core.cpu_kernels import MAX_ROWS, disabled, load, status  # noqa: F401  (re-exported)

#: the cache dtype the fused step needs, whatever the weights' dtype
CACHE_DTYPE = torch.float32
#: parameter dtypes the fused step reads
STEP_DTYPES = (torch.float32, torch.bfloat16)


def _threads() -> int:
    return core.threads(torch.get_num_threads())


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
        and core.active()
    )


def linear_kn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``bias + x @ weight`` for ``weight`` (K, N) (GPT-2's Conv1D layout); x (..., K).
    :func:`gpt2_core.cpu_kernels.linear_kn` over zero-copy numpy views."""
    y = core.linear_kn(
        _view(x.reshape(-1, x.shape[-1])),
        _view(weight),
        None if bias is None else _view(bias),
        nt=_threads(),
    )
    return torch.from_numpy(y).view(*x.shape[:-1], y.shape[1])


def linear_nk(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for ``weight`` (N, K) (nn.Linear's layout, e.g. the tied LM head)."""
    y = core.linear_nk(_view(x.reshape(-1, x.shape[-1])), _view(weight), nt=_threads())
    return torch.from_numpy(y).view(*x.shape[:-1], y.shape[1])


def weight_dtype(model: torch.nn.Module):
    """The numpy dtype of the matrices the fused step reads (wte's: float32, bfloat16 or, for an
    int8 model, int8)."""
    return _view(model.transformer.wte.weight).dtype


def _view(t: torch.Tensor):
    """A numpy view of a CPU tensor (no copy; the core checks dtype, layout and shape);
    bfloat16 becomes ``ml_dtypes.bfloat16``, which numpy cannot get from torch directly."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(core.BF16)
    return t.numpy()


class DecodeStep:
    """:class:`gpt2_core.cpu_kernels.DecodeStep` over a torch GPT2LMHeadModel's own parameters
    and a :class:`~gpt2_torch.modeling.StaticCache` (views, no copies).

    Example:
        >>> step = DecodeStep(model, cache, batch=1)
        >>> logits = step(ids, positions, pad_bias, slot)   # (B, V) torch tensor
    """

    def __init__(self, model: torch.nn.Module, cache, batch: int) -> None:
        from gpt2_torch.quantize import kernel_scales  # int8 matrices' scales (if any)

        weights = {name: _view(p) for name, p in _canonical_params(model)}
        weights.update(kernel_scales(model))
        self._step = core.DecodeStep(
            model.config,
            weights,
            [_view(k) for k in cache.keys],
            [_view(v) for v in cache.values],
            batch,
            scales=[float(b.attn.scale) for b in model.transformer.h],
            nt=_threads(),
        )
        self._tensors = (list(model.parameters()), cache)  # keep the storage alive

    @staticmethod
    def unsupported_reason(model: torch.nn.Module, cache, batch: int) -> str | None:
        """``None`` if the fused step can run this model and cache, else why not."""
        reason = core.DecodeStep.unsupported_reason(model.config, batch, cache.max_length)
        if reason is not None:
            return reason
        if model.training:
            return "model in training mode (dropout)"
        if not hasattr(model, "lm_head"):
            return "no LM head"
        params = list(model.parameters())
        if len({p.dtype for p in params}) != 1 or params[0].dtype not in STEP_DTYPES:
            return "weights not all float32 or all bfloat16"
        for t in [*params, *cache.keys, *cache.values]:
            if (
                type(t) not in (torch.Tensor, torch.nn.Parameter)
                or t.device.type != "cpu"
                or not t.is_contiguous()
            ):
                return "weights or cache not contiguous CPU tensors"
        if any(t.dtype != CACHE_DTYPE for t in [*cache.keys, *cache.values]):
            return "cache not float32"
        return None

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, slot: int
    ) -> torch.Tensor:
        out = torch.empty(self._step.M, self._step.V, dtype=torch.float32)
        self._step(_view(ids), _view(positions), _view(bias), slot, out=out.numpy())
        return out

    def prefill(
        self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, V) of the last token after the whole prompt ``ids`` (B, T) at cache
        slots [0, T) (:meth:`gpt2_core.cpu_kernels.DecodeStep.prefill`)."""
        out = torch.empty(self._step.M, self._step.V, dtype=torch.float32)
        self._step.prefill(_view(ids), _view(positions), _view(bias), out=out.numpy())
        return out


def _canonical_params(model: torch.nn.Module):
    """(canonical name, tensor) for what the fused step reads."""
    tr = model.transformer
    yield "transformer.wte.weight", tr.wte.weight
    yield "transformer.wpe.weight", tr.wpe.weight
    yield "transformer.ln_f.weight", tr.ln_f.weight
    yield "transformer.ln_f.bias", tr.ln_f.bias
    yield "lm_head.weight", model.lm_head.weight
    for i, block in enumerate(tr.h):
        mods = {
            "ln_1": block.ln_1,
            "attn.c_attn": block.attn.c_attn,
            "attn.c_proj": block.attn.c_proj,
            "ln_2": block.ln_2,
            "mlp.c_fc": block.mlp.c_fc,
            "mlp.c_proj": block.mlp.c_proj,
        }
        for name, mod in mods.items():
            yield f"transformer.h.{i}.{name}.weight", mod.weight
            yield f"transformer.h.{i}.{name}.bias", mod.bias
