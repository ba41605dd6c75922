"""The JAX side of :mod:`gpt2_core.pipelines`: load a head, run it, generate.

Example:
    >>> from gpt2_flax.pipelines import pipeline
    >>> gen = pipeline("text-generation", model="path/to/gpt2")           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from gpt2_core import pipelines as _core
from gpt2_core.generation_config import GenerationConfig
from gpt2_flax.modeling import MODEL_CLASSES

_DTYPES = {
    "fp32": jnp.float32,
    "float32": jnp.float32,
    "fp16": jnp.float16,
    "float16": jnp.float16,
    "bf16": jnp.bfloat16,
    "bfloat16": jnp.bfloat16,
}


def load(head: str, name_or_path: Any, *, dtype: Any = None, device: Any = None):
    if device is not None:
        raise ValueError("device= is for the torch backend; JAX places arrays itself")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        dt = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        kwargs["dtype"] = kwargs["param_dtype"] = dt
    return MODEL_CLASSES[head].from_pretrained(name_or_path, **kwargs)


def forward(model, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    out = model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    return {
        k: np.asarray(out[k], dtype=np.float32)
        for k in ("logits", "start_logits", "end_logits")
        if out.get(k) is not None
    }


def generate(model, ids: np.ndarray, mask: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    return np.asarray(
        model.generate(jnp.asarray(ids), attention_mask=jnp.asarray(mask), generation_config=gen)
    )


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    dtype: Any = None,
    device: Any = None,
    **kwargs: Any,
) -> _core.Pipeline:
    """:func:`gpt2_core.pipelines.pipeline` with ``framework="flax"``."""
    return _core.pipeline(
        task,
        model=model,
        tokenizer=tokenizer,
        framework="flax",
        dtype=dtype,
        device=device,
        **kwargs,
    )


__all__ = ["pipeline"]
