"""transformers' ``tf_model.h5`` without TensorFlow: read and write through h5py.

transformers' TF models save with Keras 2's ``save_weights`` (HDF5): the root attribute
``layer_names`` lists the model's top-level layers (``transformer``, and ``score`` /
``multiple_choice_head`` for heads); each layer group's ``weight_names`` attribute lists
variable names whose first scope is the Keras model name, and each variable is a dataset at
``<layer>/<weight name>``:

    layer "transformer", weight "tfgpt2lm_head_model/transformer/h_._0/attn/c_attn/weight:0"

Mapping to canonical names (transformers' own ``convert_tf_weight_name_to_pt_weight_name``):
drop ``:0`` and the model scope, ``h_._0`` -> ``h.0``, leaves ``embeddings`` / ``gamma`` ->
``weight``, ``beta`` -> ``bias``, Dense ``kernel`` -> ``weight`` transposed. GPT-2's
``TFConv1D`` stores ``weight`` (in, out) like PyTorch's Conv1D (no transpose) and its bias as
(1, n), squeezed here. The LM head has no variable: it is ``wte``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.io_utils import atomic_output_file

logger = logging.getLogger(__name__)

#: Keras' automatic name of each transformers TF class (the first scope of every variable).
MODEL_SCOPES = {
    "base": "tfgpt2_model",
    "lm": "tfgpt2lm_head_model",
    "double_heads": "tfgpt2_double_heads_model",
    "sequence_classification": "tfgpt2_for_sequence_classification",
    "token_classification": "tfgpt2_for_token_classification",
    "question_answering": "tfgpt2_for_question_answering",
}
_TOP_LAYERS = ("transformer", "score", "multiple_choice_head", "classifier", "qa_outputs", "lm_head")
_LEAF_TO_CANON = {"embeddings": "weight", "gamma": "weight", "beta": "bias", "kernel": "weight",
                  "weight": "weight", "bias": "bias"}


class TFH5Error(ValueError):
    """A malformed or unrecognised tf_model.h5 (names the file and the variable)."""


def _attr_list(group: h5py.Group, name: str) -> list[str] | None:
    """Keras splits long name lists over ``name0``, ``name1``... attributes; join them."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def tf_name_to_canonical(name: str) -> tuple[str, bool]:
    """``tfgpt2lm_head_model/transformer/h_._0/ln_1/gamma:0`` -> (canonical key, transpose?)."""
    parts = [p for p in re.sub(r":\d+$", "", name).split("/") if p]
    if len(parts) > 1 and parts[0] not in _TOP_LAYERS:
        parts = parts[1:]  # the Keras model scope
    out: list[str] = []
    for p in parts:
        out.extend(p.split("_._"))  # h_._0 -> h, 0 (a TF list becomes a ModuleList)
    leaf = out[-1]
    if leaf not in _LEAF_TO_CANON:
        raise TFH5Error(f"unrecognised variable {name!r}")
    out[-1] = _LEAF_TO_CANON[leaf]
    return ".".join(out), leaf == "kernel"


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Read a transformers tf_model.h5 as a canonical-named numpy dict."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TFH5Error(f"{path}: not an HDF5 file ({e})") from e
    out: dict[str, np.ndarray] = {}
    with f:
        entries: list[tuple[str, h5py.Dataset]] = []
        layer_names = _attr_list(f, "layer_names")
        if layer_names is not None:
            for layer in layer_names:
                if layer not in f:
                    raise TFH5Error(f"{path}: layer {layer!r} listed but absent")
                g = f[layer]
                weight_names = _attr_list(g, "weight_names") or []
                for wn in weight_names:
                    if wn not in g:
                        raise TFH5Error(f"{path}: variable {wn!r} listed but absent")
                    entries.append((wn, g[wn]))
        else:  # no Keras attributes: take every dataset, path below the layer group as name
            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    entries.append((name.split("/", 1)[1] if "/" in name else name, obj))
            f.visititems(visit)
        for wn, ds in entries:
            key, transpose = tf_name_to_canonical(wn)
            arr = np.asarray(ds[()])
            if transpose:
                if arr.ndim != 2:
                    raise TFH5Error(f"{path}: kernel {wn!r} has rank {arr.ndim}, expected 2")
                arr = np.asarray(arr.T, order="C")
            elif key.endswith(".bias") and arr.ndim == 2 and arr.shape[0] == 1:
                arr = arr[0]  # TFConv1D bias (1, n)
            if key in out:
                raise TFH5Error(f"{path}: two variables map to {key}")
            out[key] = arr
    return out


def _tf_variable(key: str, arr: np.ndarray, scope: str) -> tuple[str, str, np.ndarray]:
    """Canonical key -> (layer group, TF variable name, array in TF layout)."""
    bare = naming.strip_base_prefix(key)
    parts = bare.split(".")
    leaf = parts[-1]
    is_base = bare.split(".")[0] in ("wte", "wpe", "h", "ln_f")
    if is_base:
        mods = parts[:-1]
        if mods[0] == "h":  # h.0 -> h_._0
            mods = [f"h_._{mods[1]}", *mods[2:]]
        module = mods[-1]
        if module in ("wte", "wpe"):
            leaf = "embeddings"
        elif module.startswith("ln_"):
            leaf = "gamma" if leaf == "weight" else "beta"
        elif leaf == "bias":
            arr = arr.reshape(1, -1)  # TFConv1D bias is (1, n)
        layer = "transformer"
        name = "/".join([scope, "transformer", *mods, leaf]) + ":0"
    else:  # Dense heads: kernel (in, out)
        mods = parts[:-1]
        if leaf == "weight":
            leaf, arr = "kernel", arr.T
        layer = mods[0]
        name = "/".join([scope, *mods, leaf]) + ":0"
    return layer, name, np.asarray(arr, order="C")


def save(state_dict: Mapping[str, np.ndarray], path: str | Path, config: GPT2Config,
         head: str, progress: Callable[[int], None] | None = None) -> Path:
    """Write a tf_model.h5 in transformers' layout (loads with ``TFGPT2*.from_pretrained``).

    Head layers transformers' TF never had (token classification, QA) follow the same Dense
    convention; an untied ``lm_head`` is written as a Dense layer ``lm_head`` that transformers'
    TF ignores (its LM head is always ``wte``) — a warning says so.
    """
    head = naming.head_of(head)
    path = Path(path)
    scope = MODEL_SCOPES[head]
    sd = naming.drop_tied(state_dict, config, head)
    if "lm_head.weight" in sd:
        logger.warning("tf_model.h5: untied lm_head.weight written as layer 'lm_head'; "
                       "transformers' TF GPT-2 always ties its head to wte and will ignore it")
    layers: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key, value in sd.items():
        arr = np.asarray(value)
        if arr.dtype == np.dtype(ml_dtypes.bfloat16):
            arr = arr.astype(np.float32)  # HDF5 has no bfloat16; transformers' TF reads fp32
        layer, name, arr = _tf_variable(key, arr, scope)
        layers.setdefault(layer, []).append((name, arr))
    with atomic_output_file(path, "w+b") as raw, h5py.File(raw, "w") as f:
        f.attrs["layer_names"] = [n.encode("utf8") for n in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.21.0"
        for layer, variables in layers.items():
            g = f.create_group(layer)
            g.attrs["weight_names"] = [n.encode("utf8") for n, _ in variables]
            for name, arr in variables:
                g.create_dataset(name, data=arr)
                if progress:
                    progress(arr.nbytes)
    return path
