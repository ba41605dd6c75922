"""The framework-free half of the Auto classes: is this checkpoint a GPT-2, and which head.

transformers' ``AutoModelForCausalLM.from_pretrained(path)`` reads ``config.json`` and picks the
class from ``model_type``. gpt2-zoo has one architecture, so its Auto classes only have to
*check*: a GPT-2 checkpoint (any format) loads into the head the Auto class names, and anything
else is refused with an error that names the file and the model type found, before any weight
is read. Each backend builds its ``AutoModel...`` classes on :func:`check_gpt2` and
:func:`make_auto_class`.

Example:
    >>> from gpt2_core.auto import AUTO_HEADS
    >>> AUTO_HEADS["AutoModelForCausalLM"]
    'lm'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt2_core import naming, presets
from gpt2_core.config import CONFIG_NAME, MODEL_TYPE, GPT2Config

#: Auto class name -> head (a key of :data:`gpt2_core.naming.HEADS`), as in transformers.
AUTO_HEADS: dict[str, str] = {
    "AutoModel": "base",
    "AutoModelForCausalLM": "lm",
    "AutoModelWithLMHead": "lm",
    "AutoModelForSequenceClassification": "sequence_classification",
    "AutoModelForTokenClassification": "token_classification",
    "AutoModelForQuestionAnswering": "question_answering",
}


class NotGPT2Error(ValueError):
    """A checkpoint or config of another architecture was given to a GPT-2 Auto class."""


def check_config_dict(d: dict[str, Any], source: str) -> None:
    """Raise :class:`NotGPT2Error` unless ``d`` (a config.json) describes a GPT-2.

    ``model_type`` must be ``"gpt2"`` (a missing one is accepted, as old GPT-2 configs lack it),
    and every name in ``architectures`` must be one of GPT-2's classes (PyTorch, TF or Flax).
    """
    model_type = d.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise NotGPT2Error(
            f"{source}: model_type is {model_type!r}, not 'gpt2'. gpt2-zoo implements GPT-2 "
            "only; load this checkpoint with a library that implements its architecture."
        )
    archs = d.get("architectures") or []
    unknown = [a for a in archs if a not in naming.ARCHITECTURES]
    if unknown:
        raise NotGPT2Error(
            f"{source}: architectures {unknown} are not GPT-2 classes "
            f"(known: {sorted(naming.HEADS.values())} and their TF/Flax names)"
        )


def check_gpt2(name_or_path: str | os.PathLike | GPT2Config) -> None:
    """Raise :class:`NotGPT2Error` unless ``name_or_path`` is a GPT-2 config or checkpoint.

    Accepts a :class:`GPT2Config`, a checkpoint directory, a config.json path, a preset name or a
    hub id (whose config.json is fetched with :mod:`gpt2_core.hub`).
    """
    if isinstance(name_or_path, GPT2Config):
        return
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"expected a checkpoint directory, hub id or GPT2Config, got "
            f"{type(name_or_path).__name__} (a model of another library?)"
        )
    p = Path(name_or_path)
    if p.is_dir():
        path = p / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{p} has no {CONFIG_NAME}")
    elif p.is_file():
        path = p
    elif presets.is_preset(str(name_or_path)):
        return
    else:
        from gpt2_core import hub

        path = hub.resolve_file(str(name_or_path), CONFIG_NAME)
    try:
        d = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    check_config_dict(d, str(path))


def make_auto_class(
    name: str, head: str, classes: dict[str, type], *, prefix: str = "", build: Any = None
) -> type:
    """An Auto class whose ``from_pretrained`` / ``from_config`` check the architecture and
    return ``classes[head]`` (keyword arguments pass through). ``build(model_cls, config,
    **kwargs)`` makes a fresh model from a config; default ``model_cls(config, **kwargs)``."""

    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> Any:
        check_gpt2(pretrained_model_name_or_path)
        if args:
            raise TypeError(
                f"{cls.__name__}.from_pretrained takes keyword arguments only after "
                f"the path, got {len(args)} positional"
            )
        return classes[head].from_pretrained(pretrained_model_name_or_path, **kwargs)

    def from_config(cls, config: Any, **kwargs: Any) -> Any:
        if not isinstance(config, GPT2Config):
            raise NotGPT2Error(
                f"{cls.__name__}.from_config needs a gpt2_core.GPT2Config, got "
                f"{type(config).__name__}"
            )
        model_cls = classes[head]
        return build(model_cls, config, **kwargs) if build else model_cls(config, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"{name} is not instantiated: use {name}.from_pretrained(path) or "
            f"{name}.from_config(config)"
        )

    doc = (
        f"Loads any GPT-2 checkpoint as ``{prefix}{naming.HEADS[head]}`` (transformers' "
        f"``{prefix}{name}``); other architectures raise :class:`NotGPT2Error`.\n\n"
        f'Example:\n    >>> model = {prefix}{name}.from_pretrained("path/to/gpt2")  '
        "# doctest: +SKIP\n"
    )
    return type(
        prefix + name,
        (),
        {
            "__doc__": doc,
            "__init__": __init__,
            "head": head,
            "from_pretrained": classmethod(from_pretrained),
            "from_config": classmethod(from_config),
        },
    )


class AutoTokenizer:
    """transformers' ``AutoTokenizer`` for GPT-2: a :class:`GPT2TokenizerFast` (or the pure-Python
    :class:`GPT2Tokenizer` with ``use_fast=False``) from a preset, directory or hub id.

    A directory without tokenizer files whose config.json is a GPT-2 gets GPT-2's own vocabulary
    when its ``vocab_size`` is 50257 (the released models); otherwise it is an error.

    Example:
        >>> from gpt2_core.auto import AutoTokenizer
        >>> AutoTokenizer.from_pretrained("gpt2").encode("Hello world")
        [15496, 995]
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("AutoTokenizer is not instantiated: use AutoTokenizer.from_pretrained")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        use_fast: bool = True,
        **kwargs: Any,
    ) -> Any:
        if use_fast:
            from gpt2_core.tokenizer_fast import GPT2TokenizerFast as tok_cls
        else:
            from gpt2_core.tokenizer import GPT2Tokenizer as tok_cls
        p = Path(pretrained_model_name_or_path)
        if p.is_dir():
            if (p / CONFIG_NAME).is_file():
                check_gpt2(p)
            has_files = (p / "tokenizer.json").is_file() or (
                (p / "vocab.json").is_file() and (p / "merges.txt").is_file()
            )
            if not has_files:
                vocab = None
                if (p / CONFIG_NAME).is_file():
                    vocab = GPT2Config.from_pretrained(p).vocab_size
                if vocab != 50257:
                    raise FileNotFoundError(
                        f"{p} has no tokenizer files (tokenizer.json or vocab.json + merges.txt) "
                        f"and its vocab_size is {vocab}, not GPT-2's 50257: pass a tokenizer "
                        "directory"
                    )
                return tok_cls.from_pretrained("gpt2", **kwargs)
        return tok_cls.from_pretrained(pretrained_model_name_or_path, **kwargs)


__all__ = [
    "AUTO_HEADS",
    "AutoTokenizer",
    "NotGPT2Error",
    "check_config_dict",
    "check_gpt2",
    "make_auto_class",
]
