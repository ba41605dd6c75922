"""int8 weight-only quantization of a Flax NNX GPT-2 (:mod:`gpt2_core.quantize`'s scheme).

:func:`quantize_model` swaps, in place, the four ``nnx.Linear`` matrices of every block (and an
untied ``lm_head``) for :class:`QuantizedLinear` and ``transformer.wte`` for
:class:`QuantizedEmbed` (which the tied LM head reads). The int8 matrices and their float32
per-output-channel scales are ``nnx.Variable`` s of type :class:`Int8Weight` / :class:`Scale`,
not ``nnx.Param`` (nothing to train); biases, layer norms and ``wpe`` stay ``nnx.Param``.

JAX-native: each layer computes ``(x @ q.astype(dtype)) * scale`` inside the jitted program
(the tied head: ``h @ (q * scale)^T``). On CPU XLA does **not** turn this into an int8-reading
GEMV: it materialises the converted matrix each step, so that loop is no faster than fp32; the
memory held is int8's. So on a CPU ``generate`` decodes an int8 model through the fused C step
as an XLA FFI call in its jitted loop (:mod:`gpt2_flax._cpu_kernels`, the kernel torch and TF
decode with), which reads the int8 matrices and their scales in place; the prompt pass, the
forward and training-free uses keep the expression above.

``save_pretrained`` / ``state_dict`` refuse a quantized model: transformers' formats have no
int8 GPT-2 layout.

Example:
    >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2", quantize="int8")  # doctest: +SKIP
    >>> model.generate(ids, max_new_tokens=20)                                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import quantize as Q

resolve = Q.resolve  # (dtype, quantize) of a from_pretrained call -> (dtype, scheme)

#: the quantized matrices of each block (attribute paths under ``transformer.h[i]``)
BLOCK_MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class Int8Weight(nnx.Variable):
    """An int8 weight matrix (not trained)."""


class Scale(nnx.Variable):
    """The float32 per-output-channel scales of an :class:`Int8Weight`."""


def _int8(w: Any, axis: int) -> tuple[Int8Weight, Scale]:
    q, s = Q.quantize_int8(np.asarray(jax.device_get(w), np.float32), axis)
    return Int8Weight(jnp.asarray(q)), Scale(jnp.asarray(s))


class QuantizedLinear(nnx.Module):
    """``x @ (kernel * scale) + bias`` with an int8 (in, out) ``kernel`` and one float32 scale
    per output column (``nnx.Linear``'s layout, GPT-2's Conv1D layout)."""

    def __init__(self, linear: nnx.Linear) -> None:
        self.kernel, self.kernel_scale = _int8(linear.kernel[...], axis=0)
        self.bias = linear.bias
        self.dtype = linear.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        # (x @ q) * scale: the scale multiplies the (.., out) result, not the (in, out) matrix
        # (one pass less over the weights; the C kernel's order too)
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
        y = y * self.kernel_scale[...].astype(dtype)
        return y if self.bias is None else y + self.bias[...].astype(dtype)


class _Dequantized:
    """``table[...]`` of a :class:`QuantizedEmbed`: the dequantized (V, C) float table, built
    where it is read (inside jit: fused into the gather / the head's product by XLA)."""

    def __init__(self, owner: QuantizedEmbed) -> None:
        self.owner = owner

    def __getitem__(self, index: Any) -> jax.Array:
        o = self.owner
        return (o.table[...].astype(jnp.float32) * o.table_scale[...][:, None])[index]


class QuantizedEmbed(nnx.Module):
    """``wte`` with an int8 (V, C) table and one float32 scale per row (vocabulary entry);
    ``embedding[...]`` reads the dequantized table, so the model's code is unchanged."""

    def __init__(self, embed: nnx.Embed) -> None:
        self.table, self.table_scale = _int8(embed.embedding[...], axis=1)

    @property
    def embedding(self) -> _Dequantized:
        return _Dequantized(self)


def quantize_model(model: nnx.Module, scheme: str = "int8") -> nnx.Module:
    """Quantize a float Flax GPT-2 in place (see the module docstring) and return it.

    Raises:
        ValueError: an unknown scheme, or a model that is already quantized.
    """
    scheme = Q.check_scheme(scheme)
    if scheme is None:
        return model
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization})")
    tr = model.transformer if hasattr(model, "transformer") else model
    for block in tr.h:
        for path in BLOCK_MATRICES:
            owner_name, name = path.split(".")
            owner = getattr(block, owner_name)
            setattr(owner, name, QuantizedLinear(getattr(owner, name)))
    tr.wte = QuantizedEmbed(tr.wte)
    if getattr(model, "lm_head", None) is not None and isinstance(model.lm_head, nnx.Linear):
        model.lm_head = QuantizedLinear(model.lm_head)
    model.quantization = scheme
    return model


def refuse_save(model: Any) -> None:
    """Raise for a quantized model: there is no transformers format to write it in."""
    if getattr(model, "quantization", None):
        raise ValueError(
            f"save_pretrained: this model is quantized ({model.quantization}); transformers' "
            "checkpoint formats hold float weights only. Save the float model and load it with "
            f"from_pretrained(..., quantize={model.quantization!r}) instead."
        )
