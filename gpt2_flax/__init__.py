"""GPT-2 in JAX / Flax NNX: six models, compiled generation, sharding.

Example:
    >>> import jax.numpy as jnp
    >>> from gpt2_flax import GPT2LMHeadModel
    >>> model = GPT2LMHeadModel.from_pretrained("gpt2")          # any transformers checkpoint
    >>> model.generate(jnp.array([[464, 2068]]), max_new_tokens=8)

See docs/jax.md for jit, grad, an optax train step, split/merge and sharding.
"""

from gpt2_flax.auto import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    FlaxAutoModel,
    FlaxAutoModelForCausalLM,
    FlaxAutoModelForQuestionAnswering,
    FlaxAutoModelForSequenceClassification,
    FlaxAutoModelForTokenClassification,
)
from gpt2_flax.generation import GenerationMixin, bucket, trace_count
from gpt2_flax.modeling import (
    ACT2FN,
    GPT2MLP,
    MODEL_CLASSES,
    FlaxGPT2DoubleHeadsModel,
    FlaxGPT2ForQuestionAnswering,
    FlaxGPT2ForSequenceClassification,
    FlaxGPT2ForTokenClassification,
    FlaxGPT2LMHeadModel,
    FlaxGPT2Model,
    GPT2Attention,
    GPT2Block,
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
    GPT2SequenceSummary,
    StaticCache,
    checked,
    cross_entropy,
)
from gpt2_flax.pipelines import pipeline
from gpt2_flax.sharding import ShardingConfig, shard_batch, shard_model

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
    "ACT2FN",
    "MODEL_CLASSES",
    "FlaxGPT2DoubleHeadsModel",
    "FlaxGPT2ForQuestionAnswering",
    "FlaxGPT2ForSequenceClassification",
    "FlaxGPT2ForTokenClassification",
    "FlaxGPT2LMHeadModel",
    "FlaxGPT2Model",
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
    "GPT2SequenceSummary",
    "GenerationMixin",
    "ShardingConfig",
    "StaticCache",
    "bucket",
    "checked",
    "cross_entropy",
    "pipeline",
    "shard_batch",
    "shard_model",
    "trace_count",
]
