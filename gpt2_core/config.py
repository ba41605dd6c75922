"""GPT2Config: the one configuration object every backend reads.

Field names, defaults and JSON layout are those of Hugging Face transformers' ``GPT2Config``
(4.57.6), so an HF ``config.json`` loads here and what we write loads in transformers. Every
backend derives its behaviour (activation, epsilon, attention flags, label count) from this
object and never hard-codes it: hard-coded behaviour is how HF's TF and PyTorch GPT-2 drifted
apart (transformers#13666).

Keys we do not know (``n_ctx``, ``task_specific_params``, ``architectures``,
``transformers_version`` ...) are kept in :attr:`GPT2Config.extra` and written back unchanged,
so a round trip loses nothing.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpt2_core.io_utils import atomic_write_text, load_json_file

CONFIG_NAME = "config.json"
MODEL_TYPE = "gpt2"

#: Activation names accepted in ``activation_function`` (HF ``ACT2FN`` keys that make sense for
#: GPT-2). Every backend implements each of them; ``gpt2_core.activations`` has the numpy
#: reference used by the tests.
ACTIVATIONS = frozenset(
    {
        "gelu_new",  # tanh approximation, GPT-2's own
        "gelu_pytorch_tanh",  # the same function, HF's fused name
        "gelu_fast",  # another spelling of the tanh approximation
        "gelu",  # exact erf GELU
        "quick_gelu",  # x * sigmoid(1.702 x)
        "relu",
        "silu",
        "swish",
        "tanh",
        "sigmoid",
        "linear",
    }
)
SUMMARY_TYPES = frozenset({"last", "first", "mean", "cls_index"})
#: ``attn_implementation`` values. Which ones a backend runs (and on which devices) is the
#: backend's call: torch eager / sdpa / flash_attention_2, TF eager, Flax eager / sdpa / cudnn.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "cudnn")
PROBLEM_TYPES = frozenset(
    {"regression", "single_label_classification", "multi_label_classification"}
)

# field name -> HF default. Order is the order of HF's docstring; it is also the order of to_dict.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "summary_activation": None,
    "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1,
    "scale_attn_weights": True,
    "use_cache": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "pad_token_id": None,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "problem_type": None,
    "classifier_dropout": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
}

#: HF ``attribute_map``: alias -> field.
ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

_POSITIVE_INTS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
_PROBABILITIES = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")
_BOOLS = (
    "summary_use_proj",
    "summary_proj_to_labels",
    "scale_attn_weights",
    "use_cache",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "add_cross_attention",
    "tie_word_embeddings",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class GPT2Config:
    """Configuration of a GPT-2 model, with transformers' field names and defaults.

    Args:
        vocab_size: number of token ids (50257 for GPT-2's tokenizer).
        n_positions: longest sequence (size of the position table). Alias ``max_position_embeddings``.
        n_embd: hidden size. Alias ``hidden_size``.
        n_layer: number of blocks. Alias ``num_hidden_layers``.
        n_head: attention heads; must divide ``n_embd``. Alias ``num_attention_heads``.
        n_inner: MLP width; ``None`` means ``4 * n_embd``.
        activation_function: one of :data:`ACTIVATIONS` (default ``"gelu_new"``, tanh GELU).
        resid_pdrop, embd_pdrop, attn_pdrop: dropout probabilities.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: std of the normal init.
        summary_*: the multiple-choice head of ``GPT2DoubleHeadsModel``.
        scale_attn_weights: divide scores by sqrt(head_dim).
        scale_attn_by_inverse_layer_idx: further divide scores by ``layer_idx + 1``.
        reorder_and_upcast_attn: compute QK^T and softmax in float32.
        add_cross_attention: add cross-attention blocks (encoder-decoder use).
        attn_implementation: None (the backend's default) or one of
            :data:`ATTN_IMPLEMENTATIONS`, as transformers' ``attn_implementation``; a backend
            refuses, with an error, one it cannot run on the device or for this config. Kept in
            :attr:`extra`, not written to config.json (transformers does not save it either).
        tie_word_embeddings: the LM head shares ``wte``.
        num_labels / id2label / label2id / problem_type / classifier_dropout: classification heads.
        **kwargs: any other key of an HF config.json; kept in :attr:`extra` and written back.

    Raises:
        ValueError: naming the field, for any invalid value.

    Example:
        >>> from gpt2_core import GPT2Config
        >>> cfg = GPT2Config(n_layer=2, n_embd=36, n_head=3, vocab_size=257, n_positions=64)
        >>> cfg.hidden_size, cfg.head_dim, cfg.inner_dim
        (36, 12, 144)
        >>> GPT2Config.from_pretrained("gpt2").num_parameters()
        124439808
    """

    # declared for type checkers; values are set in __init__
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None
    activation_function: str
    layer_norm_epsilon: float
    pad_token_id: int | None

    def __init__(self, **kwargs: Any) -> None:
        kwargs = dict(kwargs)
        for alias, field in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if field in kwargs and kwargs[field] != value:
                    raise ValueError(
                        f"GPT2Config: {alias}={value!r} conflicts with {field}={kwargs[field]!r}"
                    )
                kwargs[field] = value
        for name, default in _DEFAULTS.items():
            object.__setattr__(self, name, copy.deepcopy(kwargs.pop(name, default)))
        model_type = kwargs.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(
                f"GPT2Config: this is a {model_type!r} config (model_type "
                f"{model_type!r}); gpt2-zoo runs GPT-2 only (model_type 'gpt2')"
            )
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        self.id2label, self.label2id = _label_maps(id2label, label2id, num_labels)
        #: unknown keys from the source config.json (``n_ctx``, ``architectures`` ...), kept as-is.
        self.extra: dict[str, Any] = kwargs
        self.validate()

    # ------------------------------------------------------------------ aliases and derived sizes
    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: aliases, then extras (HF configs expose them too)
        if name in ALIASES:
            return getattr(self, ALIASES[name])
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"GPT2Config has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, ALIASES.get(name, name), value)

    @property
    def attn_implementation(self) -> str | None:
        return self.extra.get("attn_implementation")

    @attn_implementation.setter
    def attn_implementation(self, value: str | None) -> None:
        _check_attn_implementation(value)
        if value is None:
            self.extra.pop("attn_implementation", None)
        else:
            self.extra["attn_implementation"] = value

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not _is_int(n) or n < 1:
            raise ValueError(f"GPT2Config: num_labels must be a positive int, got {n!r}")
        if n != len(self.id2label):
            self.id2label, self.label2id = _label_maps(None, None, n)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def use_return_dict(self) -> bool:
        return bool(self.return_dict)

    @property
    def classifier_dropout_prob(self) -> float:
        """Dropout before the token classifier: ``classifier_dropout``, then ``hidden_dropout``, then 0.1."""
        if self.classifier_dropout is not None:
            return float(self.classifier_dropout)
        return float(self.extra.get("hidden_dropout", 0.1) or 0.1)

    @property
    def summary_last_dropout(self) -> float:
        return float(self.extra.get("summary_last_dropout", 0.0))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the first bad one."""
        for name in _POSITIVE_INTS:
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise ValueError(f"GPT2Config: {name} must be a positive int, got {v!r}")
        if self.n_inner is not None and (not _is_int(self.n_inner) or self.n_inner <= 0):
            raise ValueError(
                f"GPT2Config: n_inner must be None or a positive int, got {self.n_inner!r}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPT2Config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config: unknown activation_function {self.activation_function!r}; "
                f"choose one of {sorted(ACTIVATIONS)}"
            )
        if self.summary_activation is not None and self.summary_activation not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config: unknown summary_activation {self.summary_activation!r}; "
                f"use None or one of {sorted(ACTIVATIONS)}"
            )
        probs = [*_PROBABILITIES, "classifier_dropout"]
        for name in probs:
            v = getattr(self, name)
            if name == "classifier_dropout" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"GPT2Config: {name} must be a probability in [0, 1], got {v!r}")
        eps = self.layer_norm_epsilon
        if (
            isinstance(eps, bool)
            or not isinstance(eps, int | float)
            or not eps > 0
            or math.isinf(eps)
        ):
            raise ValueError(
                f"GPT2Config: layer_norm_epsilon must be a finite number > 0, got {eps!r}"
            )
        ir = self.initializer_range
        if isinstance(ir, bool) or not isinstance(ir, int | float) or not ir >= 0 or math.isinf(ir):
            raise ValueError(
                f"GPT2Config: initializer_range must be a finite number >= 0, got {ir!r}"
            )
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPT2Config: {name} must be a bool, got {getattr(self, name)!r}")
        if self.summary_type not in SUMMARY_TYPES:
            raise ValueError(
                f"GPT2Config: summary_type must be one of {sorted(SUMMARY_TYPES)}, "
                f"got {self.summary_type!r} ('attn' is not implemented, as in transformers)"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"GPT2Config: problem_type must be None or one of {sorted(PROBLEM_TYPES)}, "
                f"got {self.problem_type!r}"
            )
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 0):
                raise ValueError(f"GPT2Config: {name} must be None or an int >= 0, got {v!r}")
        _check_attn_implementation(self.attn_implementation)
        eos = self.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(_is_int(e) and e >= 0 for e in eos_list):
            raise ValueError(
                f"GPT2Config: eos_token_id must be None, an int >= 0 or a list of them, got {eos!r}"
            )

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """Every field (HF names), the label maps with string keys as in config.json, and extras."""
        out: dict[str, Any] = {"model_type": MODEL_TYPE}
        for name in _DEFAULTS:
            out[name] = copy.deepcopy(getattr(self, name))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        for k, v in self.extra.items():
            out.setdefault(k, copy.deepcopy(v))
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> GPT2Config:
        """Build from a dict as found in config.json; ``overrides`` win over ``d``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"GPT2Config.from_dict expects a mapping, got {type(d).__name__}")
        merged = dict(d)
        for k, v in overrides.items():
            field = ALIASES.get(k, k)
            if field != k:
                merged.pop(k, None)
            merged[field] = v
        if "num_labels" in overrides and "id2label" not in overrides:
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        return cls(**merged)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GPT2Config:
        path = Path(path)
        d = load_json_file(path, "config file")
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (atomically) into ``save_directory``; returns its path."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        d = self.to_dict()
        d.pop("attn_implementation", None)  # a runtime choice, not part of the checkpoint
        atomic_write_text(path, json.dumps(d, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> GPT2Config:
        """Load from a directory (its config.json), a config.json path, a preset or a hub id.

        Presets (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``distilgpt2`` and their
        ``openai-community/`` / ``distilbert/`` ids) load offline. Other ids go through
        :mod:`gpt2_core.hub`.
        """
        from gpt2_core import hub, presets

        p = Path(name_or_path)
        if p.is_file():
            cfg_path = p
        elif p.is_dir():
            cfg_path = p / CONFIG_NAME
            if not cfg_path.is_file():
                raise FileNotFoundError(f"{p} has no {CONFIG_NAME}")
        elif presets.is_preset(str(name_or_path)):
            return cls.from_dict(presets.preset_config_dict(str(name_or_path)), **overrides)
        else:
            cfg_path = hub.resolve_file(str(name_or_path), CONFIG_NAME)
        cfg = cls.from_json_file(cfg_path)
        return cls.from_dict(cfg.to_dict(), **overrides) if overrides else cfg

    # ------------------------------------------------------------------ misc
    def num_parameters(self, head: str = "base", exclude_embeddings: bool = False) -> int:
        """Exact parameter count of the model with ``head`` (tied weights counted once).

        ``head`` is one of :data:`gpt2_core.naming.HEADS` or a class name such as
        ``"GPT2LMHeadModel"``.
        """
        from gpt2_core import naming

        return naming.count_parameters(self, head, exclude_embeddings=exclude_embeddings)

    def copy(self, **changes: Any) -> GPT2Config:
        return GPT2Config.from_dict(self.to_dict(), **changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Config) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        # consistent with __eq__ (jit caches hash static attributes such as the config); do
        # not mutate a config while it is a key somewhere
        return hash(self.to_json_string())

    def __repr__(self) -> str:
        diff = {k: getattr(self, k) for k, v in _DEFAULTS.items() if getattr(self, k) != v}
        inner = ", ".join(f"{k}={v!r}" for k, v in diff.items())
        return f"GPT2Config({inner})"


def _check_attn_implementation(value: Any) -> None:
    if value is not None and value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"GPT2Config: attn_implementation must be None or one of "
            f"{list(ATTN_IMPLEMENTATIONS)}, got {value!r}"
        )


def _label_maps(
    id2label: Mapping[Any, str] | None, label2id: Mapping[str, Any] | None, num_labels: Any
) -> tuple[dict[int, str], dict[str, int]]:
    """Normalise HF's (id2label, label2id, num_labels) triple; raise on inconsistency."""
    if id2label is None:
        if label2id is not None:
            if not isinstance(label2id, Mapping):
                raise ValueError("GPT2Config: label2id must be a mapping")
            try:
                id2label = {int(v): str(k) for k, v in label2id.items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"GPT2Config: label2id values must be ints: {e}") from e
        else:
            n = 2 if num_labels is None else num_labels
            if not _is_int(n) or n < 1:
                raise ValueError(f"GPT2Config: num_labels must be a positive int, got {n!r}")
            id2label = {i: f"LABEL_{i}" for i in range(n)}
    if not isinstance(id2label, Mapping):
        raise ValueError("GPT2Config: id2label must be a mapping of id -> label")
    try:
        ids = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"GPT2Config: id2label keys must be ints (or int strings): {e}") from e
    if sorted(ids) != list(range(len(ids))) or not ids:
        raise ValueError(f"GPT2Config: id2label keys must be 0..n-1 with n >= 1, got {sorted(ids)}")
    if not all(isinstance(v, str) for v in ids.values()):
        raise ValueError("GPT2Config: id2label values must be strings")
    if num_labels is not None and num_labels != len(ids):
        raise ValueError(
            f"GPT2Config: num_labels={num_labels!r} disagrees with id2label ({len(ids)} labels)"
        )
    expected = {v: k for k, v in ids.items()}
    if len(expected) != len(ids):
        raise ValueError("GPT2Config: id2label has duplicate label names")
    if label2id is None:
        label2id = expected
    else:
        if not isinstance(label2id, Mapping):
            raise ValueError("GPT2Config: label2id must be a mapping")
        try:
            label2id = {str(k): int(v) for k, v in label2id.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"GPT2Config: label2id values must be ints: {e}") from e
        if label2id != expected:
            raise ValueError(
                f"GPT2Config: label2id {label2id} is not the inverse of id2label {ids}"
            )
    return dict(sorted(ids.items())), label2id
