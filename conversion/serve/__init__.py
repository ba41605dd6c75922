"""``gpt2 serve``: a local "Write With Transformer" page and an OpenAI-style HTTP API.

``gpt2 serve --model DIR_OR_ID --framework torch|tf|flax`` loads the checkpoint in that
framework and serves, on 127.0.0.1:8000 by default:

* ``/`` — a text editor that proposes continuations of the text before the cursor (Tab or a
  click inserts one), with settings for length, temperature, top-p and number of suggestions;
* ``/v1/completions`` (streaming or not), ``/v1/models``, ``/health``.

Needs the ``serve`` extra (``pip install 'gpt2-zoo[serve]'``: Starlette and uvicorn). Modules:
:mod:`~conversion.serve.engine` (model loading and the generation queue),
:mod:`~conversion.serve.app` (routes and validation), ``static/`` (the page). See
docs/serving.md.

Example:
    >>> from conversion.serve import ServerThread, load_engine          # doctest: +SKIP
    >>> with ServerThread(load_engine("gpt2", "torch")) as url:        # doctest: +SKIP
    ...     print(url)                                                  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _need_serve_extra() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"gpt2 serve needs the serve extra ({e}): pip install 'gpt2-zoo[serve]'"
        ) from e


def load_engine(
    model: str,
    framework: str = "torch",
    dtype: str | None = None,
    tokenizer: str | None = None,
    name: str | None = None,
    warmup: bool = True,
    max_queue: int = 256,
) -> Any:
    """Load ``model`` in ``framework`` and start its generation worker."""
    from conversion.serve.engine import Engine

    engine = Engine.load(
        model, framework=framework, dtype=dtype, tokenizer=tokenizer, name=name, max_queue=max_queue
    )
    engine.start(warmup=warmup)
    return engine


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerThread:
    """uvicorn serving an engine on a background thread (tests, benchmarks, notebooks).

    ``port=0`` picks a free port; the context manager yields the base URL and stops the server
    (and the engine's worker) on exit.
    """

    def __init__(
        self, engine: Any, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning"
    ) -> None:
        _need_serve_extra()
        import uvicorn

        from conversion.serve.app import create_app

        self.engine = engine
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            create_app(engine),
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gpt2-serve-http", daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(
    model: str,
    framework: str = "torch",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    dtype: str | None = None,
    tokenizer: str | None = None,
    name: str | None = None,
    max_queue: int = 256,
) -> int:
    """``gpt2 serve``: load, warm up, serve until Ctrl-C."""
    _need_serve_extra()
    import uvicorn

    from conversion.serve.app import create_app

    if not is_loopback(host):
        logger.warning(
            "serving on %s: anyone who can reach this address can use the model "
            "(there is no authentication)",
            host,
        )
    engine = load_engine(
        model, framework, dtype=dtype, tokenizer=tokenizer, name=name, max_queue=max_queue
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"gpt2 serve: {engine.name} in {framework} ({engine.dtype}) on http://{shown}:{port}/ "
        f"(API: /v1/completions, /v1/models, /health); Ctrl-C stops",
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(engine),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        engine.close()
    return 0


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerThread", "is_loopback", "load_engine", "serve"]
