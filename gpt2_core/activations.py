"""numpy reference implementations of every activation in ``GPT2Config.ACTIVATIONS``.

Backends implement these natively; tests compare against these definitions (transformers'
``ACT2FN``). ``gelu_new``, ``gelu_pytorch_tanh`` and ``gelu_fast`` are the same tanh
approximation written three ways.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


ACT_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": gelu_erf,
    "quick_gelu": lambda x: x * _sigmoid(1.702 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "linear": lambda x: x,
}
