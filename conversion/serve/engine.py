"""The model side of ``gpt2 serve``: one checkpoint in one framework behind a job queue.

:class:`Engine` loads a checkpoint with the chosen backend (``gpt2_torch``, ``gpt2_tf`` or
``gpt2_flax``, each imported only when asked for) and a GPT-2 tokenizer, and runs every
generation on **one worker thread fed by a FIFO queue**: requests are served in arrival order,
one returned sequence (a *job*) at a time, with the backend's own
``model.generate(..., streamer=...)``.

Why a queue rather than batching: each backend's ``generate`` decodes one batch with one set of
settings, and requests differ in prompt length, length, temperature, top-p and seed. Batching
them would mean per-row sampling settings inside three compiled decode loops; the queue keeps
every answer exactly what ``model.generate`` returns for that request alone (the tests check
greedy and seeded sampling token for token). On a CPU, GPT-2 decoding is bound by memory
bandwidth and the fused decode kernel already uses the cores, so concurrent clients share the
throughput of one stream (measured in ``benchmarks/bench_serve.py``).

Streaming and stopping: a streamer turns new tokens into text as they come (never splitting a
UTF-8 character or emitting the start of a stop string that may still complete), checks the
request's cancel flag and the stop strings, and ends generation by raising from ``put`` — in
torch and TF that unwinds the Python decode loop; in Flax the exception in the ``io_callback``
aborts the compiled loop. A cancelled job still queued never starts.

Example:
    >>> engine = Engine.load("gpt2", framework="torch")            # doctest: +SKIP
    >>> engine.start()                                              # doctest: +SKIP
    >>> engine.complete(engine.encode("Hello"), Sampling(max_tokens=8, temperature=0)).text
    ... # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_core.config import CONFIG_NAME, GPT2Config

logger = logging.getLogger(__name__)

FRAMEWORKS = {"torch": "gpt2_torch", "tf": "gpt2_tf", "flax": "gpt2_flax"}
DTYPES = ("fp32", "fp16", "bf16", "int8")  # int8: weight-only (docs/quantization.md)
GPT2_VOCAB_SIZE = 50257


@dataclass(frozen=True)
class Sampling:
    """Settings of one generated sequence, in the OpenAI completions vocabulary.

    Args:
        max_tokens: new tokens at most.
        temperature: 0 means greedy search; > 0 samples at that temperature.
        top_p: nucleus sampling mass in (0, 1] (1 disables it).
        top_k: keep the k most likely tokens (0 disables it: the OpenAI API has no top-k).
        seed: sampling seed; None draws a fresh one per sequence.
        stop: strings that end the text (not included in it).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``model.generate`` for these settings."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        if self.temperature == 0:
            kw["do_sample"] = False
        else:
            seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
            kw.update(
                do_sample=True,
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                top_k=int(self.top_k),
                seed=int(seed),
            )
        return kw


@dataclass
class Result:
    """One finished sequence: text, new token ids (EOS excluded), why it ended
    (``"stop"``: EOS or a stop string, ``"length"``: max_tokens, ``"cancelled"``: the client
    went away) and the time spent generating it (queueing excluded)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


class _Halt(Exception):
    """Raised from a streamer's ``put`` to end ``generate`` early (stop string or cancel)."""


class _QuietHalt(logging.Filter):
    """JAX logs every exception raised in an ``io_callback``; a deliberate halt is no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Halt)


class _TextStreamer:
    """Receives token ids from ``generate`` and hands text deltas to ``on_delta``.

    Text is passed on only up to the last complete character and never includes a prefix of a
    stop string that the next tokens might complete.
    """

    def __init__(
        self,
        tokenizer: Any,
        eos_ids: list[int],
        stop: tuple[str, ...],
        cancel: threading.Event | None,
        on_delta: Callable[[str], None] | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.stop = stop
        self.cancel = cancel
        self.on_delta = on_delta
        self.ids: list[int] = []
        self.text = ""  # decoded text of self.ids, cut at a stop string when one was hit
        self.sent = 0  # characters of self.text already handed to on_delta
        self.finish_reason: str | None = None
        self.halted = False  # put raised _Halt: generate's exception is ours, not an error
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        import numpy as np

        if not self._prompt_seen:  # the first put is the prompt
            self._prompt_seen = True
            return
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            self._halt("the client disconnected")
        for token in np.asarray(value).reshape(-1).tolist():
            if token in self.eos_ids:  # generate stops by itself after an EOS
                self.finish_reason = "stop"
                return
            self.ids.append(int(token))
            if self._update():
                self.finish_reason = "stop"
                self._halt("stop string")

    def _halt(self, why: str) -> None:
        self.halted = True
        raise _Halt(why)

    def _update(self) -> bool:
        """Decode the ids so far and pass on what is final; True when a stop string appeared."""
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            self._emit(len(self.text))
            return True
        self.text = text
        if text.endswith("\ufffd"):
            return False  # an incomplete UTF-8 sequence: wait for the next token
        safe = len(text)
        for s in self.stop:  # hold back a tail that could grow into a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        self._emit(safe)
        return False

    def _emit(self, upto: int) -> None:
        if upto > self.sent:
            piece = self.text[self.sent : upto]
            self.sent = upto
            if self.on_delta is not None:
                self.on_delta(piece)

    def end(self) -> None:
        self._emit(len(self.text))


@dataclass
class _Job:
    prompt_ids: list[int]
    sampling: Sampling
    cancel: threading.Event
    on_delta: Callable[[str], None] | None
    on_done: Callable[[Result | BaseException], None]


class QueueFull(RuntimeError):
    """The engine already holds ``max_queue`` waiting sequences."""


class Engine:
    """One loaded checkpoint, its tokenizer and the worker thread that generates with it.

    Args:
        model: a backend ``GPT2LMHeadModel`` (torch, tf or flax) in inference mode.
        tokenizer: a GPT-2 tokenizer (``encode`` / ``decode``).
        framework: ``"torch"``, ``"tf"`` or ``"flax"`` (how ``generate`` is called).
        name: the model id reported by ``/v1/models``.
        dtype: the dtype it was loaded in (reported by ``/health``).
        max_queue: waiting sequences beyond which :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        framework: str,
        name: str,
        dtype: str = "fp32",
        max_queue: int = 256,
    ) -> None:
        if framework not in FRAMEWORKS:
            raise ValueError(
                f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.framework = framework
        self.name = name
        self.dtype = dtype
        self.config: GPT2Config = model.config
        self.max_queue = max_queue
        self.eos_ids = _eos_ids(model)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.busy = False
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0, "tokens": 0}
        self.last: Result | None = None  # the latest finished sequence (tests, /health)
        if framework == "flax":
            jax_log = logging.getLogger("jax._src.callback")
            if not any(isinstance(f, _QuietHalt) for f in jax_log.filters):
                jax_log.addFilter(_QuietHalt())

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str,
        framework: str = "torch",
        dtype: str | None = None,
        tokenizer: str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load ``model`` (a checkpoint directory or hub id) in ``framework``.

        The tokenizer comes from ``tokenizer`` if given, else from the checkpoint directory,
        else GPT-2's own (shipped) when the model has GPT-2's vocabulary.
        """
        if framework not in FRAMEWORKS:
            raise ValueError(
                f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}"
            )
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
        try:
            mod = importlib.import_module(FRAMEWORKS[framework])
        except ImportError as e:
            raise RuntimeError(
                f"the {framework} backend is not installed ({e}); "
                f"pip install 'gpt2-zoo[{framework},serve]'"
            ) from e
        t0 = time.perf_counter()
        m = mod.GPT2LMHeadModel.from_pretrained(model, **_dtype_kwargs(framework, dtype))
        if hasattr(m, "eval"):
            m.eval()
        tok = load_tokenizer(tokenizer or model, m.config.vocab_size)
        logger.info(
            "loaded %s in %s (%s) in %.1fs",
            model,
            framework,
            dtype or "fp32",
            time.perf_counter() - t0,
        )
        return cls(m, tok, framework, name or str(model), dtype or "fp32", **kwargs)

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Prompt ids; the empty prompt starts from ``<|endoftext|>`` (bos), as GPT-2 does."""
        ids = list(self.tokenizer.encode(text))
        if not ids:
            bos = self.config.bos_token_id
            ids = [bos if bos is not None else (self.eos_ids[0] if self.eos_ids else 0)]
        return ids

    # ------------------------------------------------------------------ generation
    def generate_ids(self, prompt_ids: list[int], streamer: Any = None, **kwargs: Any) -> list[int]:
        """``model.generate`` of one prompt in this framework; returns prompt + new ids."""
        import numpy as np

        ids = np.asarray([prompt_ids], dtype=np.int64)
        if self.framework == "torch":
            import torch

            out = self.model.generate(torch.as_tensor(ids), streamer=streamer, **kwargs)
            return out[0].tolist()
        # tf and flax: numpy int32 ids; flax derives its PRNG key from ``seed``
        out = self.model.generate(ids.astype(np.int32), streamer=streamer, **kwargs)
        return np.asarray(out)[0].tolist()

    def complete(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Generate one sequence now, in the calling thread (the worker calls this)."""
        streamer = _TextStreamer(self.tokenizer, self.eos_ids, sampling.stop, cancel, on_delta)
        t0 = time.perf_counter()
        try:
            self.generate_ids(prompt_ids, streamer=streamer, **sampling.generate_kwargs())
        except Exception:
            # in Flax the _Halt comes back as a JaxRuntimeError naming it
            if not streamer.halted:
                raise
        streamer.end()
        seconds = time.perf_counter() - t0
        return Result(streamer.text, streamer.ids, streamer.finish_reason or "length", seconds)

    def warmup(self) -> None:
        """Short greedy and sampled runs (the page samples with temperature and top-p), so that
        tracing and compilation (TF, JAX) and building the CPU kernel happen before the first
        request."""
        t0 = time.perf_counter()
        ids = self.encode("Hello")
        self.complete(ids, Sampling(max_tokens=2, temperature=0))
        self.complete(ids, Sampling(max_tokens=2, temperature=0.9, top_p=0.95, seed=0))
        logger.info("warm-up %.1fs", time.perf_counter() - t0)

    # ------------------------------------------------------------------ the worker
    def start(self, warmup: bool = True) -> None:
        """Start the worker thread (after an optional warm-up run)."""
        if self._thread is not None:
            return
        if warmup:
            self.warmup()
        self._thread = threading.Thread(target=self._work, name="gpt2-serve-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    @property
    def queued(self) -> int:
        """Sequences waiting (the one being generated excluded)."""
        return self._queue.qsize()

    def submit(
        self,
        prompt_ids: list[int],
        sampling: Sampling,
        *,
        on_done: Callable[[Result | BaseException], None],
        on_delta: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Queue one sequence. ``on_delta(text)`` gets pieces as they are generated and
        ``on_done`` the :class:`Result` (or the exception); both are called on the worker
        thread. Setting ``cancel`` stops it (or skips it if it has not started)."""
        if self._thread is None:
            raise RuntimeError("Engine.start() was not called")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(
                f"{self._queue.qsize()} sequences are already waiting "
                f"(--max-queue {self.max_queue}); retry later"
            )
        self._queue.put(_Job(prompt_ids, sampling, cancel or threading.Event(), on_delta, on_done))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancel.is_set():
                self.stats["cancelled"] += 1
                job.on_done(Result("", [], "cancelled", 0.0))
                continue
            self.busy = True
            try:
                result: Result | BaseException = self.complete(
                    job.prompt_ids, job.sampling, job.on_delta, job.cancel
                )
            except Exception as e:  # reported to the request; the worker carries on
                logger.exception("generation failed")
                self.stats["failed"] += 1
                result = e
            else:
                key = "cancelled" if result.finish_reason == "cancelled" else "completed"
                self.stats[key] += 1
                self.stats["tokens"] += len(result.token_ids)
                self.last = result
            finally:
                self.busy = False
            try:
                job.on_done(result)
            except Exception:  # a callback must not kill the worker
                logger.exception("on_done callback failed")


def _eos_ids(model: Any) -> list[int]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list | tuple) else [int(eos)]


def _dtype_kwargs(framework: str, dtype: str | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    if dtype == "int8":  # the same argument in every backend
        return {"quantize": "int8"}
    if framework == "torch":
        import torch

        return {
            "dtype": {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        }
    if framework == "tf":
        return {"dtype": dtype}
    import jax.numpy as jnp

    jdt = {"fp32": jnp.float32, "fp16": jnp.float16, "bf16": jnp.bfloat16}[dtype]
    return {"dtype": jdt, "param_dtype": jdt}


def load_tokenizer(source: str, vocab_size: int) -> Any:
    """The tokenizer of ``source`` (directory, preset or hub id); GPT-2's shipped one when a
    checkpoint directory has none and the model has GPT-2's vocabulary."""
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    try:
        return GPT2TokenizerFast.from_pretrained(source)
    except FileNotFoundError:
        if not (Path(source) / CONFIG_NAME).is_file() or vocab_size < GPT2_VOCAB_SIZE:
            raise FileNotFoundError(
                f"{source} has no tokenizer files (vocab.json + merges.txt or tokenizer.json) and "
                f"its vocabulary ({vocab_size} tokens) is not GPT-2's; pass --tokenizer DIR"
            ) from None
        logger.info("%s has no tokenizer files: using GPT-2's", source)
        return GPT2TokenizerFast.from_pretrained("gpt2")


__all__ = ["DTYPES", "FRAMEWORKS", "Engine", "QueueFull", "Result", "Sampling", "load_tokenizer"]
