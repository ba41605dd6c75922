"""The backends' own save formats, as conversion sources and targets.

* ``keras``: ``model.keras``, what ``model.save()`` of a gpt2_tf model writes (Keras 3 archive
  with the config and the weights); read with ``keras.models.load_model``.
* ``nnx``: ``nnx_state.msgpack``, the Flax NNX parameter state of a gpt2_flax model as a pure
  dict (``nnx.to_pure_dict``) serialised by ``flax.serialization``, next to ``config.json``.
* PyTorch's native form is its ``state_dict``, which is the canonical safetensors already.

Both go through the canonical state dict like every other format; the framework is imported
only when such a file is read or written.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from gpt2_core import naming
from gpt2_core.config import CONFIG_NAME, GPT2Config
from gpt2_core.io_utils import atomic_write_bytes, check_weight_file

KERAS_FILE = "model.keras"
NNX_FILE = "nnx_state.msgpack"
NATIVE_FORMATS = {"keras": KERAS_FILE, "nnx": NNX_FILE}


def detect(directory: str | Path) -> str | None:
    """``"keras"`` or ``"nnx"`` when ``directory`` holds that native file, else None."""
    d = Path(directory)
    for fmt, name in NATIVE_FORMATS.items():
        if (d / name).is_file():
            return fmt
    return None


def load(directory: str | Path, fmt: str) -> tuple[GPT2Config, dict, str]:
    """(config, canonical state dict, head) of a native checkpoint."""
    d = Path(directory)
    if fmt == "keras":
        check_keras_archive(d / KERAS_FILE, d)
        import keras

        import gpt2_tf  # registers the classes with Keras

        model = keras.models.load_model(d / KERAS_FILE)
        if not isinstance(model, gpt2_tf.GPT2PreTrainedModel):
            raise ValueError(f"{d / KERAS_FILE} is not a gpt2_tf model ({type(model).__name__})")
        return model.config, gpt2_tf.to_canonical(model), model.head
    if fmt == "nnx":
        import numpy as np

        from conversion.convert import head_from_config
        from gpt2_core.formats import flax_msgpack
        from gpt2_flax.weights import canonical_key, is_transposed

        config = GPT2Config.from_json_file(check_weight_file(d / CONFIG_NAME, d, CONFIG_NAME))
        head = head_from_config(config)
        file = check_weight_file(d / NNX_FILE, d, NNX_FILE)
        # our strict reader of flax's msgpack (flax_model.msgpack's format), not flax's own
        pure = flax_msgpack.read_tree(file, naming.TensorLimits.from_config(config))
        raw = {}
        for path, value in _flatten(pure):
            key = canonical_key(path)  # NNX attribute paths are the canonical names
            arr = np.asarray(value)
            raw[key] = arr.T if is_transposed(key) else arr
        naming.check_config_fits(config, sum(int(v.nbytes) for v in raw.values()), str(file))
        sd, report = naming.normalize_state_dict(
            raw, config, head, allow_new_head=False, source=str(d / NNX_FILE)
        )
        report.raise_if_error()
        return config, sd, head
    raise ValueError(f"unknown native format {fmt!r}")


#: gpt2_tf's Keras classes, the only ones a model.keras may name
_KERAS_CLASSES = {
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2DoubleHeadsModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering",
}
_MAX_KERAS_CONFIG = 16 * 1024 * 1024


def check_keras_archive(path: Path, root: Path) -> GPT2Config:
    """Check a ``model.keras`` before Keras builds anything from it: a regular file inside the
    checkpoint, naming one of gpt2_tf's classes with a valid config whose weights fit in the
    archive (a config with ``n_layer`` 3000 would otherwise take minutes to build and fail)."""
    check_weight_file(path, root, KERAS_FILE)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a Keras archive ({e})") from e
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        for name in ("config.json", "model.weights.h5"):
            if name not in infos:
                raise ValueError(f"{path}: not a Keras archive (no {name})")
        for info in infos.values():
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > 64 * max(
                info.compress_size, 1
            ):
                raise ValueError(
                    f"{path}: entry {info.filename} expands {info.compress_size} "
                    f"bytes to {info.file_size} (a decompression bomb?)"
                )
        if infos["config.json"].file_size > _MAX_KERAS_CONFIG:
            raise ValueError(f"{path}: config.json of {infos['config.json'].file_size} bytes")
        try:
            spec = json.loads(zf.read("config.json").decode("utf-8"))
            cls_name, inner = spec["class_name"], spec["config"]["config"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: unreadable config.json ({type(e).__name__}: {e})") from e
        except RecursionError:
            raise ValueError(f"{path}: config.json is nested too deeply") from None
        if spec.get("module") != "gpt2_tf.modeling" or cls_name not in _KERAS_CLASSES:
            raise ValueError(
                f"{path}: names {spec.get('module')}.{cls_name}, not a gpt2_tf "
                "model; refused before Keras builds it"
            )
        if not isinstance(inner, dict):
            raise ValueError(f"{path}: config.json has no GPT-2 config")
        try:
            config = GPT2Config.from_dict(inner)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e
        naming.check_config_fits(config, infos["model.weights.h5"].file_size, str(path))
    return config


def _flatten(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def save(state_dict: dict, config: GPT2Config, head: str, directory: str | Path, fmt: str) -> None:
    """Write ``state_dict`` as a native checkpoint of ``head`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = config.copy()
    cfg.extra["architectures"] = [naming.HEADS[head]]
    cfg.save_pretrained(d)
    if fmt == "keras":
        from gpt2_tf import load_canonical
        from gpt2_tf.modeling import MODEL_CLASSES

        model = MODEL_CLASSES[head](cfg)
        load_canonical(model, state_dict)
        model.save(d / KERAS_FILE)
    elif fmt == "nnx":
        from flax import nnx, serialization

        from gpt2_flax.modeling import MODEL_CLASSES

        model = MODEL_CLASSES[head].from_state_dict(cfg, state_dict)
        pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        atomic_write_bytes(d / NNX_FILE, serialization.msgpack_serialize(pure))
    else:
        raise ValueError(f"unknown native format {fmt!r}")
