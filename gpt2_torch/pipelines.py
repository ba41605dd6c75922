"""The PyTorch side of :mod:`gpt2_core.pipelines`: load a head, run it, generate.

Example:
    >>> from gpt2_torch.pipelines import pipeline
    >>> gen = pipeline("text-generation", model="path/to/gpt2")           # doctest: +SKIP
    >>> gen("Hello, I'm a language model,", max_new_tokens=20)           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpt2_core import pipelines as _core
from gpt2_core.generation_config import GenerationConfig
from gpt2_torch.modeling import MODEL_CLASSES

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def load(head: str, name_or_path: Any, *, dtype: Any = None, device: Any = None):
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if device is not None:
        kwargs["device"] = device
    return MODEL_CLASSES[head].from_pretrained(name_or_path, **kwargs)


def forward(model, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(
            input_ids=torch.as_tensor(ids, device=device),
            attention_mask=torch.as_tensor(mask, device=device),
        )
    return {
        k: out[k].float().cpu().numpy()
        for k in ("logits", "start_logits", "end_logits")
        if out.get(k) is not None
    }


def generate(model, ids: np.ndarray, mask: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    device = next(model.parameters()).device
    out = model.generate(
        torch.as_tensor(ids, device=device),
        attention_mask=torch.as_tensor(mask, device=device),
        generation_config=gen,
    )
    return out.cpu().numpy()


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    dtype: Any = None,
    device: Any = None,
    **kwargs: Any,
) -> _core.Pipeline:
    """:func:`gpt2_core.pipelines.pipeline` with ``framework="torch"``."""
    return _core.pipeline(
        task,
        model=model,
        tokenizer=tokenizer,
        framework="torch",
        dtype=dtype,
        device=device,
        **kwargs,
    )


__all__ = ["pipeline"]
