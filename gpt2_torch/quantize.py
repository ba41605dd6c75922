"""int8 weight-only quantization of a torch GPT-2 (:mod:`gpt2_core.quantize`'s scheme).

:func:`quantize_model` swaps, in place, the four Conv1D matrices of every block for
:class:`QuantizedConv1D`, ``transformer.wte`` for :class:`QuantizedEmbedding` and the LM head
for :class:`QuantizedLinear` (sharing wte's int8 matrix and scales when tied). Each keeps its
int8 matrix as the buffer ``weight`` (canonical layout, so the CPU kernels read it in place)
and its float32 per-output-channel scales as the buffer ``weight_scale``; biases, layer norms
and ``wpe`` stay float32 parameters. ``generate`` on CPU then runs every decoding step through
the fused int8 kernel (a quarter of fp32's bytes per token). Elsewhere (the prompt pass,
``forward``) a few rows without autograd take the int8 GEMV kernels and everything else
multiplies by the dequantized matrix ``q * scale`` (built per call: inference only, no training).

``GPT2LMHeadModel.from_pretrained(path, quantize="int8")`` (or ``dtype="int8"``) loads the
float checkpoint and quantizes it. ``save_pretrained`` refuses a quantized model: transformers'
formats have no int8 GPT-2 layout; save the float model and quantize when loading.

Example:
    >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2", quantize="int8")  # doctest: +SKIP
    >>> model.generate(ids, max_new_tokens=20)                                    # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt2_core import quantize as Q
from gpt2_torch import _cpu_kernels

resolve = Q.resolve  # (dtype, quantize) of a from_pretrained call -> (dtype, scheme)

#: the quantized Conv1D matrices of each block (attribute paths under ``transformer.h.{i}``)
BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _int8(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = Q.quantize_int8(w.detach().float().cpu().numpy(), axis)
    return torch.from_numpy(q), torch.from_numpy(s)


def _kernel_ok(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and 0 < x.numel() <= _cpu_kernels.MAX_ROWS * x.shape[-1]
        and not torch.compiler.is_compiling()
        and _cpu_kernels.core.active()
    )


class QuantizedConv1D(nn.Module):
    """A Conv1D (``y = bias + x @ W``, W stored (in, out)) with an int8 W and one float32 scale
    per output column: ``W = weight * weight_scale``.

    Args:
        weight: (in, out) int8.
        weight_scale: (out,) float32.
        bias: (out,) float32.
    """

    def __init__(
        self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor
    ) -> None:
        super().__init__()
        self.nf = weight.shape[1]
        self.register_buffer("weight", weight)  # (in, out) int8
        self.register_buffer("weight_scale", weight_scale)  # (out,)
        self.bias = nn.Parameter(bias.detach().float(), requires_grad=False)

    @classmethod
    def from_float(cls, conv: nn.Module) -> QuantizedConv1D:
        q, s = _int8(conv.weight, axis=0)
        return cls(q, s, conv.bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 (in, out) matrix this layer multiplies by."""
        return self.weight.float() * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_ok(x):  # a few rows (decoding): the int8 GEMV reads the int8 matrix itself
            y = _cpu_kernels.core.linear_kn(
                x.reshape(-1, x.shape[-1]).contiguous().numpy(),
                self.weight.numpy(),
                self.bias.detach().numpy(),
                nt=_cpu_kernels._threads(),
                scale=self.weight_scale.numpy(),
            )
            return torch.from_numpy(y).view(*x.shape[:-1], self.nf)
        size_out = x.shape[:-1] + (self.nf,)
        w = self.dequantized().to(x.dtype)
        return torch.addmm(self.bias.to(x.dtype), x.reshape(-1, x.shape[-1]), w).view(size_out)


class QuantizedEmbedding(nn.Module):
    """``wte`` with an int8 (V, C) table and one float32 scale per row (vocabulary entry): a
    lookup dequantizes only the rows it reads."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("weight", weight)  # (V, C) int8
        self.register_buffer("weight_scale", weight_scale)  # (V,)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * self.weight_scale[ids].unsqueeze(-1)


class QuantizedLinear(nn.Module):
    """The LM head ``x @ W.T`` with an int8 (V, C) W and one float32 scale per row (the same
    tensors as :class:`QuantizedEmbedding` when the head is tied)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)  # (V, C) int8
        self.register_buffer("weight_scale", weight_scale)  # (V,)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _kernel_ok(x):
            y = _cpu_kernels.core.linear_nk(
                x.reshape(-1, x.shape[-1]).contiguous().numpy(),
                self.weight.numpy(),
                nt=_cpu_kernels._threads(),
                scale=self.weight_scale.numpy(),
            )
            return torch.from_numpy(y).view(*x.shape[:-1], self.out_features)
        w = self.weight.float() * self.weight_scale[:, None]
        return F.linear(x, w.to(x.dtype))


def quantize_model(model: nn.Module, scheme: str = "int8") -> nn.Module:
    """Quantize a float GPT-2 model in place (see the module docstring) and return it.

    The model is put in eval mode: the quantized layers are for inference only.

    Raises:
        ValueError: an unknown scheme, or a model that is already quantized.
    """
    scheme = Q.check_scheme(scheme)
    if scheme is None:
        return model
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization})")
    tr = model.transformer if hasattr(model, "transformer") else model
    with torch.no_grad():
        for block in tr.h:
            for path in BLOCK_MATRICES:
                owner_name, name = path.split(".")
                owner = getattr(block, owner_name)
                setattr(owner, name, QuantizedConv1D.from_float(getattr(owner, name)))
        head = getattr(model, "lm_head", None)
        tied = head is not None and head.weight is tr.wte.weight
        q, s = _int8(tr.wte.weight, axis=1)
        tr.wte = QuantizedEmbedding(q, s)
        if head is not None:
            model.lm_head = (
                QuantizedLinear(q, s) if tied else QuantizedLinear(*_int8(head.weight, axis=1))
            )
    model.quantization = scheme
    return model.eval()


def kernel_scales(model: nn.Module) -> dict[str, object]:
    """Canonical ``<weight>_scale`` name -> numpy view of each int8 matrix's scales (for
    :class:`gpt2_core.cpu_kernels.DecodeStep`); empty for a float model."""
    out = {}
    for name, buf in model.named_buffers():
        if name.endswith(".weight_scale"):
            out[name.replace(".weight_scale", ".weight" + Q.SCALE_SUFFIX)] = buf.numpy()
    if (
        "lm_head.weight_scale" not in out
        and "transformer.wte.weight_scale" in out
        and getattr(getattr(model, "lm_head", None), "weight_scale", None) is not None
    ):
        out["lm_head.weight_scale"] = model.lm_head.weight_scale.numpy()  # tied: deduplicated
    return out


def refuse_save(model: nn.Module) -> None:
    """Raise for a quantized model: there is no transformers format to write it in."""
    if getattr(model, "quantization", None):
        raise ValueError(
            f"save_pretrained: this model is quantized ({model.quantization}); transformers' "
            "checkpoint formats hold float weights only. Save the float model and load it with "
            f"from_pretrained(..., quantize={model.quantization!r}) instead."
        )
