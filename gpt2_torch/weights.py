"""PyTorch variables <-> the canonical numpy state dict.

The PyTorch modules are named after the canonical schema (HF PyTorch names and layouts: Conv1D
weights (in, out), Linear heads (out, in)), so the mapping is the identity: no renames and no
transposes. What this module adds is the guard rails -- exact key sets, shape checks, the tied
head -- and the numpy <-> torch dtype bridge (bfloat16 goes through ``ml_dtypes``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import ml_dtypes
import numpy as np
import torch

from gpt2_core import lowmem, naming
from gpt2_core.init import missing_weights

if TYPE_CHECKING:
    from gpt2_torch.modeling import GPT2PreTrainedModel

#: canonical keys stored transposed in torch: none, the canonical layout *is* torch's (Conv1D
#: (in, out), nn.Linear heads (out, in)); the Keras and Flax backends transpose
#: :data:`gpt2_core.naming.LINEAR_HEAD_WEIGHTS`
TRANSPOSED: tuple[str, ...] = ()

logger = logging.getLogger(__name__)
_BF16 = np.dtype(ml_dtypes.bfloat16)


_INIT_FNS = (
    "normal_",
    "uniform_",
    "trunc_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "constant_",
    "zeros_",
    "ones_",
)


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

    With ``copy=False`` a writable, contiguous, 64-byte-aligned array is wrapped without copying: one
    that owns its memory (e.g. the result of a dtype cast) or a copy-on-write map of a file
    (``mmap="private"``: pages are read from the file on first use, writes stay in memory).
    Read-only (memory-mapped) arrays are still copied.
    """
    a = np.asarray(a)
    mapped = lowmem.mapped_buffer(a) is not None
    # a 64-byte-aligned start, as torch's own allocations have: BLAS picks its code path by
    # alignment, so an unaligned map would give outputs that differ in the last bits from
    # the model that was saved
    share = not copy and a.flags.writeable and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    bits = a.view(np.int16) if a.dtype == _BF16 else a
    if share:
        t = torch.from_numpy(bits)
    elif mapped:  # copied block by block, each source block's pages released as it lands
        # given away (copy=False: from_pretrained's own map, which nothing wrote to)
        t = torch.from_numpy(lowmem.owned_copy(bits, unwritten=not copy))
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
                dt, torch.float32
            )
    return torch.float32


def is_transposed(key: str) -> bool:
    """True when ``key``'s torch parameter is the transpose of the canonical array (never)."""
    return key in TRANSPOSED


def variable_map(model: GPT2PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """canonical key -> torch parameter (tied keys left out: ``lm_head`` *is* ``wte``)."""
    return dict(model.named_parameters())


def _check_key_set(model: GPT2PreTrainedModel, vmap: Mapping[str, torch.nn.Parameter]) -> None:
    head = naming.head_of_model(model)
    expected = set(naming.expected_shapes(model.config, head))
    expected -= set(naming.tied_keys(model.config, head))
    if set(vmap) != expected:
        raise AssertionError(
            f"{type(model).__name__}: parameters and canonical schema differ: "
            f"extra {sorted(set(vmap) - expected)}, missing {sorted(expected - set(vmap))}"
        )


def _to_numpy(var: torch.Tensor) -> np.ndarray:
    return tensor_to_numpy(var)


def to_canonical(model: GPT2PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's weights as a canonical ``dict[str, np.ndarray]`` (tied head included), in
    :func:`gpt2_core.naming.expected_shapes` order.

    Example:
        >>> sd = to_canonical(GPT2LMHeadModel(tiny_config()))
        >>> sd["transformer.h.0.attn.c_attn.weight"].shape   # (in, out)
        (36, 108)
    """
    head = naming.head_of_model(model)
    vmap = variable_map(model)
    _check_key_set(model, vmap)
    shapes = naming.expected_shapes(model.config, head)
    ties = naming.tied_keys(model.config, head)
    out: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if key in ties:
            continue
        arr = _to_numpy(vmap[key])
        if key in TRANSPOSED:
            arr = np.ascontiguousarray(arr.T)
        if arr.shape != shape:
            raise AssertionError(f"{key}: shape {arr.shape}, canonical {shape}")
        out[key] = arr
    for tied, src in ties.items():
        out[tied] = out[src]
    return {k: out[k] for k in shapes}


def load_canonical(
    model: GPT2PreTrainedModel,
    state_dict: Mapping[str, np.ndarray | torch.Tensor],
    *,
    strict: bool = True,
    init_missing: bool = False,
    seed: int = 0,
    assign: bool = False,
    consume: bool = False,
) -> naming.LoadReport:
    """Load a canonical state dict into ``model`` (in place), checking keys and shapes.

    Args:
        model: any of the six model classes.
        state_dict: canonical keys, with or without the ``transformer.`` prefix; legacy buffers
            are dropped and tied keys filled (:func:`gpt2_core.naming.normalize_state_dict`).
        strict: raise :class:`gpt2_core.naming.CheckpointError` on missing, unexpected or
            mis-shaped keys; False logs them and leaves those parameters as they are.
        init_missing: give head weights absent from a base-model checkpoint transformers' init
            (:func:`gpt2_core.init.missing_weights`, seeded by ``seed``: the same values in every
            backend); without it they keep their current values.
        seed: seeds ``init_missing``.
        assign: use the given tensors as the parameters (for a model built on the meta device)
            instead of copying into the existing ones.
        consume: the state dict is the caller's to give away (``from_pretrained``): writable
            arrays become the parameters without a copy, and each memory-mapped array's pages
            are released once copied (:func:`gpt2_core.lowmem.release`), so loading peaks near
            one copy of the weights.

    Returns:
        the :class:`gpt2_core.naming.LoadReport`.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys, named (``strict``); a tied head
            that differs from ``wte`` (always).
    """
    head = naming.head_of_model(model)
    state_dict = {
        k: tensor_to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()
    }
    sd, report = naming.normalize_state_dict(
        state_dict, model.config, head, source=type(model).__name__
    )
    if strict:
        report.raise_if_error()
    elif not report.ok:
        logger.warning("loading a state dict: %s", report.summary())
    vmap = variable_map(model)
    _check_key_set(model, vmap)
    new = (
        missing_weights(model.config, head, report.newly_initialized, seed=seed)
        if init_missing
        else {}
    )
    dtype = torch_dtype_of(sd)
    tensors = {}
    for key in vmap:
        if key in sd:
            tensors[key] = numpy_to_tensor(sd[key], copy=not consume)
            if consume:
                lowmem.release(sd[key])
        elif key in new:
            tensors[key] = numpy_to_tensor(new[key], copy=False).to(dtype)
    if not assign:
        tensors = {k: t.to(vmap[k].dtype) for k, t in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=assign)
    model.tie_weights()  # assign replaced Parameter objects: share lm_head with wte again
    return report
