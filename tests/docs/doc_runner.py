"""Runs doc blocks (see test_doc_snippets.py): the per-page workspace, the Python worker, shells.

Each page gets its own workspace: a copy of a session-built directory holding a tiny GPT-2
(2 layers, n_embd 48 so that it shards 8 ways, 3 heads, GPT-2's real 50257-token vocabulary,
1024 positions) under the names the docs use (``ckpt``, ``gpt2``, ``path/to/checkpoint``), text
files (``notes/*.txt``, ``corpus/``, ``docs/``), and a ``bin/`` first on PATH whose ``gpt2`` /
``python`` / ``torchrun`` run this checkout. Python blocks run in a worker process per page
(doc_worker.py), so a continued block sees the names its predecessors defined; shell blocks run
in ``bash -euo pipefail``. Every block has a timeout, after which its process group is killed,
so a hang is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import doc_snippets as S
import pytest

WORKER = Path(__file__).with_name("doc_worker.py")
DEFAULT_TIMEOUT = 300.0
BLOCKS = S.all_blocks()


#: the doc tests are split over two test files so that ``pytest -n 2 --dist loadfile`` runs
#: them on both workers; pages are assigned by measured run time, new pages by name.
SHARD_OF = {
    "README.md": 0,
    "docs/training.md": 0,
    "docs/cpu-kernels.md": 0,
    "docs/keras.md": 1,
    "docs/jax.md": 1,
    "docs/pytorch.md": 1,
    "docs/tokenizer.md": 1,
    "docs/conversion.md": 1,
}
SHARDS = 2


def shard_of(path: str) -> int:
    return SHARD_OF.get(path, zlib.crc32(path.encode()) % SHARDS)


def params(shard: int):
    """pytest params (one per block) of the pages in ``shard``, with their marks."""
    for b in BLOCKS:
        if shard_of(b.path) != shard:
            continue
        marks = []
        if b.error:  # a malformed directive fails, whatever else the comment says
            yield pytest.param(b, id=b.id)
            continue
        if b.slow:
            marks.append(pytest.mark.slow)
        if b.skip:
            marks.append(pytest.mark.skip(reason=b.skip))
        if b.xfail:
            marks.append(pytest.mark.xfail(reason=b.xfail, strict=True))
        yield pytest.param(b, id=b.id, marks=marks)


# --------------------------------------------------------------------------- workspace
def _build_base(base: Path) -> None:
    """The tiny checkpoint, the data files and the command shims, built once per session."""
    from gpt2_core import checkpoint
    from gpt2_core.config import GPT2Config
    from gpt2_core.generation_config import GenerationConfig
    from gpt2_core.init import random_state_dict
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    cfg = GPT2Config(
        n_layer=2,
        n_embd=48,
        n_head=3,
        vocab_size=50257,
        n_positions=1024,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    model = base / "ckpt"
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0, std=0.3), cfg, model, "lm")
    GPT2TokenizerFast.from_pretrained(S.ROOT / "gpt2_core" / "assets" / "gpt2").save_pretrained(
        model
    )
    GenerationConfig.from_model_config(cfg).save_pretrained(model)
    for name in S.MODEL_DIRS[1:]:
        shutil.copytree(model, base / name)
    for name in ("vocab.json", "merges.txt"):  # GPT2Tokenizer("vocab.json", "merges.txt")
        shutil.copy(model / name, base / name)
    # `gpt2 train ... --data docs/` trains on this documentation
    shutil.copytree(S.ROOT / "docs", base / "docs")

    text = (S.ROOT / "tests" / "fixtures" / "training" / "corpus.md").read_text("utf-8")
    half = len(text) // 2
    for d in ("notes", "corpus"):
        (base / d).mkdir()
        (base / d / "part1.txt").write_text(text[:half], "utf-8")
        (base / d / "part2.txt").write_text(text[half:], "utf-8")


def _write_shims(bindir: Path) -> None:
    bindir.mkdir()
    py = sys.executable
    torchrun = Path(py).with_name("torchrun")
    shims = {
        "python": f'exec "{py}" "$@"\n',
        "python3": f'exec "{py}" "$@"\n',
        # train runs are shrunk: argparse keeps the last of a repeated flag
        "gpt2": (
            'if [ "${1:-}" = train ]; then set -- "$@" $GPT2_DOCTEST_TRAIN_ARGS; fi\n'
            f'exec "{py}" -m conversion "$@"\n'
        ),
        "torchrun": (
            'case " $* " in *" -m conversion train "*) '
            'set -- "$@" $GPT2_DOCTEST_TRAIN_ARGS;; esac\n'
            f'exec "{py}" "{torchrun}" "$@"\n'
            if torchrun.exists()
            else 'echo "torchrun is not installed" >&2; exit 127\n'
        ),
    }
    for name, body in shims.items():
        p = bindir / name
        p.write_text("#!/usr/bin/env bash\n" + body)
        p.chmod(0o755)


class DocEnv:
    def __init__(self, root: Path):
        self.root = root
        self.base = root / "base"
        self.base.mkdir()
        _build_base(self.base)
        self.bin = root / "bin"
        _write_shims(self.bin)
        home = root / "home"
        home.mkdir()
        env = dict(os.environ)
        env.pop("PYTEST_CURRENT_TEST", None)
        env.update(
            {
                "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(S.ROOT), env.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1",
                "HF_HOME": str(home / "hf"),  # an empty hub cache: nothing downloaded
                "GPT2_ZOO_CACHE": env.get("GPT2_ZOO_CACHE", str(root / "zoo-cache")),
                "GPT2_DOCTEST_TRAIN_ARGS": S.SMALL_TRAIN_ARGS,
                "OMP_NUM_THREADS": "1",
                "GPT2_ZOO_CPU_THREADS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1",
                "MPLBACKEND": "Agg",
            }
        )
        self.env = env
        self.pages: dict[str, Page] = {}

    def page(self, path: str) -> Page:
        for other, page in self.pages.items():  # blocks run page by page: free the others
            if other != path:
                page.stop()
        if path not in self.pages:
            ws = self.root / "pages" / path.replace("/", "__")
            shutil.copytree(self.base, ws)
            self.pages[path] = Page(self, path, ws, [b for b in BLOCKS if b.path == path])
        return self.pages[path]

    def close(self) -> None:
        for p in self.pages.values():
            p.stop()


def _free_port() -> int:
    """A TCP port nobody listens on now: a block's rendezvous / coordinator address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class BlockFailed(AssertionError):
    pass


class Page:
    """One page's workspace, its Python worker and which blocks ran there."""

    def __init__(self, env: DocEnv, path: str, ws: Path, blocks: list[S.Block]):
        self.env, self.path, self.ws, self.blocks = env, path, ws, blocks
        self.log = env.root / "logs" / (path.replace("/", "__") + ".log")
        self.log.parent.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.proc_env: dict[str, str] = {}
        self.chain: list[str] = []  # ids of the blocks run in the current namespace
        self.done: set[str] = set()  # shell blocks that succeeded
        self.failed: set[str] = set()  # blocks that failed (their continuations fail fast)

    # ------------------------------------------------------------------ common
    def _chain(self, block: S.Block) -> list[S.Block]:
        """``block`` and the earlier blocks of its language it continues, oldest first."""
        same = [b for b in self.blocks if (b.lang == "python") == (block.lang == "python")]
        i = same.index(block)
        chain = [block]
        while chain[0].cont and i > 0:
            i -= 1
            chain.insert(0, same[i])
        return chain

    def _env(self, block: S.Block) -> dict[str, str]:
        return {**self.env.env, **block.env}

    def _log_tail(self, start: int) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return ""
        return data[-6000:].decode("utf-8", "replace")

    def run(self, block: S.Block) -> None:
        chain = self._chain(block)
        failed = [b.id for b in chain[:-1] if b.id in self.failed]
        try:
            if failed:  # replaying a block that failed would only fail again, slowly
                raise BlockFailed(f"{block.id} continues {failed[-1]}, which failed")
            self._run(chain)
        except BlockFailed:
            self.failed.add(block.id)
            raise

    def _run(self, chain: list[S.Block]) -> None:
        block = chain[-1]
        if block.lang == "python":
            self._run_python(chain)
        else:
            for b in chain[:-1]:
                if b.id not in self.done:
                    self._run_shell(b, what=f"{b.id} (continued by {block.id})")
            self._run_shell(block)

    # ------------------------------------------------------------------ shell
    def _run_shell(self, block: S.Block, what: str | None = None) -> None:
        timeout = block.timeout or DEFAULT_TIMEOUT
        try:
            scripts = S.shell_scripts(block)
        except S.DirectiveError as e:
            raise BlockFailed(f"{block.id}: {e}") from None
        # one process per script: a `parallel` block's commands run at the same time (one per
        # "host"), each writing to its own log
        logs = [
            open(self.env.root / "logs" / f"{block.id.replace('/', '__')}.{i}.out", "wb+")  # noqa: SIM115
            for i in range(len(scripts))
        ]
        env = {
            "DOCTEST_PORT": str(_free_port()),
            "DOCTEST_PORT2": str(_free_port()),
            **self._env(block),
        }
        procs = [
            subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.ws,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for script, log in zip(scripts, logs)
        ]
        deadline = time.monotonic() + timeout
        try:
            timed_out = False
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
            if timed_out or any(p.returncode != 0 for p in procs):
                for p in procs:  # a failed "host" leaves the others waiting: stop them
                    _kill(p)
            texts = []
            for log in logs:
                log.seek(0)
                texts.append(log.read().decode("utf-8", "replace"))
        finally:
            for log in logs:
                log.close()
        text = "\n".join(
            f"--- process {i}:\n{t[-6000:]}" if len(texts) > 1 else t[-8000:]
            for i, t in enumerate(texts)
        )
        if timed_out:
            raise BlockFailed(f"{what or block.id}: timed out after {timeout:.0f} s\n{text}")
        codes = [p.returncode for p in procs]
        if any(codes):
            raise BlockFailed(f"{what or block.id}: exit status {codes}\n{text}")
        self.done.add(block.id)

    # ------------------------------------------------------------------ python
    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)
            self.proc = None
        self.chain = []

    def _start(self, env: dict[str, str]) -> None:
        self.stop()
        log = open(self.log, "ab")  # noqa: SIM115 - the worker owns it until it exits
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=self.ws,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.proc_env = env

    def _request(self, req: dict, timeout: float, what: str) -> None:
        start = self.log.stat().st_size if self.log.exists() else 0
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        line = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise BlockFailed(
                    f"{what}: timed out after {timeout:.0f} s\n{self._log_tail(start)}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                line = self.proc.stdout.readline()
                break
        if not line:
            code = self.proc.wait()
            self.proc = None
            self.chain = []
            raise BlockFailed(
                f"{what}: the Python worker died (exit status {code})\n{self._log_tail(start)}"
            )
        resp = json.loads(line)
        if not resp["ok"]:
            raise BlockFailed(
                f"{what} failed:\n{resp['error']}\n--- output:\n{self._log_tail(start)[-3000:]}"
            )

    def _exec(self, block: S.Block, what: str) -> None:
        timeout = block.timeout or DEFAULT_TIMEOUT
        for name in block.setup:
            if name not in S.PRELUDES:
                raise BlockFailed(
                    f"{block.id}: unknown setup {name!r}; known: {', '.join(sorted(S.PRELUDES))}"
                )
            self._request(
                {"code": S.PRELUDES[name], "file": f"<setup {name}>", "line": 0},
                timeout,
                f"{what}: setup {name!r}",
            )
        is_doctest = block.code.lstrip().startswith(">>>")
        self._request(
            {
                "code": block.code,
                "file": str(S.ROOT / block.path),
                "line": block.line,
                "doctest": is_doctest,
            },
            timeout,
            what,
        )

    def _run_python(self, chain: list[S.Block]) -> None:
        block = chain[-1]
        env = self._env(block)
        if self.proc is None or self.proc.poll() is not None or env != self.proc_env:
            self._start(env)
        ids = [b.id for b in chain[:-1]]
        if not ids or self.chain != ids:
            self._request({"reset": True}, 60, f"{block.id}: reset")
            self.chain = []
            for b in chain[:-1]:
                self._exec(b, f"{b.id} (continued by {block.id})")
                self.chain.append(b.id)
        self.chain = ids  # if the block fails, a later continuation re-runs the chain
        self._exec(block, block.id)
        self.chain = [*ids, block.id]


def run_block(block: S.Block, env: DocEnv) -> None:
    """Run one block; a failure is a plain pytest failure with the block's output."""
    if block.error:
        pytest.fail(f"{block.id}: {block.error}", pytrace=False)
    page = env.page(block.path)
    try:
        page.run(block)
        failure = None
    except BlockFailed as e:
        failure = str(e)
    if failure:
        pytest.fail(failure, pytrace=False)
