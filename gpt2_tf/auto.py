"""transformers' TF Auto classes for the Keras GPT-2.

``TFAutoModelForCausalLM.from_pretrained(path)`` returns a :class:`gpt2_tf.GPT2LMHeadModel` for
any GPT-2 checkpoint (any of transformers' four formats) and refuses other architectures with
:class:`gpt2_core.auto.NotGPT2Error`. The names without ``TF`` are exported too.

Example:
    >>> from gpt2_tf import TFAutoModelForCausalLM, AutoTokenizer
    >>> model = TFAutoModelForCausalLM.from_pretrained("path/to/gpt2")          # doctest: +SKIP
"""

from __future__ import annotations

from gpt2_core.auto import AutoTokenizer, NotGPT2Error, make_auto_class
from gpt2_tf.modeling import MODEL_CLASSES

TFAutoModel = make_auto_class("AutoModel", "base", MODEL_CLASSES, prefix="TF")
TFAutoModelForCausalLM = make_auto_class("AutoModelForCausalLM", "lm", MODEL_CLASSES, prefix="TF")
TFAutoModelForSequenceClassification = make_auto_class(
    "AutoModelForSequenceClassification", "sequence_classification", MODEL_CLASSES, prefix="TF"
)
TFAutoModelForTokenClassification = make_auto_class(
    "AutoModelForTokenClassification", "token_classification", MODEL_CLASSES, prefix="TF"
)
TFAutoModelForQuestionAnswering = make_auto_class(
    "AutoModelForQuestionAnswering", "question_answering", MODEL_CLASSES, prefix="TF"
)
AutoModel = TFAutoModel
AutoModelForCausalLM = TFAutoModelForCausalLM
AutoModelForSequenceClassification = TFAutoModelForSequenceClassification
AutoModelForTokenClassification = TFAutoModelForTokenClassification
AutoModelForQuestionAnswering = TFAutoModelForQuestionAnswering

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "NotGPT2Error",
    "TFAutoModel",
    "TFAutoModelForCausalLM",
    "TFAutoModelForQuestionAnswering",
    "TFAutoModelForSequenceClassification",
    "TFAutoModelForTokenClassification",
]
