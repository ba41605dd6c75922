"""Model outputs with transformers' field names, shared by every backend.

An output is an ordered dict of its non-None fields that also reads as attributes and
indexes as a tuple, like transformers' ``ModelOutput``:

    out = model(ids, labels=ids)
    out.loss, out["logits"], out[0]          # loss first when present, as in transformers
    loss, logits = out.to_tuple()[:2]

Backends return these classes (the JAX backend registers them as pytrees so they cross
``jit``). Field order is transformers' order; absent (None) fields are skipped in the tuple.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar


class ModelOutput(OrderedDict):
    """Base class: declare ``FIELDS`` in order; unknown keyword arguments raise TypeError."""

    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs and (isinstance(args[0], dict) or _is_pairs(args[0])):
            # dict-style construction (what tf.function / pytree rebuilds call): type(out)(pairs)
            kwargs = dict(args[0])
            args = ()
        if args:
            if len(args) > len(self.FIELDS):
                raise TypeError(
                    f"{type(self).__name__} takes at most {len(self.FIELDS)} positional fields"
                )
            for name, value in zip(self.FIELDS, args):
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__} got {name!r} twice")
                kwargs[name] = value
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        super().__init__((k, kwargs[k]) for k in self.FIELDS if kwargs.get(k) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).FIELDS:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).FIELDS:
            if value is None:
                self.pop(name, None)
            else:
                self[name] = value
                # keep declared order when a field is set late
                order = [k for k in self.FIELDS if k in self]
                for k in order:
                    self.move_to_end(k)
        else:
            super().__setattr__(name, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | slice):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def __iter__(self):  # iterating yields keys, as transformers' ModelOutput (a dict)
        return super().__iter__()

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self[k] for k in self.keys())

    def __reduce__(self):
        return (type(self), (), None, None, iter(self.items()))


def _is_pairs(x: Any) -> bool:
    """A list/tuple of (str, value) pairs, as ``dict(...)`` accepts."""
    return (
        isinstance(x, list | tuple)
        and bool(x)
        and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in x)
    )


def _output(name: str, fields: tuple[str, ...], doc: str) -> type[ModelOutput]:
    return type(name, (ModelOutput,), {"FIELDS": fields, "__doc__": doc, "__module__": __name__})


BaseModelOutputWithPastAndCrossAttentions = _output(
    "BaseModelOutputWithPastAndCrossAttentions",
    ("last_hidden_state", "past_key_values", "hidden_states", "attentions", "cross_attentions"),
    "Output of GPT2Model.",
)
CausalLMOutputWithCrossAttentions = _output(
    "CausalLMOutputWithCrossAttentions",
    ("loss", "logits", "past_key_values", "hidden_states", "attentions", "cross_attentions"),
    "Output of GPT2LMHeadModel.",
)
GPT2DoubleHeadsModelOutput = _output(
    "GPT2DoubleHeadsModelOutput",
    ("loss", "mc_loss", "logits", "mc_logits", "past_key_values", "hidden_states", "attentions"),
    "Output of GPT2DoubleHeadsModel (loss = LM loss, mc_loss = multiple-choice loss).",
)
SequenceClassifierOutputWithPast = _output(
    "SequenceClassifierOutputWithPast",
    ("loss", "logits", "past_key_values", "hidden_states", "attentions"),
    "Output of GPT2ForSequenceClassification.",
)
TokenClassifierOutput = _output(
    "TokenClassifierOutput",
    ("loss", "logits", "hidden_states", "attentions"),
    "Output of GPT2ForTokenClassification.",
)
QuestionAnsweringModelOutput = _output(
    "QuestionAnsweringModelOutput",
    ("loss", "start_logits", "end_logits", "hidden_states", "attentions"),
    "Output of GPT2ForQuestionAnswering.",
)

__all__ = [
    "BaseModelOutputWithPastAndCrossAttentions",
    "CausalLMOutputWithCrossAttentions",
    "GPT2DoubleHeadsModelOutput",
    "ModelOutput",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutputWithPast",
    "TokenClassifierOutput",
]
