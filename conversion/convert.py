"""Convert a checkpoint between formats through the canonical state dict.

    SRC (any format) --read--> canonical numpy dict --write--> OUT (one format)

Writing is atomic at the directory level: everything goes to a temporary sibling directory
that is renamed to OUT only when complete, so an error or Ctrl-C never leaves a half-written
checkpoint. Tokenizer and generation files travel with the weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from conversion import native, openai_ckpt
from gpt2_core import checkpoint, hub, naming
from gpt2_core.config import CONFIG_NAME, GPT2Config
from gpt2_core.io_utils import atomic_directory, copy_side_file

log = logging.getLogger(__name__)

#: values of ``--to``
TARGETS = ("safetensors", "pytorch", "tf", "flax", "openai", "keras", "nnx")
#: files copied unchanged from SRC to OUT
SIDE_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def head_from_config(config: GPT2Config) -> str:
    """The head named by config.json's ``architectures`` (LM when absent or unknown)."""
    for arch in config.extra.get("architectures") or []:
        if arch in naming.ARCHITECTURES:
            return naming.ARCHITECTURES[arch]
    return "lm"


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    to: str,
    dtype: Any = None,
    max_shard_size: int | str = "5GB",
    force: bool = False,
    head: str | None = None,
    prefer: str | None = None,
    verify: bool = False,
) -> Path:
    """Convert ``src`` into ``out`` in format ``to``; returns ``out``.

    Refuses to write into ``src`` itself, or into a non-empty ``out`` unless ``force``.
    Raises :class:`gpt2_core.naming.CheckpointError` naming missing, unexpected or mis-shaped
    weights; legacy buffers and tied weights are reported as such, never as missing.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; use one of {', '.join(TARGETS)}")
    src_dir = hub.resolve_dir(src)
    out = Path(out)
    if out.exists() and (
        out.resolve() == src_dir.resolve() or out.resolve() in src_dir.resolve().parents
    ):
        raise ValueError(
            f"refusing to overwrite the source checkpoint {src_dir} (OUT {out} is or contains it)"
        )
    src_kind = special_format(src_dir)
    _require_frameworks(src_dir, src_kind, to, verify, prefer)
    if src_kind in native.NATIVE_FORMATS:
        config, raw, src_head = native.load(src_dir, src_kind)
        head = naming.head_of(head) if head else src_head
        sd, report = naming.normalize_state_dict(raw, config, head, source=str(src_dir))
        report.raise_if_error()
    elif src_kind == "openai":
        config, raw = openai_ckpt.load(src_dir)
        head = naming.head_of(head) if head else "lm"
        sd, report = naming.normalize_state_dict(raw, config, head, source=str(src_dir))
        report.raise_if_error()
    else:
        config = GPT2Config.from_json_file(checkpoint.checked_file(src_dir, CONFIG_NAME))
        head = naming.head_of(head) if head else head_from_config(config)
        config, sd, report = checkpoint.load_pretrained(src_dir, head, config=config, prefer=prefer)
    if report.newly_initialized:
        raise naming.CheckpointError(
            f"{src_dir} lacks the {naming.HEADS[head]} head weights "
            f"({', '.join(report.newly_initialized)}); pass --head base or the checkpoint's head"
        )
    notes = []
    if report.ignored_buffers:
        notes.append(
            f"dropped {len(report.ignored_buffers)} legacy buffers (attn.bias/masked_bias)"
        )
    if report.tied:
        notes.append(f"tied weights stored once: {', '.join(report.tied)}")
    with atomic_directory(
        out, overwrite=force, protect=(src_dir,), replaceable=holds_checkpoint
    ) as tmp:
        if to in native.NATIVE_FORMATS:
            if dtype not in (None, "fp32", "float32"):
                raise ValueError(f"--to {to} writes float32 only")
            native.save(sd, config, head, tmp, to)
        elif to == "openai":
            if dtype not in (None, "fp32", "float32"):
                raise ValueError("the OpenAI format stores float32 only")
            openai_ckpt.save(sd, config, tmp)
            openai_ckpt.copy_tokenizer_files(src_dir, tmp, to_openai=True)
        else:
            with _progress(sd, config, head, dtype, to) as bar:
                checkpoint.save_pretrained(
                    sd,
                    config,
                    tmp,
                    head,
                    max_shard_size=max_shard_size,
                    dtype=dtype,
                    formats=(to,),
                    progress=bar.update if bar is not None else None,
                )
            if src_kind == "openai":
                openai_ckpt.copy_tokenizer_files(src_dir, tmp, to_openai=False)
        for name in SIDE_FILES:
            if (src_dir / name).exists() and not (tmp / name).exists():
                copy_side_file(src_dir / name, tmp / name, src_dir)
    for n in notes:
        log.info("%s", n)
    print(
        f"converted {src_dir} ({naming.HEADS[head]}) -> {out} [{to}]"
        + (f"; {'; '.join(notes)}" if notes else "")
    )
    if verify:
        _verify(src_dir, out, to, head, src_kind, dtype)
    return out


#: formats that only a framework reads or writes (OpenAI TF1 checkpoints, model.keras, NNX)
_FORMAT_FRAMEWORK = {"openai": "tf", "keras": "tf", "nnx": "flax"}


def _require_frameworks(
    src_dir: Path, src_kind: str | None, to: str, verify: bool, prefer: str | None
) -> None:
    """Every framework this conversion will need, checked before anything is written."""
    from conversion import frameworks
    from conversion import verify as verify_mod

    if src_kind in _FORMAT_FRAMEWORK:
        frameworks.require(
            _FORMAT_FRAMEWORK[src_kind], f"reading the {src_kind} checkpoint {src_dir}"
        )
    if to in _FORMAT_FRAMEWORK:
        frameworks.require(_FORMAT_FRAMEWORK[to], f"gpt2 convert --to {to}")
    if verify and not (to in _FORMAT_FRAMEWORK or src_kind):
        # --verify runs SRC and OUT in the frameworks that natively read their formats
        src_fmt = checkpoint.choose_format(src_dir, prefer)[0]
        for fw in dict.fromkeys((verify_mod.NATIVE[src_fmt], verify_mod.NATIVE[to])):
            frameworks.require(fw, f"gpt2 convert --verify ({src_fmt} -> {to})")


def holds_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` looks like a checkpoint (``--force`` replaces only those)."""
    names = {
        CONFIG_NAME,
        openai_ckpt.HPARAMS,
        *checkpoint.FORMAT_FILES.values(),
        *native.NATIVE_FORMATS.values(),
    }
    return any((directory / n).exists() for n in names)


@contextlib.contextmanager
def _progress(sd: dict, config: GPT2Config, head: str, dtype: Any, to: str):
    """A byte progress bar on stderr for checkpoints above 100 MB (hidden when not a terminal)."""
    stored = naming.drop_tied(sd, config, head)
    itemsize = checkpoint.to_numpy_dtype(dtype).itemsize if dtype else None
    total = sum(v.size * (itemsize or v.dtype.itemsize) for v in stored.values())
    if total < 100e6:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {to}", disable=None) as bar:
        yield bar


def special_format(directory: Path) -> str | None:
    """``"openai"`` (an OpenAI release without config.json), ``"keras"`` / ``"nnx"`` (a
    backend's native file and no transformers format), else None: the layouts no backend's
    ``from_pretrained`` reads."""
    if openai_ckpt.is_openai_dir(directory) and not (directory / CONFIG_NAME).is_file():
        return "openai"
    if checkpoint.detect_formats(directory):
        return None
    return native.detect(directory)


def _read_any(directory: Path, head: str) -> dict:
    """Canonical weights of any directory this module reads (fp32)."""
    kind = special_format(directory)
    if kind == "openai":
        return openai_ckpt.load(directory)[1]
    if kind:
        return native.load(directory, kind)[1]
    return checkpoint.load_pretrained(directory, head, dtype="fp32")[1]


def _verify(src_dir: Path, out: Path, to: str, head: str, src_kind: str | None, dtype: Any) -> None:
    """Run SRC and OUT in the frameworks of their formats; raise if they disagree."""
    from conversion import verify

    if to in ("openai", *native.NATIVE_FORMATS) or src_kind:
        # layouts no backend's from_pretrained reads: compare the weights bit for bit instead
        a, b = _read_any(src_dir, head), _read_any(out, head)
        keys = set(a) & set(b)
        bad = [
            k
            for k in sorted(keys)
            if not np.array_equal(np.asarray(a[k], np.float32), np.asarray(b[k], np.float32))
        ]
        if bad or not keys:
            raise ValueError(f"--verify failed: {len(bad)} weights differ, e.g. {bad[:1]}")
        print(f"verify: the {len(keys)} tensors of SRC and OUT are equal bit for bit")
        return
    diff, scale = verify.verify_pair(src_dir, out, head)
    # fp32 conversions are exact up to kernel differences between frameworks; a reduced
    # dtype rounds every weight, so its outputs are only expected to agree to ~1%
    rel = 1e-4 if dtype in (None, "fp32", "float32") else 2e-2
    if diff > rel * max(1.0, scale):
        raise ValueError(
            f"--verify failed: max|diff| {diff:.3e} exceeds {rel:g} x {max(1.0, scale):.3g}"
        )
