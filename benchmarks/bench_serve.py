"""``gpt2 serve`` throughput with 1 and 8 concurrent clients.

Starts ``gpt2 serve`` in a subprocess on 127.0.0.1 (a free port) with the seeded demo model
(GPT-2's vocabulary, 4 layers, 256 wide: 16.4M parameters; or ``--model DIR``), then for each
client count runs that many client threads, each sending ``--requests`` streamed greedy
completions of ``--max-tokens`` tokens one after another, and reports:

* aggregate completion tokens/s over the wall time, requests/s;
* per request: latency and time to first streamed token (p50 / p95);
* the server's own generation tokens/s (``usage.tokens_per_second``, queueing excluded).

The server runs one generation at a time from a FIFO queue, so with 8 clients the aggregate
throughput stays that of one stream while latency grows with the queue: the figures show it.

    python benchmarks/bench_serve.py                      # torch, 1 and 8 clients
    python benchmarks/bench_serve.py --framework flax --clients 1 4 8
    python benchmarks/bench_serve.py --quick              # smoke run (make bench)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "The history of the city begins",
    "In the morning the market",
    "Scientists found that",
    "The recipe calls for",
    "When the train arrived",
    "Our results show",
    "The old lighthouse keeper",
    "In a distant galaxy",
]


def seeded_checkpoint(out: Path) -> Path:
    from conversion.demo import DEMO_CONFIG
    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config
    from gpt2_core.init import random_state_dict
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    cfg = GPT2Config(**DEMO_CONFIG)
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0), cfg, out, "lm")
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(out)
    return out


def start_server(model: str, framework: str) -> tuple[subprocess.Popen, int]:
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
            model,
            "--framework",
            framework,
            "--port",
            str(port),
            "--name",
            "bench",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("gpt2 serve did not start:\n" + proc.stdout.read()[-3000:])
        time.sleep(0.2)


def one_request(port: int, prompt: str, max_tokens: int) -> dict:
    """A streamed greedy completion: latency, time to first token, tokens, server tok/s."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    r = conn.getresponse()
    assert r.status == 200, r.read()
    first, usage = None, None
    while True:
        line = r.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if first is None and any(c["text"] for c in event["choices"]):
            first = time.perf_counter() - t0
        usage = event.get("usage") or usage
    conn.close()
    return {
        "latency": time.perf_counter() - t0,
        "ttft": first or 0.0,
        "tokens": usage["completion_tokens"],
        "server_tps": usage["tokens_per_second"],
    }


def run_clients(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(requests):
            r = one_request(port, PROMPTS[(i + j) % len(PROMPTS)], max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    def pct(key: str, q: float) -> float:
        xs = sorted(r[key] for r in results)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "wall": wall,
        "tok_s": tokens / wall,
        "req_s": len(results) / wall,
        "lat50": pct("latency", 0.5),
        "lat95": pct("latency", 0.95),
        "ttft50": pct("ttft", 0.5),
        "ttft95": pct("ttft", 0.95),
        "server_tps": statistics.median(r["server_tps"] for r in results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=None, help="checkpoint directory (default: seeded demo model)"
    )
    p.add_argument("--framework", default="torch", choices=["torch", "tf", "flax"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="1 request per client, 8 tokens")
    args = p.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 1, 8
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(seeded_checkpoint(Path(tmp) / "demo"))
        proc, port = start_server(model, args.framework)
        try:
            one_request(port, "warm up", args.max_tokens)  # compile the shapes used below
            rows = [run_clients(port, c, args.requests, args.max_tokens) for c in args.clients]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    what = args.model or "seeded demo model (16.4M parameters)"
    print(
        f"gpt2 serve, {args.framework}, {what}: streamed greedy completions of "
        f"{args.max_tokens} tokens, {args.requests} per client, one worker + FIFO queue"
    )
    print(
        f"{'clients':>7} {'requests':>8} {'tok/s':>8} {'req/s':>7} {'latency p50/p95 s':>18} "
        f"{'first token p50/p95 s':>22} {'server tok/s':>12}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['tok_s']:>8.1f} {r['req_s']:>7.2f} "
            f"{r['lat50']:>8.3f} / {r['lat95']:<7.3f} {r['ttft50']:>10.3f} / {r['ttft95']:<9.3f} "
            f"{r['server_tps']:>12.1f}"
        )
    base = rows[0]["tok_s"]
    for r in rows[1:]:
        print(
            f"{r['clients']} clients vs {rows[0]['clients']}: throughput x{r['tok_s'] / base:.2f}, "
            f"median latency x{r['lat50'] / rows[0]['lat50']:.2f}"
        )


if __name__ == "__main__":
    main()
