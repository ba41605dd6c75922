"""transformers' Flax Auto classes for the NNX GPT-2.

``FlaxAutoModelForCausalLM.from_pretrained(path)`` returns a :class:`gpt2_flax.GPT2LMHeadModel`
for any GPT-2 checkpoint (any of transformers' four formats) and refuses other architectures with
:class:`gpt2_core.auto.NotGPT2Error`. The names without ``Flax`` are exported too.
``from_config(config, seed=0)`` builds a randomly initialised model.

Example:
    >>> from gpt2_flax import FlaxAutoModelForCausalLM, AutoTokenizer
    >>> model = FlaxAutoModelForCausalLM.from_pretrained("path/to/gpt2")        # doctest: +SKIP
"""

from __future__ import annotations

from gpt2_core.auto import AutoTokenizer, NotGPT2Error, make_auto_class
from gpt2_flax.modeling import MODEL_CLASSES


def _build(model_cls, config, **kwargs):
    return model_cls.from_config(config, **kwargs)


def _auto(name: str, head: str) -> type:
    return make_auto_class(name, head, MODEL_CLASSES, prefix="Flax", build=_build)


FlaxAutoModel = _auto("AutoModel", "base")
FlaxAutoModelForCausalLM = _auto("AutoModelForCausalLM", "lm")
FlaxAutoModelForSequenceClassification = _auto(
    "AutoModelForSequenceClassification", "sequence_classification"
)
FlaxAutoModelForTokenClassification = _auto(
    "AutoModelForTokenClassification", "token_classification"
)
FlaxAutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering", "question_answering")
AutoModel = FlaxAutoModel
AutoModelForCausalLM = FlaxAutoModelForCausalLM
AutoModelForSequenceClassification = FlaxAutoModelForSequenceClassification
AutoModelForTokenClassification = FlaxAutoModelForTokenClassification
AutoModelForQuestionAnswering = FlaxAutoModelForQuestionAnswering

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "FlaxAutoModel",
    "FlaxAutoModelForCausalLM",
    "FlaxAutoModelForQuestionAnswering",
    "FlaxAutoModelForSequenceClassification",
    "FlaxAutoModelForTokenClassification",
    "NotGPT2Error",
]
