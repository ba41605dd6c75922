"""``gpt2 serve`` over HTTP (torch backend): every endpoint, the page's files, 4xx JSON errors
for bad input, concurrent clients, and a client that goes away."""

from __future__ import annotations

import json
import threading
import time

import pytest
from serve_helpers import CONFIG, Client, streamed_texts

from conversion.serve import ServerThread, is_loopback, load_engine
from conversion.serve import engine as engine_mod

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def served(ckpt):
    engine = load_engine(str(ckpt), "torch")
    with ServerThread(engine) as url:
        yield engine, Client(url)


def greedy(client: Client, prompt, k: int = 8) -> str:
    status, _, body = client.post(
        "/v1/completions", {"prompt": prompt, "max_tokens": k, "temperature": 0}
    )
    assert status == 200, body
    return body["choices"][0]["text"]


# ---------------------------------------------------------------------------- endpoints
def test_health_and_models(served, ckpt):
    engine, client = served
    status, _, h = client.get("/health")
    assert status == 200
    assert h["status"] == "ok" and h["framework"] == "torch" and h["model"] == str(ckpt)
    assert h["n_positions"] == CONFIG["n_positions"] and h["dtype"] == "fp32"
    status, _, m = client.get("/v1/models")
    assert status == 200 and m["object"] == "list"
    assert [d["id"] for d in m["data"]] == [str(ckpt)]
    assert m["data"][0]["object"] == "model" and m["data"][0]["max_model_len"] == 64
    status, _, one = client.get(f"/v1/models/{ckpt}")
    assert status == 200 and one["id"] == str(ckpt)
    status, _, err = client.get("/v1/models/gpt2-xl")
    assert status == 404 and "not served here" in err["error"]["message"]


def test_page_and_static_files_are_served(served):
    _, client = served
    status, headers, html = client.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'id="editor"' in html and "/static/app.js" in html and "/static/style.css" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from elsewhere
    assert "default-src 'self'" in headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        status, headers, text = client.get(f"/static/{name}")
        assert status == 200 and kind in headers["content-type"] and len(text) > 500
        assert "https://" not in text and "http://" not in text


def test_completion_shape_and_usage(served):
    engine, client = served
    status, _, body = client.post(
        "/v1/completions",
        {"prompt": "Hello world", "max_tokens": 5, "temperature": 0, "model": engine.name},
    )
    assert status == 200
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == engine.name and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(engine.encode("Hello world"))
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["tokens_per_second"] > 0


def test_prompt_forms(served):
    """A string, token ids, several strings and several id lists; choices numbered prompt-major."""
    engine, client = served
    a, b = "One two", "Three"
    ids_a = engine.encode(a)
    assert greedy(client, ids_a) == greedy(client, a)
    status, _, body = client.post(
        "/v1/completions", {"prompt": [a, b], "max_tokens": 6, "temperature": 0}
    )
    assert status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [greedy(client, a, 6), greedy(client, b, 6)]
    status, _, body2 = client.post(
        "/v1/completions", {"prompt": [ids_a, engine.encode(b)], "max_tokens": 6, "temperature": 0}
    )
    assert [c["text"] for c in body2["choices"]] == [c["text"] for c in body["choices"]]
    # the empty prompt starts from <|endoftext|>, as GPT-2 does
    assert greedy(client, "") == greedy(client, [CONFIG["bos_token_id"]])


def test_n_and_seed(served):
    """n sequences, choice k seeded with seed + k: the same request gives the same answers."""
    _, client = served
    req = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 7}
    first = client.post("/v1/completions", req)[2]
    again = client.post("/v1/completions", req)[2]
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["text"] for c in again["choices"]]
    assert len(set(texts)) > 1  # different seeds per choice
    one = client.post("/v1/completions", {**req, "n": 1, "seed": 8})[2]
    assert one["choices"][0]["text"] == texts[1]


def test_streaming_sse(served):
    _, client = served
    req = {
        "prompt": "The cat",
        "max_tokens": 12,
        "temperature": 0.8,
        "n": 2,
        "seed": 3,
        "stream_options": {"include_usage": True},
    }
    events = client.stream(req)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "text_completion" for e in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 2
    engine, _ = served
    assert usage["usage"]["prompt_tokens"] == len(engine.encode("The cat"))  # once, not per choice
    finals = [c for e in chunks for c in e["choices"] if c["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1]
    plain = client.post("/v1/completions", {k: v for k, v in req.items() if k != "stream_options"})
    assert streamed_texts(events) == {c["index"]: c["text"] for c in plain[2]["choices"]}
    assert len([e for e in chunks if e["choices"]]) > 4  # token by token, not one blob


# ---------------------------------------------------------------------------- bad input
BAD = [
    ({"max_tokens": 4}, 400, "prompt is required"),
    ({"prompt": "x", "foo": 1}, 400, "unknown field 'foo'"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens must be an integer >= 1"),
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens must be an integer"),
    ({"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens must be an integer"),
    ({"prompt": "x", "max_tokens": True}, 400, "max_tokens must be an integer"),
    ({"prompt": "x", "temperature": -0.1}, 400, "temperature must be a number between 0 and 2"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature must be a number between 0 and 2"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature must be a number"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p must be a number in (0, 1]"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p must be a number in (0, 1]"),
    ({"prompt": "x", "top_k": -1}, 400, "top_k must be an integer >= 0"),
    ({"prompt": "x", "n": 0}, 400, "n must be an integer between 1 and 16"),
    ({"prompt": "x", "n": 17}, 400, "n must be an integer between 1 and 16"),
    ({"prompt": "x", "n": 2, "temperature": 0}, 400, "n > 1 needs temperature > 0"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop takes at most 4"),
    ({"prompt": "x", "stop": [""]}, 400, "stop takes at most 4 non-empty strings"),
    ({"prompt": "x", "stop": 3}, 400, "stop must be a string or a list of strings"),
    ({"prompt": "x", "seed": -1}, 400, "seed must be an integer in [0, 2**31)"),
    ({"prompt": "x", "seed": 2**31}, 400, "seed must be an integer in [0, 2**31)"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream must be true or false"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, 400, "only allowed with stream"),
    ({"prompt": "x", "logprobs": 2}, 400, "logprobs is not supported"),
    ({"prompt": "x", "echo": True}, 400, "echo is not supported"),
    ({"prompt": "x", "model": "gpt2-xl"}, 404, "model 'gpt2-xl' is not served here"),
    ({"prompt": []}, 400, "prompt must be a string"),
    ({"prompt": [1, "a"]}, 400, "prompt must be a string"),
    ({"prompt": {"text": "x"}}, 400, "prompt must be a string"),
    ({"prompt": [50257]}, 400, "token id 50257, outside the model's vocabulary [0, 50257)"),
    ({"prompt": [-3]}, 400, "token id -3, outside"),
    ({"prompt": [5] * 64}, 400, "the prompt is 64 tokens, but this model's context"),
    ({"prompt": [5] * 100, "max_tokens": 1}, 400, "the prompt is 100 tokens"),
    ({"prompt": [5] * 60, "max_tokens": 10}, 400, "set max_tokens to at most 4"),
    ({"prompt": ["a"] * 17, "n": 4, "temperature": 1}, 400, "more than 64 sequences"),
]


@pytest.mark.parametrize("body,status,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_4xx_json(served, body, status, message):
    engine, client = served
    before = dict(engine.stats)
    got, headers, err = client.post("/v1/completions", body)
    assert got == status, err
    assert headers["content-type"].startswith("application/json")
    assert message in err["error"]["message"], err
    assert err["error"]["type"] == "invalid_request_error"
    assert engine.stats == before  # nothing was queued


@pytest.mark.parametrize(
    "raw,status,message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object, got list"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"x" * (2 << 20), 413, "over the 1048576 byte limit"),
    ],
)
def test_bad_bodies(served, raw, status, message):
    _, client = served
    got, _, err = client.post("/v1/completions", raw=raw)
    assert got == status and message in err["error"]["message"]


def test_json_content_type_is_required(served):
    """A cross-origin page can send text/plain without a CORS preflight: refused."""
    _, client = served
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        status, _, err = client.post(
            "/v1/completions", {"prompt": "x"}, headers={"Content-Type": ctype}
        )
        assert status == 415 and "Content-Type must be application/json" in err["error"]["message"]
    status, _, _ = client.post(
        "/v1/completions",
        {"prompt": "x", "max_tokens": 1},
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 200


def test_dtype(ckpt):
    import torch

    engine = engine_mod.Engine.load(str(ckpt), "torch", dtype="bf16")
    assert engine.model.transformer.wte.weight.dtype == torch.bfloat16 and engine.dtype == "bf16"
    result = engine.complete(
        engine.encode("Hello"), engine_mod.Sampling(max_tokens=3, temperature=0)
    )
    assert len(result.token_ids) == 3
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        engine_mod.Engine.load(str(ckpt), "torch", dtype="fp8")


def test_wrong_method_and_path_are_json(served):
    _, client = served
    status, _, err = client.get("/v1/completions")
    assert status == 405 and "Method Not Allowed" in err["error"]["message"]
    status, _, err = client.get("/v1/chat/completions")
    assert status == 404 and err["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------- concurrency
def test_concurrent_clients_get_their_own_answers(served):
    """8 clients at once (the worker serves them one after another from its queue): each gets
    exactly what it gets alone."""
    engine, client = served
    prompts = [f"Prompt number {i} says" for i in range(8)]
    alone = [greedy(client, p, 10) for p in prompts]
    seeded = {"max_tokens": 10, "temperature": 0.9, "top_p": 0.9, "seed": 11}
    alone_sampled = [
        client.post("/v1/completions", {"prompt": p, **seeded})[2]["choices"][0]["text"]
        for p in prompts
    ]
    got: dict = {}
    barrier = threading.Barrier(16)

    def run(i: int, sample: bool) -> None:
        barrier.wait()
        if sample:
            r = client.post("/v1/completions", {"prompt": prompts[i], **seeded})
        else:
            r = client.post(
                "/v1/completions", {"prompt": prompts[i], "max_tokens": 10, "temperature": 0}
            )
        got[i, sample] = r[2]["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i, s)) for i in range(8) for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got[i, False] for i in range(8)] == alone
    assert [got[i, True] for i in range(8)] == alone_sampled


# ---------------------------------------------------------------------------- disconnects
@pytest.fixture
def slow_tokens(monkeypatch):
    """20 ms per generated token, so that a client can leave in the middle."""
    put = engine_mod._TextStreamer.put

    def slow_put(self, value):
        time.sleep(0.02)
        return put(self, value)

    monkeypatch.setattr(engine_mod._TextStreamer, "put", slow_put)


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_plain_request_disconnect_stops_generation(served, slow_tokens):
    engine, client = served
    cancelled = engine.stats["cancelled"]
    conn = client.connect()
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({"prompt": "Tell me", "max_tokens": 50, "temperature": 0}),
        headers={"Content-Type": "application/json"},
    )
    wait_for(lambda: engine.busy)
    time.sleep(0.1)
    conn.close()
    wait_for(lambda: engine.stats["cancelled"] == cancelled + 1)
    wait_for(lambda: not engine.busy)
    assert engine.last.finish_reason == "cancelled" and len(engine.last.token_ids) < 40
    assert greedy(client, "still serving", 3)  # the worker carries on


def test_queued_request_of_a_gone_client_never_runs(served, slow_tokens):
    engine, client = served
    stats = dict(engine.stats)
    first = client.connect()
    first.request(
        "POST",
        "/v1/completions",
        body=json.dumps(
            {"prompt": "A long one", "max_tokens": 50, "temperature": 0, "stream": True}
        ),
        headers={"Content-Type": "application/json"},
    )
    wait_for(lambda: engine.busy)
    second = client.connect()
    second.request(
        "POST",
        "/v1/completions",
        body=json.dumps({"prompt": "Queued", "max_tokens": 50, "temperature": 0}),
        headers={"Content-Type": "application/json"},
    )
    wait_for(lambda: engine.queued == 1)
    second.close()
    time.sleep(0.6)  # the server notices within its 0.25 s poll
    first.close()
    wait_for(lambda: engine.stats["cancelled"] == stats["cancelled"] + 2)
    assert engine.stats["completed"] == stats["completed"]
    assert engine.stats["tokens"] - stats["tokens"] < 50  # only part of the first one ran


def test_full_queue_answers_503(ckpt, slow_tokens):
    engine = load_engine(str(ckpt), "torch", max_queue=1, warmup=False)
    with ServerThread(engine) as url:
        client = Client(url)
        body = json.dumps({"prompt": "Busy", "max_tokens": 50, "temperature": 0})
        running, waiting = client.connect(), client.connect()
        running.request(
            "POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"}
        )
        wait_for(lambda: engine.busy)
        waiting.request(
            "POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"}
        )
        wait_for(lambda: engine.queued == 1)
        status, _, err = client.post("/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 503 and err["error"]["code"] == "queue_full"
        assert "--max-queue 1" in err["error"]["message"]
        running.close()
        waiting.close()
        wait_for(lambda: not engine.busy and engine.queued == 0)


# ---------------------------------------------------------------------------- the command
def test_cli_defaults_to_loopback():
    from conversion.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "gpt2"])
    assert (args.host, args.port, args.framework) == ("127.0.0.1", 8000, "torch")
    assert is_loopback(args.host) and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_gpt2_serve_command(ckpt, tmp_path):
    """The real command in a subprocess: serves, answers, stops cleanly on Ctrl-C (SIGINT)."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conversion",
            "serve",
            "--model",
            str(ckpt),
            "--port",
            str(port),
            "--name",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = proc.stdout.readline()
        assert f"tiny in torch (fp32) on http://127.0.0.1:{port}/" in line, line
        client = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, h = client.get("/health")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        assert status == 200 and h["model"] == "tiny"
        status, _, body = client.post(
            "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3, "temperature": 0}
        )
        assert status == 200 and body["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out


def test_gpt2_serve_reports_bad_checkpoints(tmp_path, capsys):
    from conversion.cli import main

    assert main(["serve", "--model", str(tmp_path / "nowhere")]) == 1
    assert "gpt2 serve: error:" in capsys.readouterr().err
    from gpt2_core import checkpoint
    from gpt2_core.init import random_state_dict, tiny_config

    small = tmp_path / "vocab257"
    cfg = tiny_config()
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0, std=0.3), cfg, small, "lm")
    with pytest.raises(
        FileNotFoundError, match="no tokenizer files .* not GPT-2's; pass --tokenizer"
    ):
        engine_mod.load_tokenizer(str(small), cfg.vocab_size)
    with pytest.raises(ValueError, match="unknown framework 'mxnet'"):
        engine_mod.Engine.load(str(small), framework="mxnet")


def test_serve_modules_import_no_framework():
    """The dependency rule: the server imports a backend only when it loads a model."""
    import subprocess
    import sys

    code = (
        "import sys, conversion.serve, conversion.serve.app, conversion.serve.engine; "
        "print(','.join(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
