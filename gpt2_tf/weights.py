"""Keras variables <-> the canonical numpy state dict.

The Keras layers carry the canonical names (``h_0`` for ``h.0``, LayerNorm ``gamma``/``beta``
for ``weight``/``bias``, Embedding ``embeddings`` for ``weight``), so the mapping is a walk over
attributes plus one declared transpose rule: the Linear heads (``lm_head``, ``score``,
``classifier``, ``qa_outputs``, ``multiple_choice_head.summary``) are Keras ``Dense`` layers
whose ``kernel`` is (in, out), the transpose of the canonical nn.Linear (out, in). GPT-2's
Conv1D weights are (in, out) in both. Key sets and shapes are asserted both ways.

Example:
    >>> from gpt2_core.init import random_state_dict, tiny_config
    >>> from gpt2_tf import GPT2LMHeadModel
    >>> cfg = tiny_config()
    >>> model = GPT2LMHeadModel(cfg)
    >>> report = load_canonical(model, random_state_dict(cfg, "lm", std=0.3))
    >>> to_canonical(model)["transformer.h.0.attn.c_attn.weight"].shape
    (36, 108)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from gpt2_core import lowmem, naming
from gpt2_core.init import missing_weights

if TYPE_CHECKING:
    from gpt2_tf.modeling import GPT2PreTrainedModel

#: canonical keys whose variable is a Keras Dense kernel (in, out): the transpose of nn.Linear's
TRANSPOSED = naming.LINEAR_HEAD_WEIGHTS

logger = logging.getLogger(__name__)


def is_transposed(key: str) -> bool:
    """True when ``key``'s Keras variable is the transpose of the canonical array."""
    return key in TRANSPOSED


def _block_vars(block, prefix: str, config) -> dict[str, Any]:
    out = {}

    def conv(name, layer):
        out[f"{prefix}{name}.weight"] = layer.weight
        out[f"{prefix}{name}.bias"] = layer.bias

    def ln(name, layer):
        out[f"{prefix}{name}.weight"] = layer.gamma
        out[f"{prefix}{name}.bias"] = layer.beta

    ln("ln_1", block.ln_1)
    conv("attn.c_attn", block.attn.c_attn)
    conv("attn.c_proj", block.attn.c_proj)
    if config.add_cross_attention:
        conv("crossattention.c_attn", block.crossattention.c_attn)
        conv("crossattention.q_attn", block.crossattention.q_attn)
        conv("crossattention.c_proj", block.crossattention.c_proj)
        ln("ln_cross_attn", block.ln_cross_attn)
    ln("ln_2", block.ln_2)
    conv("mlp.c_fc", block.mlp.c_fc)
    conv("mlp.c_proj", block.mlp.c_proj)
    return out


def variable_map(model: GPT2PreTrainedModel) -> dict[str, Any]:
    """canonical key -> Keras variable (tied keys left out). Dense kernels are in ``TRANSPOSED``."""
    head = naming.head_of_model(model)
    base = model if head == "base" else model.transformer
    p = "" if head == "base" else naming.PREFIX
    out: dict[str, Any] = {
        f"{p}wte.weight": base.wte.embeddings,
        f"{p}wpe.weight": base.wpe.embeddings,
    }
    for i, block in enumerate(base.h):
        out.update(_block_vars(block, f"{p}h.{i}.", model.config))
    out[f"{p}ln_f.weight"] = base.ln_f.gamma
    out[f"{p}ln_f.bias"] = base.ln_f.beta
    if head in ("lm", "double_heads") and model.lm_head is not None:
        out["lm_head.weight"] = model.lm_head.kernel
    if head == "double_heads" and model.multiple_choice_head.summary is not None:
        out["multiple_choice_head.summary.weight"] = model.multiple_choice_head.summary.kernel
        out["multiple_choice_head.summary.bias"] = model.multiple_choice_head.summary.bias
    if head == "sequence_classification":
        out["score.weight"] = model.score.kernel
    if head == "token_classification":
        out["classifier.weight"] = model.classifier.kernel
        out["classifier.bias"] = model.classifier.bias
    if head == "question_answering":
        out["qa_outputs.weight"] = model.qa_outputs.kernel
        out["qa_outputs.bias"] = model.qa_outputs.bias
    return out


def _check_key_set(model: GPT2PreTrainedModel, vmap: Mapping[str, Any]) -> None:
    head = naming.head_of_model(model)
    expected = set(naming.expected_shapes(model.config, head))
    expected -= set(naming.tied_keys(model.config, head))
    if set(vmap) != expected:
        raise AssertionError(
            f"{type(model).__name__}: variable map and canonical schema differ: "
            f"extra {sorted(set(vmap) - expected)}, missing {sorted(expected - set(vmap))}"
        )
    n_model = len(model.weights)
    if n_model != len(vmap):
        raise AssertionError(
            f"{type(model).__name__} has {n_model} variables but only "
            f"{len(vmap)} are mapped to canonical keys"
        )


def _to_numpy(v) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


def to_canonical(model: GPT2PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's weights as a canonical ``dict[str, np.ndarray]`` (tied head included), in
    :func:`gpt2_core.naming.expected_shapes` order."""
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


#: rows of a tensor copied at a time into a variable's buffer (and released from the mapping)
ASSIGN_BLOCK = 16 * 1024 * 1024


def _host_view(var: Any) -> np.ndarray | None:
    """A writable numpy view of a variable's own buffer, or None where TF would give a copy.

    On the CPU, a read of a resource variable that is not in copy-on-read mode shares the
    variable's buffer, and ``EagerTensor._numpy()`` shares the tensor's; two reads that share
    memory prove it. On an accelerator each read is a fresh host copy: None.
    """
    target = getattr(var, "_value", var)  # Keras 3's TF backend wraps a tf.Variable
    if not isinstance(target, tf.Variable) or "CPU" not in target.device.upper():
        return None
    try:
        a, b = target.read_value()._numpy(), target.read_value()._numpy()
    except (AttributeError, TypeError, ValueError):
        return None
    if not (isinstance(a, np.ndarray) and a.flags.writeable and np.shares_memory(a, b)):
        return None
    return a


def _assign(var: Any, arr: np.ndarray, *, mapped: bool) -> None:
    """Fill ``var`` with ``arr`` (cast to its dtype) at no more than one block of transient.

    On the CPU the rows are copied straight into the variable's buffer, block by block, and each
    block's memory-mapped source pages are released as it lands: the weights exist once. Never
    a sliced ``assign``: a strided-slice assign (like a gather from the variable) switches a TF
    resource variable to copy-on-read for good, after which *every* dense read copies the whole
    buffer (100 ms for GPT-2's wte on each eager call and each tied-head matmul). Elsewhere
    (accelerators) one whole-tensor assign.
    """
    view = _host_view(var)
    if view is None or view.shape != arr.shape:
        value = tf.convert_to_tensor(arr)
        var.assign(value if value.dtype == var.dtype else tf.cast(value, var.dtype))
        del value
        if mapped:
            lowmem.release(arr)
        return
    if arr.ndim == 0:
        view[...] = arr
        return
    rows = max(1, ASSIGN_BLOCK // max(1, arr[:1].nbytes))
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        view[start : start + rows] = block  # numpy casts (float32 -> bfloat16 rounds to nearest)
        if mapped:
            lowmem.release(block)


def load_canonical(
    model: GPT2PreTrainedModel,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    init_missing: bool = False,
    seed: int = 0,
) -> naming.LoadReport:
    """Assign a canonical state dict to the model's variables (cast to each variable's dtype).

    Args:
        model: any of the six model classes.
        state_dict: canonical keys, with or without the ``transformer.`` prefix; legacy buffers
            are dropped and tied keys filled (:func:`gpt2_core.naming.normalize_state_dict`).
        strict: raise :class:`gpt2_core.naming.CheckpointError` on missing, unexpected or
            mis-shaped keys; False logs them and leaves those variables as they are.
        init_missing: give head weights absent from a base-model checkpoint transformers' init
            (:func:`gpt2_core.init.missing_weights`, seeded by ``seed``: the same values in every
            backend); without it they keep their current values.
        seed: seeds ``init_missing``.

    Returns:
        the :class:`gpt2_core.naming.LoadReport`.
    """
    head = naming.head_of_model(model)
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
    for key, var in vmap.items():
        arr = sd.get(key, new.get(key))
        if arr is None:
            continue
        arr = np.asarray(arr)
        if key in TRANSPOSED:
            arr = arr.T
        if tuple(arr.shape) != tuple(var.shape):
            raise naming.CheckpointError(
                f"{key}: checkpoint shape {arr.shape}, variable {tuple(var.shape)}"
            )
        _assign(var, arr, mapped=key in sd and key not in TRANSPOSED)
        if key in sd:
            lowmem.release(sd[key])  # a memory-mapped source: one copy (the variable) stays
    return report
