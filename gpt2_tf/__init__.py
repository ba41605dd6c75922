"""gpt2_tf: GPT-2 and its six heads as Keras 3 models on TensorFlow.

Keras must run on its TensorFlow backend: this package sets ``KERAS_BACKEND=tensorflow`` when
nothing chose a backend yet, and refuses to load if Keras was already imported with another
backend (a Keras process has exactly one backend).

Example:
    >>> from gpt2_tf import GPT2LMHeadModel
    >>> model = GPT2LMHeadModel.from_pretrained("gpt2")            # doctest: +SKIP
    >>> model.generate([[15496, 995]], max_new_tokens=8)            # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if "keras" in sys.modules:
    _backend = sys.modules["keras"].backend.backend()
else:
    import keras

    _backend = keras.backend.backend()
if _backend != "tensorflow":
    raise ImportError(
        f"gpt2_tf needs Keras on its TensorFlow backend, but Keras is running on {_backend!r}. "
        "Set KERAS_BACKEND=tensorflow before anything imports keras (or import gpt2_tf first)."
    )

from gpt2_tf.auto import (
    TFAutoModel,
    TFAutoModelForCausalLM,
    TFAutoModelForQuestionAnswering,
    TFAutoModelForSequenceClassification,
    TFAutoModelForTokenClassification,
)
from gpt2_tf.modeling import (
    GPT2MLP,
    GPT2Attention,
    GPT2Block,
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
    StaticCache,
)
from gpt2_tf.pipelines import pipeline
from gpt2_tf.tokenizer import TFGPT2Tokenizer
from gpt2_tf.weights import load_canonical, to_canonical

# names for people moving from transformers' TF classes
TFGPT2Model = GPT2Model
TFGPT2LMHeadModel = GPT2LMHeadModel
TFGPT2DoubleHeadsModel = GPT2DoubleHeadsModel
TFGPT2ForSequenceClassification = GPT2ForSequenceClassification
TFGPT2ForTokenClassification = GPT2ForTokenClassification
TFGPT2ForQuestionAnswering = GPT2ForQuestionAnswering

AutoModel = TFAutoModel
AutoModelForCausalLM = TFAutoModelForCausalLM
AutoModelForSequenceClassification = TFAutoModelForSequenceClassification
AutoModelForTokenClassification = TFAutoModelForTokenClassification
AutoModelForQuestionAnswering = TFAutoModelForQuestionAnswering
from gpt2_core.auto import AutoTokenizer  # noqa: E402

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "TFAutoModel",
    "TFAutoModelForCausalLM",
    "TFAutoModelForQuestionAnswering",
    "TFAutoModelForSequenceClassification",
    "TFAutoModelForTokenClassification",
    "GPT2Attention",
    "GPT2Block",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2MLP",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "StaticCache",
    "TFGPT2DoubleHeadsModel",
    "TFGPT2ForQuestionAnswering",
    "TFGPT2ForSequenceClassification",
    "TFGPT2ForTokenClassification",
    "TFGPT2LMHeadModel",
    "TFGPT2Tokenizer",
    "TFGPT2Model",
    "load_canonical",
    "pipeline",
    "to_canonical",
]
