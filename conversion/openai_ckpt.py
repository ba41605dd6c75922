"""OpenAI's original GPT-2 release format (TF1 checkpoints), read and written.

A release directory holds ``hparams.json`` (``n_vocab``, ``n_ctx``, ``n_embd``, ``n_head``,
``n_layer``), a TF1 checkpoint ``model.ckpt.{index,data-*}`` (+ ``checkpoint``, ``.meta``), and
the tokenizer as ``encoder.json`` / ``vocab.bpe`` (the same files as ``vocab.json`` /
``merges.txt``). transformers 5 no longer reads it; this module does, without transformers.

Variables and the canonical names they map to (no transposes: OpenAI's conv1d is (in, out)
like transformers' Conv1D; only the leading 1 of each ``w`` is squeezed):

    model/wte (V, E)                       transformer.wte.weight
    model/wpe (P, E)                       transformer.wpe.weight
    model/h0/ln_1/g, b                     transformer.h.0.ln_1.weight, bias
    model/h0/attn/c_attn/w (1, E, 3E), b   transformer.h.0.attn.c_attn.weight (E, 3E), bias
    model/h0/attn/c_proj/w, b; ln_2; mlp/c_fc; mlp/c_proj
    model/ln_f/g, b                        transformer.ln_f.weight, bias

The TF1 tensor-bundle format is read and written through TensorFlow (imported only here, only
when such a checkpoint is used).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.io_utils import (
    atomic_write_text,
    check_weight_file,
    copy_side_file,
    load_json_file,
    read_regular_file,
)

HPARAMS = "hparams.json"
CKPT_PREFIX = "model.ckpt"
_BLOCK = re.compile(r"^h(\d+)$")
_LEAF = {"g": "weight", "b": "bias", "w": "weight"}
#: OpenAI tokenizer file -> transformers' name
TOKENIZER_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


class OpenAICheckpointError(ValueError):
    """A malformed OpenAI release directory (names the file and variable)."""


def is_openai_dir(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / HPARAMS).is_file() and _prefix(d) is not None


def _prefix(d: Path) -> Path | None:
    ckpt = d / "checkpoint"
    if ckpt.is_file():  # TF's pointer file: model_checkpoint_path: "model.ckpt"
        text = read_regular_file(ckpt, 1 << 20, "checkpoint pointer").decode("utf-8", "replace")
        m = re.search(r'model_checkpoint_path:\s*"([^"]+)"', text)
        if m and (d / (Path(m.group(1)).name + ".index")).is_file():
            return d / Path(m.group(1)).name
    if (d / f"{CKPT_PREFIX}.index").is_file():
        return d / CKPT_PREFIX
    return None


def config_from_hparams(hparams: dict) -> GPT2Config:
    try:
        return GPT2Config(
            vocab_size=hparams["n_vocab"],
            n_positions=hparams["n_ctx"],
            n_embd=hparams["n_embd"],
            n_head=hparams["n_head"],
            n_layer=hparams["n_layer"],
            n_ctx=hparams["n_ctx"],
            n_inner=hparams.get("n_inner"),
        )
    except KeyError as e:
        raise OpenAICheckpointError(f"{HPARAMS} lacks {e.args[0]!r}") from e


def openai_to_canonical(name: str) -> str:
    """``model/h3/attn/c_attn/w`` -> ``transformer.h.3.attn.c_attn.weight``."""
    parts = name.split("/")
    if not parts or parts[0] != "model":
        raise OpenAICheckpointError(f"unexpected variable {name!r} (not under model/)")
    parts = parts[1:]
    if parts in (["wte"], ["wpe"]):
        return f"{naming.PREFIX}{parts[0]}.weight"
    out = []
    for p in parts[:-1]:
        m = _BLOCK.match(p)
        out.extend(["h", m.group(1)] if m else [p])
    leaf = parts[-1]
    if leaf not in _LEAF:
        raise OpenAICheckpointError(f"unexpected variable {name!r}")
    return naming.PREFIX + ".".join([*out, _LEAF[leaf]])


def canonical_to_openai(key: str) -> str:
    bare = naming.strip_base_prefix(key).split(".")
    if bare in (["wte", "weight"], ["wpe", "weight"]):
        return f"model/{bare[0]}"
    mods, leaf = bare[:-1], bare[-1]
    if mods[0] == "h":
        mods = [f"h{mods[1]}", *mods[2:]]
    is_conv = mods[-1] in ("c_attn", "c_proj", "c_fc")
    short = {"weight": "w" if is_conv else "g", "bias": "b"}[leaf]
    return "/".join(["model", *mods, short])


def load(directory: str | Path) -> tuple[GPT2Config, dict[str, np.ndarray]]:
    """Config and canonical LM state dict (``transformer.`` keys) from an OpenAI release."""
    d = Path(directory)
    prefix = _prefix(d)
    if prefix is None or not (d / HPARAMS).is_file():
        raise OpenAICheckpointError(
            f"{d} is not an OpenAI GPT-2 release (needs {HPARAMS} and {CKPT_PREFIX}.index)"
        )
    config = config_from_hparams(load_json_file(d / HPARAMS, HPARAMS))
    for f in d.glob(prefix.name + ".*"):  # the TF bundle's .index / .data-* files
        check_weight_file(f, d)
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    out: dict[str, np.ndarray] = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        if not name.startswith("model/"):
            continue  # optimizer slots, global_step ...
        arr = np.asarray(reader.get_tensor(name))
        if name.endswith("/w"):
            if arr.ndim != 3 or arr.shape[0] != 1:
                raise OpenAICheckpointError(
                    f"{prefix}: {name} has shape {arr.shape}, expected (1, in, out)"
                )
            arr = arr[0]
        out[openai_to_canonical(name)] = arr
    # hparams.json has no MLP width: read it from the tensors (GPT-2's is 4 x n_embd)
    fc = out.get(f"{naming.PREFIX}h.0.mlp.c_fc.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[1] != config.inner_dim:
        config.n_inner = int(fc.shape[1])
    return config, out


def save(state_dict: dict[str, np.ndarray], config: GPT2Config, directory: str | Path) -> None:
    """Write an OpenAI release directory (hparams.json + TF1 checkpoint) for the base weights."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if (
        config.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
        or not config.scale_attn_weights
        or config.scale_attn_by_inverse_layer_idx
        or config.n_inner not in (None, 4 * config.n_embd)
        or config.layer_norm_epsilon != 1e-5
    ):
        raise OpenAICheckpointError(
            "the OpenAI format has no config beyond sizes: only the original GPT-2 architecture "
            "(gelu_new, scaled attention, 4x MLP, eps 1e-5) can be exported"
        )
    base = {
        k: v
        for k, v in state_dict.items()
        if naming.strip_base_prefix(k).split(".")[0] in ("wte", "wpe", "h", "ln_f")
    }
    import tensorflow as tf

    names, tensors = [], []
    for key, value in base.items():
        name = canonical_to_openai(key)
        arr = np.asarray(value, dtype=np.float32)
        if name.endswith("/w"):
            arr = arr[None]  # (1, in, out)
        names.append(name)
        tensors.append(tf.constant(arr))
    tf.raw_ops.SaveV2(
        prefix=str(d / CKPT_PREFIX),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=tensors,
    )
    atomic_write_text(
        d / "checkpoint",
        f'model_checkpoint_path: "{CKPT_PREFIX}"\nall_model_checkpoint_paths: "{CKPT_PREFIX}"\n',
    )
    hparams = {
        "n_vocab": config.vocab_size,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_layer": config.n_layer,
    }
    atomic_write_text(d / HPARAMS, json.dumps(hparams, indent=2) + "\n")


def copy_tokenizer_files(src: Path, dst: Path, to_openai: bool) -> None:
    """encoder.json/vocab.bpe <-> vocab.json/merges.txt (the same content)."""
    pairs = (
        TOKENIZER_FILES.items() if not to_openai else ((b, a) for a, b in TOKENIZER_FILES.items())
    )
    for a, b in pairs:
        if (src / a).is_file():
            copy_side_file(src / a, dst / b, src)
