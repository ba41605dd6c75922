"""gpt2_core: the framework-neutral core of gpt2-zoo.

Config, canonical weight naming, checkpoint I/O for every transformers format, hub resolution,
generation settings and the GPT-2 tokenizers. Imports numpy and small pure-Python packages
only: never torch, tensorflow or jax.
"""

from gpt2_core.config import GPT2Config

__version__ = "0.1.0"

__all__ = ["GPT2Config", "__version__"]


def __getattr__(name: str):
    # tokenizers are imported lazily: `import gpt2_core` stays cheap
    if name in ("GPT2Tokenizer", "GPT2TokenizerFast"):
        from gpt2_core import tokenizer, tokenizer_fast

        return {
            "GPT2Tokenizer": getattr(tokenizer, "GPT2Tokenizer", None),
            "GPT2TokenizerFast": getattr(tokenizer_fast, "GPT2TokenizerFast", None),
        }[name]
    if name == "pipeline":  # dispatches to a backend lazily, when a pipeline is built
        from gpt2_core.pipelines import pipeline

        return pipeline
    if name == "AutoTokenizer":
        from gpt2_core.auto import AutoTokenizer

        return AutoTokenizer
    if name == "GenerationConfig":
        from gpt2_core.generation_config import GenerationConfig

        return GenerationConfig
    raise AttributeError(f"module 'gpt2_core' has no attribute {name!r}")
