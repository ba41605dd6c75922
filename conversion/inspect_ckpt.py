"""``gpt2 inspect DIR``: what a checkpoint directory holds, without loading a framework."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from gpt2_core import checkpoint, hub, naming
from gpt2_core.config import CONFIG_NAME, GPT2Config


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _describe_special(d, lines: list[str]) -> str:
    """Directories only ``gpt2 convert`` reads: an OpenAI release, a Keras ``model.keras``, an
    NNX state. Say which, and what converting them needs; never 'none' for what convert reads."""
    from conversion import native, openai_ckpt
    from conversion.convert import special_format

    kind = special_format(d)
    if kind is None:
        lines.append(
            "formats:    none (no config.json with weights, OpenAI release, model.keras "
            "or NNX state here)"
        )
        return "\n".join(lines)
    files = {
        "openai": f"{openai_ckpt.HPARAMS} + {openai_ckpt.CKPT_PREFIX}.*",
        "keras": native.KERAS_FILE,
        "nnx": native.NNX_FILE,
    }[kind]
    needs = {"openai": "TensorFlow", "keras": "TensorFlow/Keras", "nnx": "JAX/Flax"}[kind]
    lines.append(f"formats:    {kind} ({files}; read by `gpt2 convert`, which needs {needs})")
    if kind == "openai":
        import json

        hp = json.loads((d / openai_ckpt.HPARAMS).read_text())
        lines.append("config:     " + " ".join(f"{k}={v}" for k, v in sorted(hp.items())))
    size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    lines.append(f"on disk:    {_fmt_bytes(size)}")
    return "\n".join(lines)


def describe(path: str | os.PathLike, prefer: str | None = None) -> str:
    d = hub.resolve_dir(path)
    lines = [f"checkpoint: {d}"]
    config = (
        GPT2Config.from_json_file(checkpoint.checked_file(d, CONFIG_NAME))
        if (d / CONFIG_NAME).exists()
        else None
    )
    formats = checkpoint.detect_formats(d)
    if not formats:
        return _describe_special(d, lines)
    lines.append(f"formats:    {', '.join(formats)}")
    if config is not None:
        lines.append(
            f"config:     n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
            f"vocab={config.vocab_size} n_positions={config.n_positions} "
            f"act={config.activation_function} tied={config.tie_word_embeddings}"
        )
        arch = config.extra.get("architectures")
        if arch:
            lines.append(f"arch:       {', '.join(arch)}")
    sd, info = checkpoint.read_state_dict(d, prefer=prefer, config=config)
    lines.append(
        f"reading:    {info.format} ({len(info.files)} file(s): "
        f"{', '.join(p.name for p in info.files[:4])}{' ...' if len(info.files) > 4 else ''})"
    )
    total = sum(int(np.prod(v.shape)) for k, v in sd.items() if not naming.is_buffer_key(k))
    size = sum(f.stat().st_size for f in info.files)
    dtypes = Counter(str(v.dtype) for v in sd.values())
    lines.append(f"tensors:    {len(sd)} ({', '.join(f'{n} {t}' for t, n in dtypes.items())})")
    lines.append(f"parameters: {total:,} stored, {_fmt_bytes(size)} on disk")
    if config is not None:
        from conversion.convert import head_from_config

        head = head_from_config(config)
        _, report = naming.normalize_state_dict(sd, config, head)
        lines.append(
            f"as {naming.HEADS[head]}: {config.num_parameters(head):,} parameters; "
            f"{report.summary()}"
        )
    return "\n".join(lines)
