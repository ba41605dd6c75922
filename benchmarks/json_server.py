"""A child interpreter timed on request: the benchmarks run transformers this way, so that its
runs alternate with ours in the same session (a slow patch of a shared machine hits both)."""

from __future__ import annotations

import json
import subprocess


class JsonServer:
    """Starts ``cmd``; the child prints one JSON line when ready (kept as :attr:`info`), then
    answers each request line written to its stdin with one JSON line. Other output lines
    (library chatter) are skipped."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("transformers side failed:\n" + self.proc.stderr.read()[-2000:])
            if line.startswith("{"):
                return json.loads(line)

    def request(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)
