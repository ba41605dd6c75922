"""transformers-style pipelines over any backend: ``pipeline("text-generation", model=...)``.

The tasks are the ones GPT-2 has heads for:

==========================  =============================  =====================================
task (aliases)              head                           output (as transformers 4.57.6)
==========================  =============================  =====================================
``text-generation``         GPT2LMHeadModel                ``[{"generated_text": str}]``
``text-classification``     GPT2ForSequenceClassification  ``[{"label": str, "score": float}]``
(``sentiment-analysis``)
``token-classification``    GPT2ForTokenClassification     ``[{"entity", "score", "index",
(``ner``)                                                  "word", "start", "end"}]``
``question-answering``      GPT2ForQuestionAnswering       ``{"score", "start", "end", "answer"}``
==========================  =============================  =====================================

The pre- and post-processing (tokenisation, padding, decoding, softmax, spans) is numpy and
lives here; the model runs in its own framework through a small adapter module of each backend
(``gpt2_torch.pipelines``, ``gpt2_tf.pipelines``, ``gpt2_flax.pipelines``), imported only when a
pipeline of that framework is built, so ``import gpt2_core.pipelines`` loads no framework.

Differences from transformers, on purpose: ``model=`` is required (no per-task default
checkpoint is downloaded); batched text generation pads on the **left** (correct for a
decoder-only model) with the tokenizer's pad token, or the EOS id when there is none, instead of
refusing to batch.

Example:
    >>> from gpt2_core.pipelines import pipeline
    >>> gen = pipeline("text-generation", model="path/to/gpt2", framework="torch")  # doctest: +SKIP
    >>> gen("Hello, I'm a language model,", max_new_tokens=20, do_sample=False)   # doctest: +SKIP
    [{'generated_text': "Hello, I'm a language model, ..."}]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from gpt2_core.auto import AutoTokenizer, check_gpt2
from gpt2_core.generation_config import GenerationConfig

#: task -> head; aliases included
TASKS: dict[str, str] = {
    "text-generation": "lm",
    "text-classification": "sequence_classification",
    "sentiment-analysis": "sequence_classification",
    "token-classification": "token_classification",
    "ner": "token_classification",
    "question-answering": "question_answering",
}
_FRAMEWORK_NAMES = {
    "torch": "torch",
    "pt": "torch",
    "pytorch": "torch",
    "tf": "tf",
    "tensorflow": "tf",
    "keras": "tf",
    "flax": "flax",
    "jax": "flax",
}
_NEEDS = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "flax": ("jax", "flax")}


def _framework_of(model: Any) -> str:
    package = type(model).__module__.split(".")[0]
    fw = {"gpt2_torch": "torch", "gpt2_tf": "tf", "gpt2_flax": "flax"}.get(package)
    if fw is None:
        raise TypeError(
            f"model must be a checkpoint path / hub id or a gpt2-zoo model, got "
            f"{type(model).__module__}.{type(model).__name__}"
        )
    return fw


def _default_framework() -> str:
    for fw in ("torch", "tf", "flax"):
        if all(importlib.util.find_spec(m) is not None for m in _NEEDS[fw]):
            return fw
    raise RuntimeError("no framework installed: pip install 'gpt2-zoo[torch]' (or tf, flax)")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Pipeline:
    """Base class: holds the model, the tokenizer and the backend adapter.

    Attributes:
        model: the framework model; tokenizer: a gpt2_core tokenizer; framework: "torch",
        "tf" or "flax"; task: the task name.
    """

    task = ""

    def __init__(
        self, model: Any, tokenizer: Any, framework: str, backend: Any, batch_size: int = 1
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.framework = framework
        self.backend = backend
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    @property
    def config(self) -> Any:
        return self.model.config

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.forward(self.model, ids, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, framework={self.framework!r})"


class TextGenerationPipeline(Pipeline):
    """``pipeline("text-generation")``: continue prompts with ``model.generate``.

    Defaults as transformers' pipeline: ``max_new_tokens=256, do_sample=True, temperature=0.7``
    unless the model's generation config says otherwise; call keyword arguments override both.

    Call arguments:
        text_inputs: a prompt or a list of prompts (batched ``batch_size`` at a time, left padded).
        return_full_text: prompt + continuation (default) or the continuation only.
        return_tensors: return ``generated_token_ids`` instead of text.
        clean_up_tokenization_spaces: passed to ``decode`` (transformers' pipeline default True).
        prefix: text put before every prompt.
        **generate_kwargs: any :class:`GenerationConfig` field (``max_new_tokens``, ``seed`` ...).

    Returns:
        ``[{"generated_text": ...}, ...]`` (one dict per returned sequence) for one prompt, a list
        of those for a list of prompts.
    """

    task = "text-generation"
    DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        framework: str,
        backend: Any,
        batch_size: int = 1,
        **generate_kwargs: Any,
    ) -> None:
        super().__init__(model, tokenizer, framework, backend, batch_size)
        base = getattr(model, "generation_config", None)
        if base is None:
            base = GenerationConfig.from_model_config(model.config)
        plain = GenerationConfig()
        # transformers' priority: call kwargs > the model's own (non-default) settings >
        # the pipeline's defaults
        own = {
            f.name: getattr(base, f.name)
            for f in fields(GenerationConfig)
            if getattr(base, f.name) != getattr(plain, f.name)
        }
        settings = {**self.DEFAULTS, **own, **generate_kwargs}
        if (
            "max_length" in own
            and "max_new_tokens" not in own
            and "max_new_tokens" not in generate_kwargs
        ):
            settings.pop("max_new_tokens")  # an explicit max_length of the model wins
        gen = GenerationConfig(**settings)
        if gen.pad_token_id is None and getattr(tokenizer, "pad_token_id", None) is not None:
            gen = gen.update(pad_token_id=tokenizer.pad_token_id)
        self.generation_config = gen

    def __call__(
        self,
        text_inputs: str | Sequence[str],
        *,
        return_full_text: bool = True,
        return_tensors: bool = False,
        clean_up_tokenization_spaces: bool = True,
        prefix: str = "",
        batch_size: int | None = None,
        **generate_kwargs: Any,
    ):
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else list(text_inputs)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("text-generation takes a string or a non-empty list of strings")
        gen = (
            self.generation_config.update(**generate_kwargs)
            if generate_kwargs
            else self.generation_config
        )
        bs = batch_size or self.batch_size
        n = gen.num_return_sequences
        tok = self.tokenizer
        pad = (
            tok.pad_token_id
            if getattr(tok, "pad_token_id", None) is not None
            else gen.effective_pad_token_id
        )
        results = []
        for start in range(0, len(prompts), bs):
            chunk = prompts[start : start + bs]
            encoded = [tok.encode(prefix + p, add_special_tokens=False) for p in chunk]
            if any(not e for e in encoded):
                raise ValueError("text-generation: a prompt is empty after tokenisation")
            T = max(len(e) for e in encoded)
            ids = np.full((len(chunk), T), pad, np.int64)
            mask = np.zeros((len(chunk), T), np.int64)
            for i, e in enumerate(encoded):  # left padding: the new tokens follow every prompt
                ids[i, T - len(e) :] = e
                mask[i, T - len(e) :] = 1
            out = np.asarray(self.backend.generate(self.model, ids, mask, gen))
            for i, prompt in enumerate(chunk):
                records = []
                prompt_len = len(
                    tok.decode(
                        encoded[i],
                        skip_special_tokens=True,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                    )
                )
                for row in out[i * n : (i + 1) * n]:
                    if return_tensors:
                        # the row without this batch's left padding, as transformers returns it
                        records.append({"generated_token_ids": row[T - len(encoded[i]) :].tolist()})
                        continue
                    text = tok.decode(
                        row,
                        skip_special_tokens=True,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                    )
                    new = text[prompt_len:]
                    records.append({"generated_text": prompt + new if return_full_text else new})
                results.append(records)
        return results[0] if single else results


class TextClassificationPipeline(Pipeline):
    """``pipeline("text-classification")``: label and score of each text (the last real token's
    logits, as GPT2ForSequenceClassification pools).

    Call arguments:
        inputs: a text or a list of texts.
        top_k: ``None`` for every label (sorted), or how many to keep; not given: the best
            label only, as transformers' legacy output.
        function_to_apply: "softmax", "sigmoid" or "none"; default from the config
            (regression: none, one label or multi-label: sigmoid, else softmax).
    """

    task = "text-classification"
    _UNSET = object()

    def __call__(
        self, inputs: str | Sequence[str], top_k: Any = _UNSET, function_to_apply: str | None = None
    ):
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text-classification takes a string or a list of strings")
        legacy = top_k is self._UNSET
        k = 1 if legacy else top_k
        fn = (function_to_apply or self._default_function()).lower()
        if fn not in ("softmax", "sigmoid", "none"):
            raise ValueError(
                f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {fn!r}"
            )
        out = []
        for text in texts:
            ids = np.asarray([self.tokenizer.encode(text)], np.int64)
            if ids.shape[1] == 0:
                raise ValueError("text-classification: the text is empty after tokenisation")
            logits = self._forward(ids, np.ones_like(ids))["logits"][0].astype(np.float32)
            scores = {"softmax": _softmax, "sigmoid": _sigmoid, "none": lambda x: x}[fn](logits)
            id2label = self.config.id2label
            if k == 1 and legacy:
                out.append({"label": id2label[int(scores.argmax())], "score": float(scores.max())})
                continue
            ranked = [{"label": id2label[i], "score": float(s)} for i, s in enumerate(scores)]
            if not legacy:
                ranked.sort(key=lambda r: r["score"], reverse=True)
                if k is not None:
                    ranked = ranked[:k]
            out.append(ranked)
        if single and legacy:
            return out
        return out[0] if single else out

    def _default_function(self) -> str:
        cfg = self.config
        if cfg.problem_type == "regression":
            return "none"
        if cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1:
            return "sigmoid"
        return "softmax"


class TokenClassificationPipeline(Pipeline):
    """``pipeline("token-classification")``: the best label of every token (no aggregation).

    Each entity is ``{"entity", "score", "index", "word", "start", "end"}`` with ``word`` the
    byte-level token (``"Ġworld"``) and ``start``/``end`` its character span, as transformers.
    Tokens labelled with one of ``ignore_labels`` (default ``["O"]``) are left out.
    """

    task = "token-classification"

    def __call__(
        self,
        inputs: str | Sequence[str],
        ignore_labels: Sequence[str] | None = None,
        aggregation_strategy: str | None = None,
    ):
        if aggregation_strategy not in (None, "none"):
            raise ValueError(
                "token-classification: only aggregation_strategy='none' is "
                f"implemented, got {aggregation_strategy!r}"
            )
        ignore = ["O"] if ignore_labels is None else list(ignore_labels)
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError("token-classification takes a string or a list of strings")
            enc = self.tokenizer(text, return_offsets_mapping=True)
            ids = np.asarray([enc["input_ids"]], np.int64)
            if ids.shape[1] == 0:
                out.append([])
                continue
            logits = self._forward(ids, np.ones_like(ids))["logits"][0].astype(np.float32)
            scores = _softmax(logits)
            tokens = self.tokenizer.convert_ids_to_tokens(ids[0].tolist())
            special = set(self.tokenizer.all_special_ids)
            entities = []
            for idx, (tid, word) in enumerate(zip(ids[0].tolist(), tokens)):
                if tid in special:
                    continue
                best = int(scores[idx].argmax())
                label = self.config.id2label[best]
                if label in ignore:
                    continue
                start, end = enc["offset_mapping"][idx]
                entities.append(
                    {
                        "entity": label,
                        "score": float(scores[idx, best]),
                        "index": idx,
                        "word": word,
                        "start": int(start),
                        "end": int(end),
                    }
                )
            out.append(entities)
        return out[0] if single else out


class QuestionAnsweringPipeline(Pipeline):
    """``pipeline("question-answering")``: the best span of ``context`` answering ``question``.

    GPT-2 has no separator token: the input is the question's tokens followed by the context's
    (what transformers' GPT-2 tokenizer does for a pair). The span maximises
    ``softmax(start)[s] * softmax(end)[e]`` over context tokens with ``s <= e`` and
    ``e - s < max_answer_len``, the probabilities taken over the context tokens only (the
    question masked out, as transformers). Returns ``{"score", "start", "end", "answer"}``
    (character offsets in the context), or a list of ``top_k`` of them.
    """

    task = "question-answering"

    def __call__(
        self,
        question: str | None = None,
        context: str | None = None,
        *,
        top_k: int = 1,
        max_answer_len: int = 15,
    ) -> dict | list[dict]:
        if not isinstance(question, str) or not isinstance(context, str):
            raise TypeError("question-answering needs question= and context= strings")
        if (
            not isinstance(top_k, int)
            or top_k < 1
            or not isinstance(max_answer_len, int)
            or max_answer_len < 1
        ):
            raise ValueError(
                f"top_k and max_answer_len must be ints >= 1, got {top_k!r}, {max_answer_len!r}"
            )
        if not context.strip():
            raise ValueError("question-answering: the context is empty")
        q_ids = self.tokenizer.encode(question)
        enc = self.tokenizer(context, return_offsets_mapping=True)
        c_ids = enc["input_ids"]
        ids = np.asarray([q_ids + c_ids], np.int64)
        out = self._forward(ids, np.ones_like(ids))
        n_q = len(q_ids)
        start = out["start_logits"][0, n_q:].astype(np.float32)
        end = out["end_logits"][0, n_q:].astype(np.float32)
        p_start, p_end = _softmax(start), _softmax(end)
        outer = np.triu(np.tril(p_start[:, None] * p_end[None, :], max_answer_len - 1))
        flat = outer.reshape(-1)
        order = np.argsort(-flat, kind="stable")[:top_k]
        # align the span to whole words (transformers' align_to_words=True): a word's
        # characters run from its first token's start to its last token's end
        offsets, words = enc["offset_mapping"], enc.word_ids()
        span: dict[int, list[int]] = {}
        for (a, b), w in zip(offsets, words):
            span.setdefault(w, [a, b])[1] = b
        answers = []
        for f in order:
            s, e = divmod(int(f), len(c_ids))
            cs, ce = span[words[s]][0], span[words[e]][1]
            answers.append(
                {
                    "score": float(flat[f]),
                    "start": int(cs),
                    "end": int(ce),
                    "answer": context[cs:ce],
                }
            )
        return answers[0] if top_k == 1 else answers


_CLASSES: dict[str, type[Pipeline]] = {
    "lm": TextGenerationPipeline,
    "sequence_classification": TextClassificationPipeline,
    "token_classification": TokenClassificationPipeline,
    "question_answering": QuestionAnsweringPipeline,
}


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    framework: str | None = None,
    dtype: Any = None,
    device: Any = None,
    **kwargs: Any,
) -> Pipeline:
    """Build a pipeline for ``task`` on a GPT-2 checkpoint or model, in any backend.

    Args:
        task: "text-generation", "text-classification" ("sentiment-analysis"),
            "token-classification" ("ner") or "question-answering".
        model: a checkpoint directory / preset / hub id (any format; other architectures are
            refused), or a gpt2-zoo model of the matching head in any framework.
        tokenizer: a tokenizer, a path / id, or None for the model directory's (GPT-2's own
            vocabulary for the presets).
        framework: "torch" ("pt"), "tf" or "flax" ("jax"); default the model's, else the first
            installed of torch, tf, flax.
        dtype: weights dtype ("fp32", "fp16", "bf16" or the framework's dtype object).
        device: torch device for the torch backend (TF and JAX place arrays themselves).
        **kwargs: ``batch_size``; for text-generation, default generation settings.

    Example:
        >>> from gpt2_core.pipelines import pipeline
        >>> clf = pipeline("text-classification", model="path/to/ckpt")      # doctest: +SKIP
        >>> clf("What a lovely day")                                         # doctest: +SKIP
        [{'label': 'LABEL_1', 'score': 0.93}]
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; gpt2-zoo has: {sorted(TASKS)}")
    head = TASKS[task]
    if model is None:
        raise ValueError(
            f"pipeline({task!r}) needs model= (a GPT-2 checkpoint directory, preset, "
            "hub id or model); gpt2-zoo downloads no default model"
        )
    if framework is not None:
        if framework not in _FRAMEWORK_NAMES:
            raise ValueError(f"unknown framework {framework!r}; use 'torch', 'tf' or 'flax'")
        framework = _FRAMEWORK_NAMES[framework]
    if isinstance(model, str | os.PathLike):
        check_gpt2(model)
        framework = framework or _default_framework()
        backend = importlib.import_module(f"gpt2_{framework}.pipelines")
        source = model
        model = backend.load(head, model, dtype=dtype, device=device)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        own = _framework_of(model)
        if framework is not None and framework != own:
            raise ValueError(f"framework={framework!r} but the model is a {own} model")
        framework = own
        if getattr(model, "head", getattr(model, "_head", head)) != head:
            raise ValueError(f"task {task!r} needs a {head} model, got {type(model).__name__}")
        if dtype is not None or device is not None:
            raise ValueError(
                "dtype= and device= apply when the pipeline loads the model; "
                "convert a model you pass yourself"
            )
        backend = importlib.import_module(f"gpt2_{framework}.pipelines")
        if tokenizer is None:
            if model.config.vocab_size != 50257:
                raise ValueError(
                    "pass tokenizer=: the model's vocab_size is "
                    f"{model.config.vocab_size}, not GPT-2's 50257"
                )
            tokenizer = "gpt2"
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return _CLASSES[head](model, tokenizer, framework, backend, **kwargs)


__all__ = [
    "TASKS",
    "Pipeline",
    "QuestionAnsweringPipeline",
    "TextClassificationPipeline",
    "TextGenerationPipeline",
    "TokenClassificationPipeline",
    "pipeline",
]
