"""int8 weight-only quantization of a Keras GPT-2 (:mod:`gpt2_core.quantize`'s scheme).

:func:`quantize_model` quantizes the four Conv1D matrices of every block and ``wte`` (with the
tied LM head; an untied ``lm_head`` too) per output channel, then

* keeps the int8 matrices and their float32 scales on the model (``model.int8_weights``,
  canonical names and layouts; an untied head transposed to the Dense kernel's (C, V)): this
  is what ``generate`` reads on CPU, where every decoding step runs in the fused C kernel on the
  host (:class:`gpt2_core.cpu_kernels.DecodeStep`): a quarter of fp32's bytes per token;
* writes the **dequantized** weights ``q * scale`` back into the float32 Keras variables, so
  ``model(...)``, the XLA prompt pass, ``fit``-free evaluation and SavedModel export compute
  exactly what the int8 model computes, with the layers unchanged.

So in TF the quantized model holds both copies (1.25x the fp32 memory): the gain is decoding
speed, not memory (the torch backend keeps int8 only). ``save_pretrained`` refuses a quantized
model: transformers' formats have no int8 GPT-2 layout.

Example:
    >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2", quantize="int8")  # doctest: +SKIP
    >>> model.generate(ids, max_new_tokens=20)                                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpt2_core import quantize as Q

resolve = Q.resolve  # (dtype, quantize) of a from_pretrained call -> (dtype, scheme)


def quantize_model(model: Any, scheme: str = "int8") -> Any:
    """Quantize a float32 Keras GPT-2 in place (see the module docstring) and return it.

    Raises:
        ValueError: an unknown scheme, an already quantized model, or variables that are not
            float32 (the int8 path keeps activations and the rest of the weights in float32).
    """
    from gpt2_tf import weights as W

    scheme = Q.check_scheme(scheme)
    if scheme is None:
        return model
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization})")
    if any(v.dtype != "float32" for v in model.weights):
        raise ValueError("quantize='int8' needs a float32 model (dtype='fp32')")
    sd = W.to_canonical(model)
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # the tied head is wte: quantized once, per row
    qsd = Q.quantize_state_dict(sd, scheme)
    W.load_canonical(model, Q.dequantize_state_dict(qsd))
    int8 = {k: v for k, v in qsd.items() if v.dtype == np.int8 or k.endswith(Q.SCALE_SUFFIX)}
    if "lm_head.weight" in int8:  # untied: the kernel reads the Dense kernel's (C, V) layout
        int8["lm_head.weight"] = np.ascontiguousarray(int8["lm_head.weight"].T)
    model.int8_weights = int8
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
