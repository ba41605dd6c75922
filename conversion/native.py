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

from pathlib import Path

from gpt2_core import naming
from gpt2_core.config import CONFIG_NAME, GPT2Config
from gpt2_core.io_utils import atomic_write_bytes

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
        import keras

        import gpt2_tf  # registers the classes with Keras

        model = keras.models.load_model(d / KERAS_FILE)
        if not isinstance(model, gpt2_tf.GPT2PreTrainedModel):
            raise ValueError(f"{d / KERAS_FILE} is not a gpt2_tf model ({type(model).__name__})")
        return model.config, gpt2_tf.to_canonical(model), model.head
    if fmt == "nnx":
        import numpy as np
        from flax import serialization

        from conversion.convert import head_from_config
        from gpt2_flax.weights import canonical_key, is_transposed

        config = GPT2Config.from_json_file(d / CONFIG_NAME)
        head = head_from_config(config)
        try:
            pure = serialization.msgpack_restore((d / NNX_FILE).read_bytes())
        except Exception as e:
            raise ValueError(f"{d / NNX_FILE} is not a msgpack parameter state: {e}") from e
        raw = {}
        for path, value in _flatten(pure):
            key = canonical_key(path)  # NNX attribute paths are the canonical names
            arr = np.asarray(value)
            raw[key] = arr.T if is_transposed(key) else arr
        sd, report = naming.normalize_state_dict(raw, config, head, allow_new_head=False,
                                                 source=str(d / NNX_FILE))
        report.raise_if_error()
        return config, sd, head
    raise ValueError(f"unknown native format {fmt!r}")


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
