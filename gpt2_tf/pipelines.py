"""The TensorFlow side of :mod:`gpt2_core.pipelines`: load a head, run it, generate.

Example:
    >>> from gpt2_tf.pipelines import pipeline
    >>> gen = pipeline("text-generation", model="path/to/gpt2")           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from gpt2_core import pipelines as _core
from gpt2_core.generation_config import GenerationConfig
from gpt2_tf.modeling import MODEL_CLASSES


def load(head: str, name_or_path: Any, *, dtype: Any = None, device: Any = None):
    if device is not None:
        raise ValueError("device= is for the torch backend; TensorFlow places tensors itself")
    return MODEL_CLASSES[head].from_pretrained(name_or_path, dtype=dtype)


def forward(model, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    out = model(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), training=False)
    return {
        k: np.asarray(tf.cast(out[k], tf.float32))
        for k in ("logits", "start_logits", "end_logits")
        if out.get(k) is not None
    }


def generate(model, ids: np.ndarray, mask: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    return np.asarray(model.generate(ids, attention_mask=mask, generation_config=gen))


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    dtype: Any = None,
    device: Any = None,
    **kwargs: Any,
) -> _core.Pipeline:
    """:func:`gpt2_core.pipelines.pipeline` with ``framework="tf"``."""
    return _core.pipeline(
        task, model=model, tokenizer=tokenizer, framework="tf", dtype=dtype, device=device, **kwargs
    )


__all__ = ["pipeline"]
