"""The HTTP side of ``gpt2 serve``: a Starlette app over an :class:`~conversion.serve.engine.Engine`.

Routes:

* ``GET /`` — the writing page (``static/index.html``, ``app.js``, ``style.css``: plain files,
  no build step, nothing fetched from elsewhere, so it works offline);
* ``POST /v1/completions`` — OpenAI's completions API: ``prompt`` (a string, a list of strings,
  token ids or lists of token ids), ``max_tokens``, ``temperature`` (0 = greedy), ``top_p``,
  ``n``, ``stop``, ``seed``, ``stream`` (server-sent events ending in ``data: [DONE]``) and
  ``stream_options.include_usage``; ``top_k`` as an extension (as vLLM);
* ``GET /v1/models``, ``GET /v1/models/{id}`` — the one served checkpoint;
* ``GET /health`` — framework, dtype, queue length and counters.

User errors are 4xx JSON bodies in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, raised before anything is queued; a 500 means a bug. A client that disconnects
(closes a stream, or gives up on a plain request) sets its request's cancel flag, which stops
its sequences on the worker (or drops them from the queue).

Example:
    >>> from conversion.serve.engine import Engine
    >>> engine = Engine.load("gpt2", framework="flax"); engine.start()   # doctest: +SKIP
    >>> uvicorn.run(create_app(engine), host="127.0.0.1", port=8000)    # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conversion.serve.engine import Engine, QueueFull, Result, Sampling

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20
MAX_N = 16
MAX_CHOICES = 64  # prompts x n in one request
MAX_STOP = 4
SEED_LIMIT = 2**31  # TF takes the seed as an int32
#: the page's own origin only: no CDN, no inline script
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: OpenAI fields accepted only at their neutral value (name -> accepted values)
_NEUTRAL = {
    "echo": (False, None),
    "logprobs": (None,),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "suffix": (None, ""),
}
_KNOWN = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",
    *_NEUTRAL,
}


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status (4xx: the request's fault)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse(
            {
                "error": {
                    "message": self.message,
                    "type": kind,
                    "param": self.param,
                    "code": self.code,
                }
            },
            status_code=self.status,
        )


@dataclass
class CompletionRequest:
    """A validated ``/v1/completions`` body: prompts as token ids and the settings of each
    choice (``choices[k]`` belongs to prompt ``k // n``, as OpenAI numbers them)."""

    prompts: list[list[int]]
    n: int
    sampling: list[Sampling]
    stream: bool
    include_usage: bool


# ---------------------------------------------------------------------------- validation
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _get_int(body: dict, name: str, default: int, lo: int, hi: int | None = None) -> int:
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise APIError(400, f"{name} must be an integer {bound}, got {v!r}", name)
    return v


def _get_number(
    body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or v != v or v > hi or v < lo or (lo_open and v == lo):
        bound = f"in ({lo:g}, {hi:g}]" if lo_open else f"between {lo:g} and {hi:g}"
        raise APIError(400, f"{name} must be a number {bound}, got {v!r}", name)
    return float(v)


def _prompts(body: dict, engine: Engine) -> list[list[int]]:
    if "prompt" not in body or body["prompt"] is None:
        raise APIError(
            400,
            "prompt is required (a string, a list of strings, a list of token "
            "ids or a list of lists of token ids)",
            "prompt",
        )
    p = body["prompt"]
    if isinstance(p, str):
        items: list[Any] = [p]
    elif isinstance(p, list) and p and all(_is_int(x) for x in p):
        items = [p]
    elif (
        isinstance(p, list)
        and p
        and all(
            isinstance(x, str) or (isinstance(x, list) and x and all(_is_int(t) for t in x))
            for x in p
        )
    ):
        items = p  # several prompts: strings or lists of ids
    else:
        raise APIError(
            400,
            "prompt must be a string, a non-empty list of strings, a non-empty "
            "list of token ids or a list of non-empty lists of token ids",
            "prompt",
        )
    vocab = engine.config.vocab_size
    out = []
    for item in items:
        ids = engine.encode(item) if isinstance(item, str) else list(item)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            where = "the tokenizer gave" if isinstance(item, str) else "prompt holds"
            raise APIError(
                400,
                f"{where} token id {bad[0]}, outside the model's vocabulary [0, {vocab})",
                "prompt",
            )
        out.append(ids)
    return out


def parse_completion_request(body: Any, engine: Engine) -> CompletionRequest:
    """Check a ``/v1/completions`` body; raise :class:`APIError` (400/404) naming the problem."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise APIError(
            400,
            f"unknown field {unknown[0]!r} (supported: "
            f"{', '.join(sorted(_KNOWN - set(_NEUTRAL)))})",
            unknown[0],
        )
    for name, neutral in _NEUTRAL.items():
        v = body.get(name)
        if v is not None and not any(v == ok and type(v) is type(ok) for ok in neutral):
            raise APIError(
                400,
                f"{name} is not supported by this server (got {body[name]!r})",
                name,
                "unsupported_parameter",
            )
    model = body.get("model")
    if model is not None and model != engine.name:
        raise APIError(
            404,
            f"model {model!r} is not served here; this server serves "
            f"{engine.name!r} (GET /v1/models)",
            "model",
            "model_not_found",
        )
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        raise APIError(400, "user must be a string", "user")

    max_tokens = _get_int(body, "max_tokens", 16, 1)
    temperature = _get_number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _get_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _get_int(body, "top_k", 0, 0)
    n = _get_int(body, "n", 1, 1, MAX_N)
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < SEED_LIMIT):
        raise APIError(400, f"seed must be an integer in [0, 2**31), got {seed!r}", "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise APIError(400, "stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise APIError(
            400, f"stop takes at most {MAX_STOP} non-empty strings, got {stop!r}", "stop"
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise APIError(400, f"stream must be true or false, got {stream!r}", "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if (
            not isinstance(opts, dict)
            or set(opts) - {"include_usage"}
            or not isinstance(opts.get("include_usage", False), bool)
        ):
            raise APIError(
                400, 'stream_options must be {"include_usage": true|false}', "stream_options"
            )
        if not stream:
            raise APIError(
                400, "stream_options is only allowed with stream: true", "stream_options"
            )
        include_usage = opts.get("include_usage", False)
    if n > 1 and temperature == 0:
        raise APIError(400, "n > 1 needs temperature > 0: greedy search gives one answer", "n")

    prompts = _prompts(body, engine)
    if len(prompts) * n > MAX_CHOICES:
        raise APIError(
            400,
            f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} sequences in one request",
            "n",
        )
    ctx = engine.config.n_positions
    for ids in prompts:
        if len(ids) >= ctx:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, but this model's context "
                f"(n_positions) is {ctx} tokens, which leaves no room to "
                "generate; shorten the prompt",
                "prompt",
                "context_length_exceeded",
            )
        if len(ids) + max_tokens > ctx:
            raise APIError(
                400,
                f"the prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) "
                f"exceeds this model's context of {ctx} tokens; set max_tokens "
                f"to at most {ctx - len(ids)}",
                "max_tokens",
                "context_length_exceeded",
            )
    sampling = [
        Sampling(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=None if seed is None else (seed + k) % SEED_LIMIT,
            stop=stops,
        )
        for k in range(len(prompts) * n)
    ]
    return CompletionRequest(prompts, n, sampling, stream, include_usage)


async def _read_json(request: Request) -> Any:
    """The JSON body, at most MAX_BODY_BYTES (413 beyond), 400 when it is not JSON.

    The content type must be JSON: a web page of another origin can then only send the request
    after a CORS preflight, which this server does not grant, so it cannot make a visitor's
    browser use the local model.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(
            415,
            f"Content-Type must be application/json, got {ctype or 'none'!r} "
            "(curl: -H 'Content-Type: application/json')",
        )
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise APIError(413, f"request body of {size} bytes is over the {MAX_BODY_BYTES} byte limit")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise APIError(413, f"request body is over the {MAX_BODY_BYTES} byte limit")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


# ---------------------------------------------------------------------------- the app
def create_app(engine: Engine) -> Starlette:
    """The Starlette app serving ``engine`` (whose worker must be started)."""
    created = int(time.time())

    def model_card() -> dict[str, Any]:
        return {
            "id": engine.name,
            "object": "model",
            "created": created,
            "owned_by": "gpt2-zoo",
            "framework": engine.framework,
            "dtype": engine.dtype,
            "max_model_len": engine.config.n_positions,
        }

    async def index(request: Request) -> Response:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    async def health(request: Request) -> Response:
        last = engine.last
        return JSONResponse(
            {
                "status": "ok",
                "model": engine.name,
                "framework": engine.framework,
                "dtype": engine.dtype,
                "n_positions": engine.config.n_positions,
                "queued": engine.queued,
                "busy": engine.busy,
                **engine.stats,
                "last_tokens_per_second": None
                if last is None
                else round(last.tokens_per_second, 2),
            }
        )

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> Response:
        if request.path_params["model_id"] != engine.name:
            raise APIError(
                404,
                f"model {request.path_params['model_id']!r} is not served here; "
                f"this server serves {engine.name!r}",
                "model",
                "model_not_found",
            )
        return JSONResponse(model_card())

    async def completions(request: Request) -> Response:
        req = parse_completion_request(await _read_json(request), engine)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def post(*event: Any) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed (server shutdown)
                cancel.set()

        try:
            for k, sampling in enumerate(req.sampling):
                prompt = req.prompts[k // req.n]
                engine.submit(
                    prompt,
                    sampling,
                    cancel=cancel,
                    on_delta=(lambda text, k=k: post("delta", k, text)) if req.stream else None,
                    on_done=lambda result, k=k: post("done", k, result),
                )
        except QueueFull as e:
            cancel.set()
            raise APIError(503, str(e), code="queue_full") from None
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": engine.name,
            "system_fingerprint": f"gpt2-zoo-{engine.framework}",
        }
        prompt_tokens = sum(len(p) for p in req.prompts)  # each prompt once, as OpenAI counts
        if req.stream:
            return StreamingResponse(
                _stream(events, cancel, meta, len(req.sampling), req.include_usage, prompt_tokens),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        results = await _collect(request, events, cancel, len(req.sampling))
        if results is None:  # the client has gone; nobody reads this
            return Response(status_code=499)
        choices = [
            {"text": r.text, "index": k, "logprobs": None, "finish_reason": r.finish_reason}
            for k, r in enumerate(results)
        ]
        return JSONResponse({**meta, "choices": choices, "usage": _usage(results, prompt_tokens)})

    async def api_error(request: Request, exc: Exception) -> Response:
        return exc.response()  # type: ignore[attr-defined]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return APIError(
            exc.status_code,
            f"{request.method} {request.url.path}: {exc.detail}",
            code="not_found" if exc.status_code == 404 else None,
        ).response()

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/models/{model_id:path}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes, exception_handlers={APIError: api_error, HTTPException: http_error}
    )
    app.state.engine = engine
    return app


def _usage(results: list[Result], prompt_tokens: int) -> dict[str, Any]:
    completion = sum(len(r.token_ids) for r in results)
    seconds = sum(r.seconds for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        # not in OpenAI's schema (clients ignore it): the page shows it
        "generation_seconds": round(seconds, 4),
        "tokens_per_second": round(completion / seconds, 2) if seconds > 0 else None,
    }


async def _collect(
    request: Request, events: asyncio.Queue, cancel: threading.Event, total: int
) -> list[Result] | None:
    """Every choice's result, or None when the client disconnected first (then cancelled)."""

    async def watch() -> None:  # a plain request has no other way to notice a gone client
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)
        cancel.set()
        events.put_nowait(("gone", -1, None))

    watcher = asyncio.create_task(watch())
    results: list[Result | None] = [None] * total
    pending = total
    try:
        while pending:
            kind, k, payload = await events.get()
            if kind == "gone":
                logger.info("client disconnected: cancelled its request")
                return None
            if kind == "done":
                if isinstance(payload, BaseException):
                    raise APIError(500, f"generation failed: {type(payload).__name__}: {payload}")
                results[k] = payload
                pending -= 1
    finally:
        watcher.cancel()
        if pending:
            cancel.set()
    return results  # type: ignore[return-value]


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(
    events: asyncio.Queue,
    cancel: threading.Event,
    meta: dict[str, Any],
    total: int,
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[str]:
    """OpenAI's completion chunks; the last chunk of each choice carries its finish_reason.
    When the client disconnects Starlette cancels this generator: ``finally`` then stops the
    request's sequences."""
    results: list[Result] = []
    pending = total
    try:
        while pending:
            kind, k, payload = await events.get()
            if kind == "delta":
                yield _sse(
                    {
                        **meta,
                        "choices": [
                            {"text": payload, "index": k, "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
                continue
            pending -= 1
            if isinstance(payload, BaseException):
                cancel.set()
                yield _sse(
                    {
                        "error": {
                            "message": f"generation failed: {type(payload).__name__}: {payload}",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                break
            results.append(payload)
            yield _sse(
                {
                    **meta,
                    "choices": [
                        {
                            "text": "",
                            "index": k,
                            "logprobs": None,
                            "finish_reason": payload.finish_reason,
                        }
                    ],
                }
            )
        else:
            if include_usage:
                yield _sse({**meta, "choices": [], "usage": _usage(results, prompt_tokens)})
        yield "data: [DONE]\n\n"
    finally:
        if pending:
            logger.info("stream closed early: cancelling its request")
            cancel.set()


__all__ = ["APIError", "CompletionRequest", "create_app", "parse_completion_request"]
