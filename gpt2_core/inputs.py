"""Input rules shared by the three backends' forward passes, so that a bad input gets the same
answer in PyTorch, TensorFlow and JAX.

The rules (also in docs/architecture.md, "One rule per input"):

- ``input_ids`` (and ``inputs_embeds`` without its channel axis) are ``(batch, seq_len)``, or
  ``(batch, choices, seq_len)`` for the double-heads model. A 1-D array is refused with a
  hint to add the batch axis (``generate`` alone accepts a 1-D prompt as a batch of one).
- Empty inputs (a zero batch or zero tokens) are refused: there is nothing to compute.
- Ids are integers in ``[0, vocab_size)``; every backend checks before it gathers.
- A loss whose labels are all ``-100`` is NaN (torch's 0/0, as transformers).
- Unseeded sampling draws a fresh sample per call (see ``gpt2_core.generation_config``).

Example:
    >>> from gpt2_core.inputs import check_ids_shape
    >>> check_ids_shape((2, 5))
    >>> check_ids_shape((5,))
    Traceback (most recent call last):
    ...
    ValueError: input_ids must have shape (batch, seq_len), got (5,): add a batch axis (input_ids[None])
"""

from __future__ import annotations

from collections.abc import Sequence


def check_ids_shape(shape: Sequence[int | None], name: str = "input_ids") -> None:
    """Raise ValueError unless ``shape`` is (batch, [choices,] seq_len) with no zero axis.

    ``None`` (an unknown dimension while tracing) passes.
    """
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have shape (batch, seq_len), got {shape}: add a batch axis ({name}[None])"
        )
    if any(d == 0 for d in shape):
        raise ValueError(
            f"{name} has shape {shape}: it is empty; pass at least one sequence "
            "of at least one token"
        )


def check_prompt_shape(shape: Sequence[int]) -> None:
    """``generate``'s prompt after a 1-D prompt became a batch of one: (batch, seq_len), neither 0.

    Raises:
        ValueError: naming the shape, with the ways to start generation.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(
            f"the prompt input_ids must have shape (batch, seq_len) with at least "
            f"one token, got {shape}; pass input_ids=None to start from "
            "bos_token_id"
        )


#: every spelling of a floating dtype the backends accept -> its one name
_DTYPE_ALIASES = {
    "fp32": "float32",
    "float32": "float32",
    "f32": "float32",
    "float": "float32",
    "fp16": "float16",
    "float16": "float16",
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "auto": "auto",
}


def dtype_name(dtype: object) -> str | None:
    """One name for a dtype argument, whatever the spelling or framework: ``"float32"``,
    ``"float16"``, ``"bfloat16"``, ``"auto"`` (the checkpoint's own dtype) or None (the default).

    Accepts strings (``"bf16"``, ``"bfloat16"``, ``"fp32"``, ``"auto"`` ...), numpy / ml_dtypes
    dtypes and torch / TF / JAX dtype objects (by their name).

    Example:
        >>> dtype_name("bf16"), dtype_name("torch.float16"), dtype_name(None)
        ('bfloat16', 'float16', None)
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    else:
        try:  # numpy, ml_dtypes and JAX scalar types
            import numpy as np

            name = np.dtype(dtype).name
        except TypeError:  # torch.dtype, tf.DType ...
            name = getattr(dtype, "name", None)
            name = name if isinstance(name, str) else str(dtype)
    key = name.lower().strip()
    for prefix in ("torch.", "tf.", "jnp.", "np.", "numpy.", "<dtype: '"):
        key = key.removeprefix(prefix)
    key = key.removesuffix("'>")
    if key not in _DTYPE_ALIASES:
        raise ValueError(
            f"unsupported dtype {dtype!r}: use fp32 / float32, bf16 / bfloat16, "
            "fp16 / float16, or auto (the checkpoint's dtype)"
        )
    return _DTYPE_ALIASES[key]


def stored_dtype_name(state_dict: dict) -> str:
    """The floating dtype a canonical state dict holds (its first floating tensor's)."""
    for v in state_dict.values():
        kind = getattr(getattr(v, "dtype", None), "name", "")
        if kind in ("float32", "float16", "bfloat16"):
            return kind
    return "float32"
