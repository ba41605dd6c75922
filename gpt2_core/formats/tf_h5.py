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
import math
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
_TOP_LAYERS = (
    "transformer",
    "score",
    "multiple_choice_head",
    "classifier",
    "qa_outputs",
    "lm_head",
)
_LEAF_TO_CANON = {
    "embeddings": "weight",
    "gamma": "weight",
    "beta": "bias",
    "kernel": "weight",
    "weight": "weight",
    "bias": "bias",
}


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


#: an HDF5 dataset with filters may expand this much (real weights compress ~1.1x)
_MAX_COMPRESSION_RATIO = 64


def _link_kind(f: h5py.File, name: str) -> str | None:
    """The first link on the path ``name`` that is not a hard link ("soft" / "external")."""
    parts = [p for p in name.split("/") if p]
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        link = f.get(sub, getlink=True)
        if isinstance(link, h5py.SoftLink):
            return f"soft link to {link.path!r}"
        if isinstance(link, h5py.ExternalLink):
            return f"external link to {link.filename!r}:{link.path!r}"
    return None


def _check_dataset(path: Path, name: str, ds: h5py.Dataset, limits) -> None:
    """Refuse, before reading, a dataset whose data is not plain bytes inside this file:
    external raw storage (``/etc/passwd`` as a weight), a virtual dataset (data from other
    files), a size the file cannot hold (a 4 GB fill-value dataset in a 187 KB file), or a
    non-numeric type."""
    plist = ds.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise TFH5Error(
            f"{path}: variable {name!r} is a virtual dataset (its data lives in "
            "other files); refused"
        )
    if plist.get_external_count() > 0:
        target = plist.get_external(0)[0]
        target = target.decode("utf-8", "replace") if isinstance(target, bytes) else target
        raise TFH5Error(
            f"{path}: variable {name!r} stores its data in the external file "
            f"{target!r}; only data inside the file is read"
        )
    if ds.dtype.kind not in "fiub":
        raise TFH5Error(f"{path}: variable {name!r} has non-numeric type {ds.dtype}")
    shape = tuple(ds.shape or ())
    if limits is not None:
        limits.check(str(path), name, shape)
    nbytes = math.prod(shape) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    ratio = _MAX_COMPRESSION_RATIO if plist.get_nfilters() else 1
    if nbytes > ratio * stored and nbytes > 0:
        raise TFH5Error(
            f"{path}: variable {name!r} declares {nbytes} bytes (shape {shape}) but stores "
            f"{stored}; refused before reading (a fill-value or decompression bomb?)"
        )


def load(path: str | Path, limits=None) -> dict[str, np.ndarray]:
    """Read a transformers tf_model.h5 as a canonical-named numpy dict.

    Only datasets whose data lives inside the file are read: external storage, external
    links, virtual datasets and soft links are refused by name (see docs/security.md).
    ``limits`` (a :class:`gpt2_core.naming.TensorLimits`) bounds counts and shapes.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TFH5Error(f"{path}: not an HDF5 file ({e})") from e
    out: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    with f:
        try:
            entries = _entries(path, f)
        except (OSError, KeyError, ValueError, TypeError) as e:
            if isinstance(e, TFH5Error):
                raise
            raise TFH5Error(f"{path}: unreadable HDF5 structure ({e})") from e
        if limits is not None:
            limits.check_count(str(path), len(entries))
        for _wn, full, ds in entries:
            _check_dataset(path, full, ds, limits)
        for wn, full, ds in entries:
            key, transpose = tf_name_to_canonical(wn)
            try:
                arr = np.asarray(ds[()])
            except (OSError, ValueError, TypeError) as e:
                raise TFH5Error(f"{path}: cannot read variable {full!r} ({e})") from e
            if transpose:
                if arr.ndim != 2:
                    raise TFH5Error(f"{path}: kernel {wn!r} has rank {arr.ndim}, expected 2")
                arr = np.asarray(arr.T, order="C")
            elif key.endswith(".bias") and arr.ndim == 2 and arr.shape[0] == 1:
                arr = arr[0]  # TFConv1D bias (1, n)
            if key in out:
                raise TFH5Error(f"{path}: two variables map to {key}: {source[key]!r} and {full!r}")
            out[key] = arr
            source[key] = full
    return out


def _entries(path: Path, f: h5py.File) -> list[tuple[str, str, h5py.Dataset]]:
    """(variable name, HDF5 path, dataset) of every weight, links checked before opening."""
    entries: list[tuple[str, str, h5py.Dataset]] = []

    def add(wn: str, full: str) -> None:
        kind = _link_kind(f, full)
        if kind:
            raise TFH5Error(
                f"{path}: variable {full!r} is a {kind}; only datasets stored in the file are read"
            )
        obj = f.get(full)
        if not isinstance(obj, h5py.Dataset):
            raise TFH5Error(f"{path}: {full!r} is not a dataset")
        entries.append((wn, full, obj))

    layer_names = _attr_list(f, "layer_names")
    if layer_names is not None:
        for layer in layer_names:
            kind = _link_kind(f, layer)
            if kind:
                raise TFH5Error(f"{path}: layer {layer!r} is a {kind}; refused")
            if layer not in f:
                raise TFH5Error(f"{path}: layer {layer!r} listed but absent")
            g = f[layer]
            if not isinstance(g, h5py.Group):
                raise TFH5Error(f"{path}: layer {layer!r} is not a group")
            weight_names = _attr_list(g, "weight_names") or []
            for wn in weight_names:
                full = f"{layer}/{wn}"
                if _link_kind(f, full) is None and wn not in g:
                    raise TFH5Error(f"{path}: variable {wn!r} listed but absent")
                add(wn, full)
    else:  # no Keras attributes: take every dataset, path below the layer group as name
        names: list[str] = []

        def visit(name: str, link) -> None:
            if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
                names.append(name)  # refused by add() with its name
            elif f.get(name, getclass=True) is h5py.Dataset:
                names.append(name)

        f.visit_links(visit)
        for name in names:
            add(name.split("/", 1)[1] if "/" in name else name, name)
    return entries


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


def save(
    state_dict: Mapping[str, np.ndarray],
    path: str | Path,
    config: GPT2Config,
    head: str,
    progress: Callable[[int], None] | None = None,
) -> Path:
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
        logger.warning(
            "tf_model.h5: untied lm_head.weight written as layer 'lm_head'; "
            "transformers' TF GPT-2 always ties its head to wte and will ignore it"
        )
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
