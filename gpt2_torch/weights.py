"""PyTorch variables <-> the canonical numpy state dict.

The PyTorch modules are named after the canonical schema (HF PyTorch names and layouts: Conv1D
weights (in, out), Linear heads (out, in)), so the mapping is the identity: no renames and no
transposes. What this module adds is the guard rails -- exact key sets, shape checks, the tied
head -- and the numpy <-> torch dtype bridge (bfloat16 goes through ``ml_dtypes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import torch

from gpt2_core import lowmem, naming

if TYPE_CHECKING:
    from gpt2_torch.modeling import GPT2PreTrainedModel

#: canonical key -> torch key renames (none: the module tree *is* the canonical schema)
RENAMES: dict[str, str] = {}
#: canonical keys stored transposed in torch (none: Conv1D keeps the (in, out) layout)
TRANSPOSED: tuple[str, ...] = ()

_BF16 = np.dtype(ml_dtypes.bfloat16)


_INIT_FNS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
             "xavier_uniform_", "xavier_normal_", "constant_", "zeros_", "ones_")


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """``torch.nn.init`` functions do nothing inside the block (as transformers'
    ``no_init_weights``): for building a model on the meta device that a checkpoint fills.

    On meta tensors the init functions compute nothing, but the first one imports torch's
    Python decompositions (``torch._refs``): 2.9 s of a 6 s GPT-2 medium load here.
    """
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FNS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``t``; bfloat16 becomes ``ml_dtypes.bfloat16``."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_BF16).copy()
    return t.numpy().copy()


def numpy_to_tensor(a: np.ndarray, *, copy: bool = True) -> torch.Tensor:
    """A torch tensor owning a copy of ``a`` (so read-only / memory-mapped arrays are safe).

    With ``copy=False`` a writable array that owns its memory (e.g. the result of a dtype cast)
    is wrapped without copying; read-only and memory-mapped arrays are still copied.
    """
    a = np.asarray(a)
    mapped = lowmem.mapped_buffer(a) is not None
    share = not copy and a.flags.writeable and a.flags.c_contiguous and not mapped
    bits = a.view(np.int16) if a.dtype == _BF16 else a
    if share:
        t = torch.from_numpy(bits)
    elif mapped:  # copied block by block, each source block's pages released as it lands
        t = torch.from_numpy(lowmem.owned_copy(bits))
    else:
        t = torch.from_numpy(np.array(bits, copy=True))
    return t.view(torch.bfloat16) if a.dtype == _BF16 else t


def torch_dtype_of(state_dict: Mapping[str, np.ndarray]) -> torch.dtype:
    """The floating dtype of a canonical state dict (float32 if it has none)."""
    for v in state_dict.values():
        dt = np.asarray(v).dtype
        if dt == _BF16:
            return torch.bfloat16
        if np.issubdtype(dt, np.floating):
            return {np.dtype(np.float16): torch.float16, np.dtype(np.float64): torch.float64}.get(
                dt, torch.float32)
    return torch.float32


def to_canonical(model: GPT2PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's weights as a canonical ``dict[str, np.ndarray]`` (tied head included).

    Example:
        >>> sd = to_canonical(GPT2LMHeadModel(tiny_config()))
        >>> sd["transformer.h.0.attn.c_attn.weight"].shape   # (in, out)
        (36, 108)
    """
    expected = naming.expected_shapes(model.config, model._head)
    out: dict[str, np.ndarray] = {}
    for key, tensor in model.state_dict().items():
        if key not in expected:
            raise AssertionError(f"{type(model).__name__} has a variable {key!r} that the "
                                 "canonical schema does not know")
        arr = tensor_to_numpy(tensor)
        if arr.shape != expected[key]:
            raise AssertionError(f"{key}: shape {arr.shape}, canonical {expected[key]}")
        out[key] = arr
    missing = set(expected) - set(out)
    if missing:
        raise AssertionError(f"{type(model).__name__} lacks canonical keys {sorted(missing)}")
    return out


def load_canonical(
    model: GPT2PreTrainedModel,
    state_dict: Mapping[str, np.ndarray | torch.Tensor],
    *,
    assign: bool = False,
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    consume: bool = False,
) -> None:
    """Load a canonical state dict into ``model`` (in place), checking keys and shapes.

    Args:
        model: any of the six model classes.
        state_dict: canonical keys for the model's head (``transformer.`` prefix in head models);
            run :func:`gpt2_core.naming.normalize_state_dict` first for other conventions.
        assign: use the given tensors as the parameters (for a model built on the meta device)
            instead of copying into the existing ones.
        strict: raise :class:`gpt2_core.naming.CheckpointError` on unexpected keys.
        allow_missing: keys that may be absent (a new head); they keep their current values.
        consume: the state dict is the caller's to give away (``from_pretrained``): writable
            arrays become the parameters without a copy, and each memory-mapped array's pages
            are released once copied (:func:`gpt2_core.lowmem.release`), so loading peaks near
            one copy of the weights.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys, named.
    """
    cfg, head = model.config, model._head
    expected = naming.expected_shapes(cfg, head)
    ties = naming.tied_keys(cfg, head)
    allowed_missing = set(allow_missing) | set(ties)
    missing = sorted(k for k in expected if k not in state_dict and k not in allowed_missing)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = [(k, expected[k], tuple(v.shape)) for k, v in state_dict.items()
                  if k in expected and tuple(v.shape) != expected[k]]
    if missing or (unexpected and strict) or mismatched:
        report = naming.LoadReport(missing=missing, unexpected=unexpected if strict else [],
                                   mismatched=mismatched, source=type(model).__name__)
        raise naming.CheckpointError(report.summary())
    for tied, src in ties.items():
        pair = (state_dict.get(tied), state_dict.get(src))
        if (pair[0] is not None and pair[1] is not None and pair[0] is not pair[1]
                and not np.array_equal(_as_numpy(pair[0]), _as_numpy(pair[1]))):
            raise naming.CheckpointError(f"{tied} differs from {src} but config.tie_word_embeddings"
                                         "=True; load with tie_word_embeddings=False")
    tensors = {}
    for k, v in state_dict.items():
        if k not in expected or (k in ties and ties[k] in state_dict):
            continue  # unexpected (non-strict) or a tied copy: the source provides it
        if isinstance(v, torch.Tensor):
            tensors[k] = v.detach().clone()
        else:
            tensors[k] = numpy_to_tensor(v, copy=not consume)
            if consume:
                lowmem.release(v)
    if not assign:
        params = model.state_dict()
        tensors = {k: t.to(params[k].dtype) for k, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=assign)
    model.tie_weights()  # assign replaced Parameter objects: share lm_head with wte again


def _as_numpy(v: np.ndarray | torch.Tensor) -> np.ndarray:
    return tensor_to_numpy(v) if isinstance(v, torch.Tensor) else np.asarray(v)
