"""The ``gpt2`` command line (also ``python -m conversion``).

Subcommands: ``demo`` (the showcase), ``inspect`` (what a checkpoint directory holds),
``convert`` (any format to any format through the canonical state dict), ``serve`` (a writing
page and an OpenAI-style API, docs/serving.md). The CLI lives in the
top layer because it drives every backend; backends are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

log = logging.getLogger("gpt2")


def _cmd_demo(args: argparse.Namespace) -> int:
    from conversion import demo

    return demo.run(
        model=args.model,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        out=args.out,
        frameworks=args.frameworks,
    )


def _cmd_inspect(args: argparse.Namespace) -> int:
    from conversion import inspect_ckpt as insp

    print(insp.describe(args.path, prefer=args.format))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from conversion import convert

    convert.convert(
        args.src,
        args.out,
        to=args.to,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        force=args.force,
        head=args.head,
        prefer=args.src_format,
        verify=args.verify,
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from conversion import verify

    frameworks = [f.strip() for f in args.frameworks.split(",")] if args.frameworks else None
    table, worst = verify.verify_dir(args.path, frameworks=frameworks, head=args.head)
    print(table)
    ok = worst <= args.tolerance
    print(
        f"worst max|diff| {worst:.2e}: {'ok' if ok else 'MISMATCH'} (tolerance {args.tolerance:g})"
    )
    return 0 if ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from conversion import train

    if not train.is_main_process(args):
        # under torchrun every rank runs this command: only rank 0 speaks
        logging.getLogger().setLevel(logging.ERROR)
        train.run(args)
        return 0
    print(train.run(args))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from conversion import serve

    return serve.serve(
        args.model,
        framework=args.framework,
        host=args.host,
        port=args.port,
        dtype="int8" if args.quantize else args.dtype,
        tokenizer=args.tokenizer,
        name=args.name,
        max_queue=args.max_queue,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2",
        description="gpt2-zoo: one GPT-2 in PyTorch, TensorFlow/Keras and JAX/Flax, "
        "with checkpoint conversion between them.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="tokenise, build a seeded checkpoint, convert it through "
        "every format and run it in every installed framework",
    )
    d.add_argument(
        "--model",
        default=None,
        help="use this checkpoint directory or hub id instead of seeded weights",
    )
    d.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. GPT-2 is")
    d.add_argument("--max-new-tokens", type=int, default=16)
    d.add_argument("--out", default=None, help="keep the converted checkpoints here")
    d.add_argument(
        "--frameworks",
        default="torch,tf,flax",
        help="comma-separated frameworks to run (default: all installed)",
    )
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("inspect", help="print config, format, parameter count, dtypes, shards")
    i.add_argument("path", help="checkpoint directory or hub id")
    i.add_argument("--format", default=None, help="which format to read when several are present")
    i.set_defaults(func=_cmd_inspect)

    c = sub.add_parser("convert", help="convert a checkpoint to another format")
    c.add_argument("src", help="source checkpoint directory or hub id")
    c.add_argument("out", help="output directory (must not exist or be empty, unless --force)")
    c.add_argument(
        "--to",
        required=True,
        choices=["safetensors", "pytorch", "tf", "flax", "openai", "keras", "nnx"],
        help="target format (openai: the original TF1 release layout; keras: a "
        "gpt2_tf model.keras; nnx: a gpt2_flax NNX state)",
    )
    c.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    c.add_argument("--max-shard-size", default="5GB")
    c.add_argument(
        "--head",
        default=None,
        help="model class to convert for (default: from config.json architectures)",
    )
    c.add_argument("--src-format", default=None, help="which source format to read when several")
    c.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    c.add_argument(
        "--verify",
        action="store_true",
        help="run SRC and OUT in their frameworks on fixed inputs; print max|diff|",
    )
    c.set_defaults(func=_cmd_convert)

    v = sub.add_parser("verify", help="load a checkpoint in every framework; print a parity table")
    v.add_argument("path", help="checkpoint directory or hub id")
    v.add_argument("--frameworks", default=None, help="comma-separated (default: all installed)")
    v.add_argument("--head", default=None, help="model class (default: config.json architectures)")
    v.add_argument("--tolerance", type=float, default=1e-4)
    v.set_defaults(func=_cmd_verify)

    from conversion import train as train_cli  # flags only; frameworks load when a run starts

    t = sub.add_parser(
        "train",
        help="fine-tune a causal LM on text files (torch, tf or flax; "
        "one device, DDP/FSDP, tf.distribute or a JAX mesh)",
    )
    train_cli.add_arguments(t)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser(
        "serve",
        help="a local writing page and an OpenAI-style completions API "
        "(streaming) for a checkpoint, in any framework",
    )
    s.add_argument("--model", required=True, help="checkpoint directory or hub id")
    s.add_argument("--framework", default="torch", choices=["torch", "tf", "flax"])
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "fp16", "bf16", "int8"],
        help="parameter / compute dtype (default: the backend's fp32); int8: "
        "weight-only quantization, as --quantize int8",
    )
    s.add_argument(
        "--quantize",
        default=None,
        choices=["int8"],
        help="int8 weight-only quantization (docs/quantization.md)",
    )
    s.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory or id (default: the checkpoint's, else GPT-2's)",
    )
    s.add_argument("--name", default=None, help="model id in the API (default: --model)")
    s.add_argument(
        "--max-queue", type=int, default=256, help="sequences waiting beyond which requests get 503"
    )
    s.set_defaults(func=_cmd_serve)

    from conversion import generate as generate_cli  # flags only; frameworks load when it runs

    g = sub.add_parser(
        "generate",
        help="generate text from a prompt (streamed), in torch, tf "
        "or flax; or an interactive prompt loop",
    )
    generate_cli.add_arguments(g)
    g.set_defaults(func=generate_cli.run)
    return p


def _quiet_frameworks() -> None:
    """Keep TensorFlow's C++ and absl start-up banners out of the command's output (a user's
    own setting wins; -v shows them). ``TF_CPP_MIN_LOG_LEVEL`` silences TF's own logging, but
    on CPUs where TF turns its oneDNN custom ops on (AVX512-VNNI / BF16 / AMX) the "oneDNN
    custom operations are on" banner is written through absl before absl's logging is set up,
    which no variable silences: so the one import of ``tensorflow`` (whichever command makes
    it) runs with file descriptor 2 pointed at /dev/null. Its Python errors still surface as
    exceptions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


class _QuietImport:
    """A meta path finder for one top-level package: the import runs as usual, except that the
    package's ``__init__`` executes with file descriptor 2 on /dev/null (see
    :func:`_quiet_frameworks`). It removes itself on first use."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    """Wraps a loader: ``exec_module`` with file descriptor 2 on /dev/null, then puts the
    original loader back on the module; anything else goes to the original."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, attr):  # create_module, get_resource_reader, ...
        return getattr(self._loader, attr)

    def exec_module(self, module) -> None:
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            self._loader.exec_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        _quiet_frameworks()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a user's file can fail in any library: one line, -v for more
        if args.verbose:
            raise
        print(f"gpt2 {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


#: errors whose message already says what is wrong; others get their type name prepended
_PLAIN_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


def _one_line(e: BaseException) -> str:
    """``e`` as one line: its message (with the type when that says more), newlines folded,
    capped at 500 characters; the traceback is what ``-v`` is for."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, MemoryError) or not msg:
        msg = f"{type(e).__name__}{': ' + msg if msg else ''} (run with -v for the traceback)"
    elif not isinstance(e, _PLAIN_ERRORS) or type(e).__module__.startswith(("tensorflow", "jax")):
        msg = f"{type(e).__name__}: {msg}"
    msg = " ".join(msg.split())
    return msg if len(msg) <= 500 else msg[:497] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
