"""``gpt2 generate``: text generation from the command line, in any installed framework.

    gpt2 generate "The meaning of life is" --model gpt2 --max-new-tokens 40
    gpt2 generate --model ./ckpt --framework flax --do-sample --top-p 0.9 --seed 0 < prompt.txt
    gpt2 generate --model ./ckpt --interactive            # a prompt loop; an empty line quits

The prompt comes from the argument, ``--prompt-file`` or stdin. Tokens are streamed to stdout
as they are produced (through the backends' streamer support, whole words at a time as
transformers' ``TextStreamer``); only the continuation is printed, decoded without special
tokens, so greedy output equals ``tokenizer.decode(model.generate(ids)[0, T0:],
skip_special_tokens=True)`` -- and is the same in the three frameworks. Every field of
:class:`gpt2_core.generation_config.GenerationConfig` is a flag (``--max-new-tokens``,
``--do-sample``, ``--top-p`` ...); flags left out keep the checkpoint's
``generation_config.json``. ``--stop`` strings end the text at their first occurrence (torch and
TF stop decoding there; Flax's compiled loop runs on and the rest is dropped). ``-v`` prints load
time, prompt tokens, time to first token and tokens per second to stderr.

Beam search and several return sequences cannot stream (as in transformers): their sequences
are printed when done, separated by a line ``---``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from gpt2_core.generation_config import GenerationConfig
from gpt2_core.streamers import TextStreamer

log = logging.getLogger("gpt2.generate")

FRAMEWORKS = ("torch", "tf", "flax")
PACKAGES = {"torch": "gpt2_torch", "tf": "gpt2_tf", "flax": "gpt2_flax"}
_NEEDS = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "flax": ("jax", "flax")}
DTYPES = ("auto", "fp32", "fp16", "bf16")
#: GenerationConfig fields the CLI does not expose as flags (or exposes differently)
_NOT_FLAGS = {"max_length"}
_HELP = {
    "max_new_tokens": "tokens to generate (default 50)",
    "do_sample": "sample instead of greedy / beam search",
    "temperature": "sampling temperature",
    "top_k": "keep the k most likely tokens when sampling (0: off)",
    "top_p": "nucleus sampling: keep the smallest set of tokens with this total probability",
    "num_beams": "beam search width",
    "repetition_penalty": "CTRL repetition penalty (> 1 discourages repeats)",
    "no_repeat_ngram_size": "never repeat an n-gram of this size",
    "num_return_sequences": "sequences per prompt (needs sampling or beams)",
    "seed": "random seed for sampling",
    "eos_token_id": "one or more ids that end generation",
}
DEFAULT_MAX_NEW_TOKENS = 50


class _Stop(Exception):
    """Raised from the streamer to end decoding at a stop string (torch and TF)."""


def installed_frameworks() -> list[str]:
    """The frameworks whose packages are importable, in the default order torch, tf, flax."""
    return [
        fw for fw in FRAMEWORKS if all(importlib.util.find_spec(m) is not None for m in _NEEDS[fw])
    ]


def default_framework() -> str:
    found = installed_frameworks()
    if not found:
        raise RuntimeError("no framework installed: pip install 'gpt2-zoo[torch]' (or tf, flax)")
    return found[0]


# ----------------------------------------------------------------------------- arguments
def _field_flag(p: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    name = "--" + f.name.replace("_", "-")
    help_ = _HELP.get(f.name, f"GenerationConfig.{f.name}")
    if f.name == "early_stopping":
        p.add_argument(name, default=None, choices=["true", "false", "never"], help=help_)
    elif f.name == "eos_token_id":
        p.add_argument(name, default=None, type=int, nargs="+", metavar="ID", help=help_)
    elif isinstance(f.default, bool):
        p.add_argument(name, default=None, action=argparse.BooleanOptionalAction, help=help_)
    elif isinstance(f.default, float):
        p.add_argument(name, default=None, type=float, help=help_)
    else:  # ints and optional ints
        p.add_argument(name, default=None, type=int, help=help_)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``gpt2 generate`` (every GenerationConfig field is one)."""
    p.add_argument(
        "prompt", nargs="?", default=None, help="the prompt (default: --prompt-file, else stdin)"
    )
    p.add_argument("--model", required=True, help="checkpoint directory, preset or hub id")
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=None,
        help="default: the first installed of torch, tf, flax",
    )
    p.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights dtype (auto: fp32, as transformers)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8 weight-only quantization (per-output-channel scales; fp32 "
        "activations): about 4x less to read per token; see docs/quantization.md",
    )
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1 ...)")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the text at this string (repeatable)",
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="a prompt loop: one prompt per line, an empty line or EOF quits",
    )
    p.add_argument(
        "-v",
        "--verbose",
        dest="stats",
        action="store_true",
        help="print load time, prompt tokens, time to first token and tok/s (stderr)",
    )
    g = p.add_argument_group("generation settings (GenerationConfig)")
    for f in dataclasses.fields(GenerationConfig):
        if f.name not in _NOT_FLAGS:
            _field_flag(g, f)


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields given on the command line (others keep the model's)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(GenerationConfig):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if f.name == "early_stopping":
            v = {"true": True, "false": False}.get(v, v)
        if f.name == "eos_token_id" and len(v) == 1:
            v = v[0]
        out[f.name] = v
    out.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    return out


# ----------------------------------------------------------------------------- loading
def load(
    model: str,
    framework: str,
    dtype: str = "auto",
    device: str | None = None,
    quantize: str | None = None,
):
    """(model, tokenizer) for ``framework``, through its ``AutoModelForCausalLM``."""
    from gpt2_core.auto import AutoTokenizer

    if quantize is not None and dtype not in ("auto", "fp32"):
        raise ValueError(f"--quantize {quantize} keeps activations in fp32: drop --dtype {dtype}")
    mod = importlib.import_module(PACKAGES[framework])
    kwargs: dict[str, Any] = {} if quantize is None else {"quantize": quantize}
    if framework == "torch":
        import torch

        kwargs["dtype"] = {
            "auto": torch.float32,
            "fp32": torch.float32,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[dtype]
        if device:
            kwargs["device"] = device
    elif device:
        raise ValueError("--device is for --framework torch (TF and JAX pick their device)")
    elif framework == "tf":
        if dtype != "auto":
            kwargs["dtype"] = dtype
    elif dtype != "auto":
        import jax.numpy as jnp

        kwargs["dtype"] = kwargs["param_dtype"] = {
            "fp32": jnp.float32,
            "fp16": jnp.float16,
            "bf16": jnp.bfloat16,
        }[dtype]
    lm = mod.AutoModelForCausalLM.from_pretrained(model, **kwargs)
    tok = AutoTokenizer.from_pretrained(model)
    return lm, tok


def _to_framework(framework: str, ids: np.ndarray, model: Any) -> Any:
    if framework == "torch":
        import torch

        return torch.as_tensor(ids).to(model.device)
    if framework == "tf":
        import tensorflow as tf

        return tf.constant(ids)
    import jax.numpy as jnp

    return jnp.asarray(ids)


# ----------------------------------------------------------------------------- generating
@dataclasses.dataclass
class Result:
    """What one prompt produced: the texts (stop strings applied) and timings."""

    texts: list[str]
    prompt_tokens: int
    new_tokens: int
    seconds: float
    first_token_s: float | None


class _StopWatcher:
    """Passes streamed text on, holding back what could be the start of a stop string, and
    ends the stream at the first stop string."""

    def __init__(self, write: Callable[[str], None], stops: Sequence[str], raise_on_stop: bool):
        self.write = write
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.raise_on_stop = raise_on_stop
        self.text = ""  # everything received
        self.sent = 0  # how much of it was written
        self.stopped = False

    def __call__(self, piece: str, stream_end: bool) -> None:
        if self.stopped:
            return
        self.text += piece
        cut = _first_stop(self.text, self.stops)
        if cut is not None:
            self.write(self.text[self.sent : cut])
            self.sent = cut
            self.stopped = True
            if self.raise_on_stop:
                raise _Stop
            return
        upto = len(self.text) if stream_end else max(self.sent, len(self.text) - self.hold)
        if upto > self.sent:
            self.write(self.text[self.sent : upto])
            self.sent = upto


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class _TimedStreamer(TextStreamer):
    """A TextStreamer that records when the first new token arrived and how many came."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str, bool], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, on_text=on_text, skip_special_tokens=True)
        self.first_token_at: float | None = None
        self.count = 0
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen:
            self.count += int(np.asarray(value).size)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        self._prompt_seen = True
        super().put(value)


def generate(
    model: Any,
    tokenizer: Any,
    framework: str,
    prompt: str,
    settings: dict[str, Any],
    *,
    stops: Sequence[str] = (),
    write: Callable[[str], None] | None = None,
) -> Result:
    """Generate from one prompt; stream to ``write`` when it can (one sequence, no beams)."""
    ids = np.asarray([tokenizer.encode(prompt)], dtype=np.int64)
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty")
    T0 = ids.shape[1]
    x = _to_framework(framework, ids, model)
    streamable = settings.get("num_beams", 1) == 1 and settings.get("num_return_sequences", 1) == 1
    t0 = time.perf_counter()
    if streamable and write is not None:
        watcher = _StopWatcher(write, stops, raise_on_stop=framework != "flax")
        streamer = _TimedStreamer(tokenizer, watcher)
        try:
            out = np.asarray(model.generate(x, streamer=streamer, **settings))
            new = out[0, T0:]
            text = tokenizer.decode(new, skip_special_tokens=True)
            n_new = len(new)
        except _Stop:
            text, n_new = watcher.text, streamer.count
        seconds = time.perf_counter() - t0
        cut = _first_stop(text, stops)
        texts = [text if cut is None else text[:cut]]
        first = None if streamer.first_token_at is None else streamer.first_token_at - t0
        return Result(texts, T0, n_new, seconds, first)
    out = np.asarray(model.generate(x, **settings))
    seconds = time.perf_counter() - t0
    texts = []
    for row in out:
        text = tokenizer.decode(row[T0:], skip_special_tokens=True)
        cut = _first_stop(text, stops)
        texts.append(text if cut is None else text[:cut])
    if write is not None:
        write("\n---\n".join(texts))
    return Result(texts, T0, int(out.shape[1] - T0), seconds, None)


def _stats(res: Result, err: TextIO) -> None:
    ttft = "n/a" if res.first_token_s is None else f"{res.first_token_s * 1e3:.0f} ms"
    after = res.seconds - (res.first_token_s or 0.0)
    n_after = res.new_tokens - (1 if res.first_token_s is not None else 0)
    rate = n_after / after if after > 0 and n_after > 0 else res.new_tokens / max(res.seconds, 1e-9)
    print(
        f"[prompt tokens {res.prompt_tokens}, new tokens {res.new_tokens}, time to first token "
        f"{ttft}, {rate:.1f} tok/s, total {res.seconds:.2f} s]",
        file=err,
        flush=True,
    )


def run(
    args: argparse.Namespace,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The body of ``gpt2 generate`` (streams are parameters so tests can drive it)."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    stats = getattr(args, "stats", False) or getattr(args, "verbose", False)
    settings = generation_kwargs(args)
    GenerationConfig(**{k: v for k, v in settings.items()})  # validate before loading anything
    framework = args.framework or default_framework()
    if framework not in installed_frameworks():
        raise RuntimeError(f"--framework {framework}: {', '.join(_NEEDS[framework])} not installed")

    prompt = None
    if not args.interactive:
        if args.prompt is not None and args.prompt_file is not None:
            raise ValueError("give the prompt as an argument or --prompt-file, not both")
        if args.prompt is not None:
            prompt = args.prompt
        elif args.prompt_file is not None:
            try:
                with open(args.prompt_file, encoding="utf-8") as f:
                    prompt = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"cannot read --prompt-file {args.prompt_file}: {e}") from e
        else:
            if stdin.isatty():
                raise ValueError(
                    "no prompt: pass it as an argument, with --prompt-file or on stdin"
                )
            prompt = stdin.read()
        if not prompt:
            raise ValueError("the prompt is empty")

    t = time.perf_counter()
    model, tok = load(
        args.model, framework, args.dtype, args.device, getattr(args, "quantize", None)
    )
    if stats:
        print(
            f"[{framework}: loaded {args.model} in {time.perf_counter() - t:.2f} s]",
            file=stderr,
            flush=True,
        )

    def write(s: str) -> None:
        stdout.write(s)
        stdout.flush()

    if not args.interactive:
        res = generate(model, tok, framework, prompt, settings, stops=args.stop, write=write)
        write("\n")
        if stats:
            _stats(res, stderr)
        return 0
    while True:
        stderr.write("> ")
        stderr.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        res = generate(
            model, tok, framework, line.rstrip("\n"), settings, stops=args.stop, write=write
        )
        write("\n")
        if stats:
            _stats(res, stderr)
    return 0


__all__ = [
    "add_arguments",
    "default_framework",
    "generate",
    "generation_kwargs",
    "installed_frameworks",
    "load",
    "run",
]
