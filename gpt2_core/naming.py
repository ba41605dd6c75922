"""The canonical weight schema: names, shapes, tied keys and legacy buffers.

The canonical state dict is a ``dict[str, np.ndarray]`` with Hugging Face PyTorch names and
layouts, exactly as ``GPT2*.state_dict()`` in transformers:

* Base-model keys (``wte.weight``, ``h.0.attn.c_attn.weight``, ``ln_f.bias`` ...) carry the
  ``transformer.`` prefix in every head model and no prefix in ``GPT2Model``.
* GPT-2's ``Conv1D`` weights (``c_attn``, ``c_proj``, ``c_fc``, ``q_attn``) are **(in, out)**;
  the ``nn.Linear`` heads (``lm_head``, ``score``, ``classifier``, ``qa_outputs``,
  ``multiple_choice_head.summary``) are **(out, in)**.
* ``lm_head.weight`` is tied to ``transformer.wte.weight`` when ``tie_word_embeddings``; a
  checkpoint may omit it.
* ``h.{i}.attn.bias`` / ``h.{i}.attn.masked_bias`` (and the cross-attention twins) are legacy
  buffers (causal-mask tril and -1e4), not weights: readers drop them and say so.

Every backend maps its variables to and from this schema; conversion goes through it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gpt2_core.config import GPT2Config

PREFIX = "transformer."

#: head name -> transformers class name. The same class names exist in every backend.
HEADS: dict[str, str] = {
    "base": "GPT2Model",
    "lm": "GPT2LMHeadModel",
    "double_heads": "GPT2DoubleHeadsModel",
    "sequence_classification": "GPT2ForSequenceClassification",
    "token_classification": "GPT2ForTokenClassification",
    "question_answering": "GPT2ForQuestionAnswering",
}
ARCHITECTURES: dict[str, str] = {v: k for k, v in HEADS.items()}
# transformers' TF/Flax class names map to the same heads
ARCHITECTURES.update({"TF" + v: k for k, v in HEADS.items()})
ARCHITECTURES.update({"Flax" + v: k for k, v in HEADS.items()})

#: leaf names of GPT-2's Conv1D weights, stored (in, out).
CONV1D_MODULES = (
    "attn.c_attn",
    "attn.c_proj",
    "mlp.c_fc",
    "mlp.c_proj",
    "crossattention.c_attn",
    "crossattention.q_attn",
    "crossattention.c_proj",
)
#: head Linear weights, stored (out, in) as nn.Linear.
LINEAR_HEAD_WEIGHTS = (
    "lm_head.weight",
    "score.weight",
    "classifier.weight",
    "qa_outputs.weight",
    "multiple_choice_head.summary.weight",
)

_BUFFER_RE = re.compile(r"(^|\.)h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")
_CONV1D_RE = re.compile(
    r"(^|\.)h\.\d+\.(" + "|".join(re.escape(m) for m in CONV1D_MODULES) + r")\.weight$"
)


def head_of(head_or_class: str) -> str:
    """Normalise ``"lm"`` / ``"GPT2LMHeadModel"`` / ``"TFGPT2LMHeadModel"`` to a head name."""
    if head_or_class in HEADS:
        return head_or_class
    if head_or_class in ARCHITECTURES:
        return ARCHITECTURES[head_or_class]
    raise ValueError(
        f"unknown GPT-2 head {head_or_class!r}; use one of {list(HEADS)} or {list(HEADS.values())}"
    )


def head_of_model(model: Any) -> str:
    """The head of a model object of any backend, from its class (or a parent class) name:
    ``GPT2LMHeadModel`` -> ``"lm"``. The six class names are the same in every backend."""
    for cls in type(model).__mro__:
        if cls.__name__ in ARCHITECTURES:
            return ARCHITECTURES[cls.__name__]
    raise TypeError(
        f"{type(model).__name__} is not one of the GPT-2 classes {list(HEADS.values())}"
    )


def is_transposed(key: str) -> bool:
    """True for a canonical key stored (out, in) (an ``nn.Linear`` head, :data:`LINEAR_HEAD_WEIGHTS`):
    the backends whose dense kernels are (in, out) (Keras, Flax) transpose exactly these."""
    return key in LINEAR_HEAD_WEIGHTS


def is_buffer_key(key: str) -> bool:
    """True for the legacy non-weight buffers ``h.N.attn.bias`` / ``h.N.attn.masked_bias``."""
    return bool(_BUFFER_RE.search(key))


def is_conv1d_weight(key: str) -> bool:
    """True for Conv1D weights (canonical layout (in, out))."""
    return bool(_CONV1D_RE.search(key))


def base_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Shapes of the base model's parameters, without prefix, in state-dict order."""
    V, P, E, F = config.vocab_size, config.n_positions, config.n_embd, config.inner_dim
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, E), "wpe.weight": (P, E)}
    for i in range(config.n_layer):
        b = f"h.{i}."
        shapes.update(
            {
                b + "ln_1.weight": (E,),
                b + "ln_1.bias": (E,),
                b + "attn.c_attn.weight": (E, 3 * E),
                b + "attn.c_attn.bias": (3 * E,),
                b + "attn.c_proj.weight": (E, E),
                b + "attn.c_proj.bias": (E,),
            }
        )
        if config.add_cross_attention:
            shapes.update(
                {
                    b + "crossattention.c_attn.weight": (E, 2 * E),
                    b + "crossattention.c_attn.bias": (2 * E,),
                    b + "crossattention.q_attn.weight": (E, E),
                    b + "crossattention.q_attn.bias": (E,),
                    b + "crossattention.c_proj.weight": (E, E),
                    b + "crossattention.c_proj.bias": (E,),
                    b + "ln_cross_attn.weight": (E,),
                    b + "ln_cross_attn.bias": (E,),
                }
            )
        shapes.update(
            {
                b + "ln_2.weight": (E,),
                b + "ln_2.bias": (E,),
                b + "mlp.c_fc.weight": (E, F),
                b + "mlp.c_fc.bias": (F,),
                b + "mlp.c_proj.weight": (F, E),
                b + "mlp.c_proj.bias": (E,),
            }
        )
    shapes.update({"ln_f.weight": (E,), "ln_f.bias": (E,)})
    return shapes


def summary_out_features(config: GPT2Config) -> int:
    """Output width of ``multiple_choice_head.summary`` (transformers forces num_labels=1)."""
    # GPT2DoubleHeadsModel sets config.num_labels = 1 before building the summary
    if config.summary_proj_to_labels:
        return 1
    return config.n_embd


def head_shapes(config: GPT2Config, head: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the head's own parameters (keys without ``transformer.``)."""
    head = head_of(head)
    V, E, N = config.vocab_size, config.n_embd, config.num_labels
    if head == "base":
        return {}
    if head == "lm":
        return {"lm_head.weight": (V, E)}
    if head == "double_heads":
        shapes = {"lm_head.weight": (V, E)}
        if config.summary_use_proj:
            n = summary_out_features(config)
            shapes.update(
                {
                    "multiple_choice_head.summary.weight": (n, E),
                    "multiple_choice_head.summary.bias": (n,),
                }
            )
        return shapes
    if head == "sequence_classification":
        return {"score.weight": (N, E)}
    if head == "token_classification":
        return {"classifier.weight": (N, E), "classifier.bias": (N,)}
    if head == "question_answering":
        return {"qa_outputs.weight": (2, E), "qa_outputs.bias": (2,)}
    raise AssertionError(head)


def expected_shapes(config: GPT2Config, head: str) -> dict[str, tuple[int, ...]]:
    """Every canonical key of ``head``'s state dict and its shape (tied keys included)."""
    head = head_of(head)
    prefix = "" if head == "base" else PREFIX
    shapes = {prefix + k: v for k, v in base_shapes(config).items()}
    shapes.update(head_shapes(config, head))
    return shapes


def tied_keys(config: GPT2Config, head: str) -> dict[str, str]:
    """``{tied_key: source_key}``: keys that share storage with another and may be omitted."""
    head = head_of(head)
    if head in ("lm", "double_heads") and config.tie_word_embeddings:
        return {"lm_head.weight": PREFIX + "wte.weight"}
    return {}


def count_parameters(
    config: GPT2Config, head: str = "base", exclude_embeddings: bool = False
) -> int:
    """Parameter count of ``head`` with tied weights counted once."""
    shapes = expected_shapes(config, head)
    for k in tied_keys(config, head):
        shapes.pop(k)
    if exclude_embeddings:
        shapes = {k: v for k, v in shapes.items() if not k.endswith(("wte.weight", "wpe.weight"))}
    return sum(math.prod(s) for s in shapes.values())


# ---------------------------------------------------------------------------- size limits
class ResourceLimitError(ValueError):
    """A file declares more tensors or larger ones than its config.json allows: refused before
    any data is read or memory allocated."""


@dataclass(frozen=True)
class TensorLimits:
    """Upper bounds on what a checkpoint of ``config`` can hold, computed in O(1) (a config with
    ``n_layer`` 10**6 must not build a dict of 12 million expected keys first).

    ``check(source, name, shape)`` is called by every reader before a tensor's data is read.
    """

    max_numel: int
    max_tensors: int

    @classmethod
    def from_config(cls, config: GPT2Config) -> TensorLimits:
        V, P, E, F = config.vocab_size, config.n_positions, config.n_embd, config.inner_dim
        N = max(config.num_labels, 2)
        max_numel = max(V * E, P * E, 3 * E * E, E * F, N * E, P * P)  # P*P: legacy attn.bias
        per_layer = 12 + (8 if config.add_cross_attention else 0) + 2  # + 2 legacy buffers
        # x2: the same weight may be stored with and without ``transformer.``
        return cls(max_numel=max_numel, max_tensors=2 * (per_layer * config.n_layer + 16))

    def check(self, source: str, name: str, shape: tuple[int, ...] | list[int]) -> None:
        numel = math.prod(int(s) for s in shape)
        if numel > self.max_numel:
            raise ResourceLimitError(
                f"{source}: tensor {name!r} declares shape {tuple(shape)} ({numel} elements), "
                f"larger than any weight of its config ({self.max_numel}); refused before reading"
            )

    def check_count(self, source: str, n: int) -> None:
        if n > self.max_tensors:
            raise ResourceLimitError(
                f"{source}: {n} tensors, more than its config allows "
                f"({self.max_tensors}); refused before reading"
            )


def check_config_fits(config: GPT2Config, weight_bytes: int, source: str) -> None:
    """Refuse a config that needs far more weights than the checkpoint holds: e.g. ``n_layer``
    10**6 next to a small file, which would otherwise allocate gigabytes of expected shapes
    before failing. The bound is loose on purpose (8x, at 2 bytes a parameter, the smallest
    float; head weights not counted), so a partial checkpoint read with ``strict=False`` still
    gets its report of missing keys, whose cost stays proportional to the file."""
    V, P, E, F, L = (
        config.vocab_size,
        config.n_positions,
        config.n_embd,
        config.inner_dim,
        config.n_layer,
    )
    per_layer = 4 * E + (3 * E * E + 3 * E) + (E * E + E) + (E * F + F) + (F * E + E)
    params = V * E + P * E + 2 * E + L * per_layer
    if 2 * params > 8 * weight_bytes + (1 << 20):
        raise ResourceLimitError(
            f"{source}: config.json declares {params} parameters (n_layer={L}, n_embd={E}, "
            f"vocab_size={V}) but the weights hold only {weight_bytes} bytes"
        )


def is_float_dtype(dtype: Any) -> bool:
    """True for floating dtypes of numpy, ml_dtypes (bfloat16), torch, tf or jax."""
    name = getattr(dtype, "name", None) or str(dtype)
    return "float" in str(name)


# ---------------------------------------------------------------------------- load reports
class CheckpointError(ValueError):
    """A checkpoint does not match the model: the message lists keys by name."""


@dataclass
class LoadReport:
    """What normalising a state dict found. ``ok`` when nothing is missing/unexpected/mis-shaped."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored_buffers: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    #: head parameters absent from a base checkpoint, left for the model to initialise
    newly_initialized: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        where = f" in {self.source}" if self.source else ""
        parts = []
        if self.missing:
            parts.append(f"missing keys{where}: {_short(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys{where}: {_short(self.unexpected)}")
        if self.mismatched:
            mm = ", ".join(f"{k} (expected {e}, got {g})" for k, e, g in self.mismatched[:10])
            more = f" and {len(self.mismatched) - 10} more" if len(self.mismatched) > 10 else ""
            parts.append(f"mis-shaped keys{where}: {mm}{more}")
        if self.ignored_buffers:
            parts.append(
                f"ignored {len(self.ignored_buffers)} legacy buffers (attn.bias/masked_bias)"
            )
        if self.tied:
            parts.append(f"tied weights (not stored separately): {', '.join(self.tied)}")
        if self.newly_initialized:
            parts.append(f"newly initialised head weights: {', '.join(self.newly_initialized)}")
        return "; ".join(parts) if parts else "all weights matched"

    def raise_if_error(self) -> None:
        if not self.ok:
            raise CheckpointError(self.summary())


def _short(keys: list[str], n: int = 12) -> str:
    s = ", ".join(keys[:n])
    return s + (f" and {len(keys) - n} more" if len(keys) > n else "")


def strip_base_prefix(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def normalize_state_dict(
    state_dict: Mapping[str, Any],
    config: GPT2Config,
    head: str,
    *,
    allow_new_head: bool = True,
    source: str = "",
) -> tuple[dict[str, Any], LoadReport]:
    """Map any HF-style GPT-2 state dict onto ``head``'s canonical keys.

    Accepts keys with or without ``transformer.``, drops legacy buffers, fills tied keys from
    their source, and checks every shape against the config. Head weights missing from a
    base-model checkpoint are listed in ``newly_initialized`` (``allow_new_head``) instead of
    ``missing``. Head weights of another head (e.g. ``score.weight`` loaded into an LM model)
    are unexpected. Values are returned as given (no copy, no cast).

    Returns the canonical dict (tied keys present) and a :class:`LoadReport`; the caller
    decides whether to :meth:`LoadReport.raise_if_error`.
    """
    head = head_of(head)
    report = LoadReport(source=source)
    expected = expected_shapes(config, head)
    ties = tied_keys(config, head)
    own_head = set(head_shapes(config, head))
    prefix = "" if head == "base" else PREFIX
    out: dict[str, Any] = {}
    misshaped: set[str] = set()
    for key, value in state_dict.items():
        if is_buffer_key(key):
            report.ignored_buffers.append(key)
            continue
        bare = strip_base_prefix(key)
        target = bare if bare in own_head else prefix + bare
        if target not in expected:
            report.unexpected.append(key)
            continue
        if target in out:
            # the same weight given twice (with and without prefix): must agree
            if not np.array_equal(np.asarray(out[target]), np.asarray(value)):
                raise CheckpointError(f"{key} appears twice with different values{_in(source)}")
            continue
        dtype = getattr(value, "dtype", None)
        if dtype is not None and not is_float_dtype(dtype):
            raise CheckpointError(
                f"{key}{_in(source)} has dtype {dtype}; GPT-2 weights are "
                "floating point (an integer or string tensor would compute garbage)"
            )
        shape = tuple(getattr(value, "shape", ()))
        if shape != expected[target]:
            report.mismatched.append((key, expected[target], shape))
            misshaped.add(target)
            continue
        out[target] = value
    for tied, src in ties.items():
        if tied in out:
            if (
                src in out
                and out[tied] is not out[src]  # (the same array: no need to read it)
                and not np.array_equal(np.asarray(out[tied]), np.asarray(out[src]))
            ):
                # an untied checkpoint loaded with tie_word_embeddings=True would silently lose
                # its head: refuse instead
                raise CheckpointError(
                    f"{tied} differs from {src}{_in(source)} but config.tie_word_embeddings=True; "
                    "load with tie_word_embeddings=False to keep the separate head"
                )
        elif src in out:
            out[tied] = out[src]
            report.tied.append(tied)
    for key in expected:
        if key in out or key in misshaped:  # a mis-shaped key is reported once, as such
            continue
        if key in own_head and allow_new_head:
            report.newly_initialized.append(key)
        else:
            report.missing.append(key)
    return out, report


def _in(source: str) -> str:
    return f" in {source}" if source else ""


def to_head_state_dict(state_dict: Mapping[str, Any], head: str) -> dict[str, Any]:
    """Re-key a canonical dict for ``head`` (adds/strips ``transformer.``), drops other heads."""
    head = head_of(head)
    out: dict[str, Any] = {}
    for k, v in state_dict.items():
        bare = strip_base_prefix(k)
        if bare.split(".")[0] in ("wte", "wpe", "h", "ln_f"):
            out[bare if head == "base" else PREFIX + bare] = v
    return out


def drop_tied(state_dict: Mapping[str, Any], config: GPT2Config, head: str) -> dict[str, Any]:
    """The dict to write to disk: tied copies removed, as transformers' save_pretrained does."""
    ties = tied_keys(config, head)
    return {k: v for k, v in state_dict.items() if k not in ties}
