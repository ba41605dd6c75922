"""gpt2_torch: GPT-2 and its six heads in PyTorch, loading any transformers checkpoint.

Example:
    >>> from gpt2_torch import GPT2LMHeadModel
    >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")      # any HF format
    >>> model.generate(ids, max_new_tokens=20, do_sample=True, top_p=0.9, seed=0)
"""

from gpt2_torch.auto import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)
from gpt2_torch.modeling import (
    GPT2MLP,
    MODEL_CLASSES,
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
from gpt2_torch.pipelines import pipeline

__all__ = [
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoTokenizer",
    "MODEL_CLASSES",
    "GPT2MLP",
    "GPT2Attention",
    "GPT2Block",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "StaticCache",
    "pipeline",
]
