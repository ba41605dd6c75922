"""``gpt2 serve`` in each framework: what comes over HTTP is what that framework's own
``model.generate`` returns (greedy and seeded sampling, plain and streamed), stop strings end
the text, and a client that leaves mid-stream stops the generation (in Flax the streamer's
exception aborts the compiled loop from its io_callback)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from serve_helpers import Client, streamed_texts

from conversion.serve import ServerThread, load_engine
from conversion.serve import engine as engine_mod

FRAMEWORKS = {"torch": ("torch",), "tf": ("tensorflow", "keras"), "flax": ("jax", "flax")}
PROMPT = "In a quiet village by the sea,"


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def served(request, ckpt):
    for mod in FRAMEWORKS[request.param]:
        pytest.importorskip(mod)
    engine = load_engine(str(ckpt), request.param)
    with ServerThread(engine) as url:
        yield engine, Client(url)


def model_generate(engine, ids: list[int], **kwargs) -> str:
    """The framework's own ``model.generate`` on the test thread, decoded up to EOS."""
    fw, model = engine.framework, engine.model
    if fw == "torch":
        import torch

        out = model.generate(torch.tensor([ids]), **kwargs)
    elif fw == "tf":
        out = model.generate(np.array([ids], np.int32), **kwargs)
    else:
        import jax.numpy as jnp

        out = model.generate(jnp.array([ids], jnp.int32), **kwargs)
    new = np.asarray(out)[0, len(ids) :].tolist()
    eos = engine.config.eos_token_id
    return engine.tokenizer.decode(new[: new.index(eos)] if eos in new else new)


def complete(client: Client, **body) -> dict:
    status, _, out = client.post("/v1/completions", body)
    assert status == 200, out
    return out


def test_served_framework(served):
    engine, client = served
    assert client.get("/health")[2]["framework"] == engine.framework


def test_greedy_equals_model_generate(served):
    engine, client = served
    ids = engine.encode(PROMPT)
    for k in (1, 7, 30):
        want = model_generate(engine, ids, max_new_tokens=k)
        body = complete(client, prompt=PROMPT, max_tokens=k, temperature=0)
        assert body["choices"][0]["text"] == want
        events = client.stream({"prompt": PROMPT, "max_tokens": k, "temperature": 0})
        assert events[-1] == "[DONE]" and streamed_texts(events) == {0: want}


def test_seeded_sampling_equals_model_generate(served):
    engine, client = served
    ids = engine.encode(PROMPT)
    want = model_generate(
        engine, ids, max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9, top_k=0, seed=5
    )
    body = complete(client, prompt=PROMPT, max_tokens=20, temperature=0.7, top_p=0.9, seed=5)
    assert body["choices"][0]["text"] == want
    events = client.stream(
        {"prompt": PROMPT, "max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "seed": 5}
    )
    assert streamed_texts(events) == {0: want}


def test_stop_strings(served):
    _, client = served
    full = complete(client, prompt=PROMPT, max_tokens=40, temperature=0)["choices"][0]["text"]
    # a 3-character stop string first occurring in the middle of the text
    start = next(
        i
        for i in range(len(full) // 3, len(full) - 3)
        if full.find(full[i : i + 3]) == i and "\ufffd" not in full[i : i + 3]
    )
    stop = full[start : start + 3]
    body = complete(client, prompt=PROMPT, max_tokens=40, temperature=0, stop=["@@@@", stop])
    (choice,) = body["choices"]
    assert choice["text"] == full[:start] and choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 40
    events = client.stream({"prompt": PROMPT, "max_tokens": 40, "temperature": 0, "stop": stop})
    assert streamed_texts(events) == {0: full[:start]}  # no piece of the stop string leaked
    finals = [c["finish_reason"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert finals == ["stop"]


def test_stream_disconnect_stops_generation(served, monkeypatch):
    engine, client = served
    put = engine_mod._TextStreamer.put

    def slow_put(self, value):  # 20 ms per token, so that the client leaves in the middle
        time.sleep(0.02)
        return put(self, value)

    monkeypatch.setattr(engine_mod._TextStreamer, "put", slow_put)
    cancelled = engine.stats["cancelled"]
    conn = client.connect()
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({"prompt": PROMPT, "max_tokens": 50, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    r = conn.getresponse()
    assert r.status == 200
    assert r.readline().startswith(b"data: ")  # the first token arrived (de-chunked)
    conn.sock.close()
    conn.close()
    deadline = time.monotonic() + 30
    while engine.stats["cancelled"] == cancelled or engine.busy:
        assert time.monotonic() < deadline, "generation did not stop"
        time.sleep(0.02)
    assert engine.last.finish_reason == "cancelled" and len(engine.last.token_ids) < 40
    monkeypatch.undo()
    # the worker (and, in Flax, the compiled program) keep serving
    ids = engine.encode("after")
    assert complete(client, prompt="after", max_tokens=4, temperature=0)["choices"][0][
        "text"
    ] == model_generate(engine, ids, max_new_tokens=4)
