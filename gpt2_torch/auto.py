"""transformers' Auto classes for the PyTorch GPT-2.

``AutoModelForCausalLM.from_pretrained(path)`` returns a :class:`gpt2_torch.GPT2LMHeadModel` for
any GPT-2 checkpoint (safetensors, pytorch_model.bin, tf_model.h5, flax_model.msgpack) and refuses
other architectures with :class:`gpt2_core.auto.NotGPT2Error`, so code written for transformers
changes only its import.

Example:
    >>> from gpt2_torch import AutoModelForCausalLM, AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("gpt2")
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/gpt2")            # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/gpt2", attn_implementation="eager")
    ... # doctest: +SKIP
"""

from __future__ import annotations

from gpt2_core.auto import AutoTokenizer, NotGPT2Error, make_auto_class
from gpt2_torch.modeling import MODEL_CLASSES

AutoModel = make_auto_class("AutoModel", "base", MODEL_CLASSES)
AutoModelForCausalLM = make_auto_class("AutoModelForCausalLM", "lm", MODEL_CLASSES)
AutoModelForSequenceClassification = make_auto_class(
    "AutoModelForSequenceClassification", "sequence_classification", MODEL_CLASSES
)
AutoModelForTokenClassification = make_auto_class(
    "AutoModelForTokenClassification", "token_classification", MODEL_CLASSES
)
AutoModelForQuestionAnswering = make_auto_class(
    "AutoModelForQuestionAnswering", "question_answering", MODEL_CLASSES
)

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "NotGPT2Error",
]
