"""Helpers of the ``gpt2 serve`` tests: the tiny config and a small stdlib HTTP client (no extra
dependency) for JSON and server-sent-event requests."""

from __future__ import annotations

import http.client
import json
import urllib.parse

#: 2 layers, n_embd 36, 3 heads as everywhere in the tests, but GPT-2's vocabulary so that the
#: shipped tokenizer applies; 64 positions make the context-length errors cheap to reach
CONFIG = dict(
    n_layer=2,
    n_embd=36,
    n_head=3,
    vocab_size=50257,
    n_positions=64,
    bos_token_id=50256,
    eos_token_id=50256,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)


class Client:
    """JSON and server-sent-event requests to one base URL (loopback only)."""

    def __init__(self, url: str) -> None:
        u = urllib.parse.urlsplit(url)
        assert u.hostname in ("127.0.0.1", "localhost", "::1"), url
        self.host, self.port = u.hostname, u.port

    def connect(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body=None,
        raw: bytes | None = None,
        headers: dict | None = None,
    ):
        """(status, headers, decoded JSON or text)."""
        conn = self.connect()
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(
                method,
                path,
                body=data,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            r = conn.getresponse()
            payload = r.read().decode()
            if r.getheader("content-type", "").startswith("application/json"):
                payload = json.loads(payload)
            return r.status, dict(r.getheaders()), payload
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def stream(self, body: dict) -> list:
        """The ``data:`` payloads of a streamed completion, ``[DONE]`` kept as the string."""
        conn = self.connect()
        try:
            conn.request(
                "POST",
                "/v1/completions",
                body=json.dumps({**body, "stream": True}),
                headers={"Content-Type": "application/json"},
            )
            r = conn.getresponse()
            assert r.status == 200, r.read()
            assert r.getheader("content-type").startswith("text/event-stream")
            events = []
            for block in r.read().decode().split("\n\n"):
                if not block.strip():
                    continue
                assert block.startswith("data: "), block
                data = block[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
            return events
        finally:
            conn.close()


def streamed_texts(events: list) -> dict[int, str]:
    texts: dict[int, str] = {}
    for e in events:
        if isinstance(e, dict):
            for c in e["choices"]:
                texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    return texts
