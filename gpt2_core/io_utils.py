"""Small file helpers shared by the readers and writers: atomic writes, safe reads, sizes.

Reading a downloaded checkpoint treats every file as hostile (see ``docs/security.md``):

* :func:`read_regular_file` reads only regular files, with a size cap (a FIFO would block
  forever, a link to ``/dev/zero`` would read until memory runs out);
* :func:`check_inside` refuses a file that resolves outside its checkpoint directory (a symlink
  to ``/etc/shadow`` named ``vocab.json``), except into a Hugging Face cache's own ``blobs/``;
* :func:`load_json_file` adds both and turns deep nesting into an error naming the file.

Writing honours the umask (``mkstemp`` / ``mkdtemp`` create 0600 / 0700, which would make a
shared model directory unreadable) and names temporaries after the writing process so that a
later run can remove those of a process that was killed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: the largest JSON side file read (config.json, indexes, generation_config.json ...); real
#: ones are a few kB, a sharded index of a 100 B-parameter model about 100 kB.
MAX_JSON_BYTES = 64 * 1024 * 1024


class UnsafeFileError(ValueError):
    """A file of a checkpoint that is not a regular file inside it, or too large to be real."""


def _umask() -> int:
    # os.umask can only be read by setting it; done once per call, restored at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_umask(path: str | os.PathLike, mode: int) -> None:
    """Give ``path`` ``mode`` & ~umask (the permissions open()/mkdir() would have given)."""
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~_umask())


def read_regular_file(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file (links followed) of at most
    ``max_bytes``; otherwise :class:`UnsafeFileError` naming it. Never blocks on a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise OSError(e.errno, f"cannot read {what} {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                f"{path}: {what} is not a regular file (a FIFO, device or "
                "socket); refusing to read it"
            )
        if st.st_size > max_bytes:
            raise UnsafeFileError(
                f"{path}: {what} is {st.st_size} bytes, over the "
                f"{max_bytes}-byte limit for such a file"
            )
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while reading
        raise UnsafeFileError(f"{path}: {what} is over the {max_bytes}-byte limit")
    return data


def load_json_file(
    path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """Parse a JSON side file read with :func:`read_regular_file`; every failure (bad UTF-8,
    bad JSON, nesting deep enough to exhaust the recursion limit) is a ``ValueError`` naming
    the file."""
    data = read_regular_file(path, max_bytes, what)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except RecursionError:
        raise ValueError(f"{path}: {what} is nested too deeply to be a real one") from None


def _hf_cache_blobs(root: Path) -> Path | None:
    """``<repo>/blobs`` when ``root`` is a Hugging Face cache snapshot
    ``<cache>/models--owner--name/snapshots/<revision>``, else None."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent / "blobs"
    return None


def check_inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "file") -> Path:
    """``path`` resolved, after checking it lies inside ``root`` (also resolved).

    Symlinks are allowed only when they stay inside the checkpoint directory, or, for a
    Hugging Face cache snapshot, inside that repository's own ``blobs/``; anything else is an
    :class:`UnsafeFileError` naming the link and its target.
    """
    path, root = Path(path), Path(root)
    real, real_root = path.resolve(), root.resolve()
    if real == real_root or real_root in real.parents:
        return real
    blobs = _hf_cache_blobs(root.absolute()) or _hf_cache_blobs(real_root)
    if blobs is not None:
        real_blobs = blobs.resolve()
        if real_blobs in real.parents:
            return real
    raise UnsafeFileError(
        f"{path}: {what} resolves to {real}, outside the checkpoint directory "
        f"{root}; refusing to read it"
    )


def check_weight_file(
    path: str | os.PathLike, root: str | os.PathLike | None = None, what: str = "weights file"
) -> Path:
    """``path`` if it is a regular file inside ``root`` (default: its own directory)."""
    path = Path(path)
    check_inside(path, path.parent if root is None else root, what)
    try:
        st = os.stat(path)
    except OSError as e:
        raise OSError(e.errno, f"cannot read {what} {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{path}: {what} is not a regular file; refusing to read it")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename.

    A reader never sees a half-written file, and an error leaves the old file (if any) intact.
    """
    with atomic_output_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file next to ``path``; on clean exit it is renamed to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _chmod_umask(tmp, 0o666)  # mkstemp's 0600 would hide a shared checkpoint from its group
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: the largest side file copied by ``gpt2 convert`` (tokenizer.json of GPT-2 is 1.4 MB)
MAX_SIDE_FILE_BYTES = 256 * 1024 * 1024


def copy_side_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    root: str | os.PathLike,
    max_bytes: int = MAX_SIDE_FILE_BYTES,
) -> Path:
    """Copy ``src`` (a tokenizer or generation file of the checkpoint ``root``) to ``dst`` as a
    new regular file, after checking it is a regular file inside ``root``: a symlink to
    ``/etc/shadow`` named ``vocab.json`` is refused, never copied into the output."""
    check_inside(src, root, "side file")
    data = read_regular_file(src, max_bytes, "side file")
    dst = Path(dst)
    with open(dst, "xb") as f:  # (x: never follow a link planted at the destination)
        f.write(data)
    return dst


_STALE_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(tmp|old)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.<pid>.*.tmp`` / ``.old`` siblings of ``path`` left by a process that
    died (SIGKILL, power loss) while writing it; returns what was removed."""
    path = Path(path).absolute()
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _STALE_RE.match(entry.name)
        if not m or m.group("name") != path.name or int(m.group("pid")) == os.getpid():
            continue
        if _pid_alive(int(m.group("pid"))) or entry.is_symlink() or not entry.is_dir():
            continue
        if m.group(3) == "old" and not path.exists() and (entry / "x").is_dir():
            # killed between moving the previous OUT aside and renaming the new one in:
            # put the previous one back rather than lose it
            os.replace(entry / "x", path)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


class _DirectoryLock:
    """An exclusive ``flock`` on ``.<name>.lock`` next to the output: a second writer of the
    same directory fails at once instead of silently replacing the first one's result."""

    def __init__(self, path: Path) -> None:
        self.lock_path = path.parent / f".{path.name}.lock"
        self.fd: int | None = None

    def __enter__(self) -> _DirectoryLock:
        import fcntl

        while True:
            fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise FileExistsError(
                        f"{self.lock_path.parent / self.lock_path.name[1:-5]} is being written "
                        f"by another process (lock {self.lock_path}); try again when it is done"
                    ) from None
                raise
            # the previous holder may have unlinked the file after we opened it: retry then
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) so the temporaries are removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    protect: tuple[str | os.PathLike, ...] = (),
    replaceable=None,
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on clean exit it replaces ``path``.

    On any error, Ctrl-C or SIGTERM the temporary directory is removed and ``path`` is
    untouched, so a checkpoint directory is either complete or absent; the temporaries of a
    process killed outright are removed by the next run. A lock makes a concurrent second
    writer of ``path`` fail clearly. ``overwrite`` replaces an existing ``path`` only when it
    is an empty directory or ``replaceable(path)`` says yes, and never when it is or contains
    one of ``protect`` (e.g. the conversion's source).
    """
    path = Path(path).absolute()
    for p in protect:
        p = Path(p).resolve()
        if path.exists() and (p == path.resolve() or path.resolve() in p.parents):
            raise ValueError(f"refusing to replace {path}: it holds the source {p}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def check_target() -> None:
        if not path.exists() and not path.is_symlink():
            return
        if path.is_symlink() or not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory; refusing to replace it")
        if not any(path.iterdir()):
            return
        if not overwrite:
            raise FileExistsError(
                f"{path} exists and is not empty (pass overwrite/--force to replace it)"
            )
        if replaceable is not None and not replaceable(path):
            raise FileExistsError(
                f"{path} is not empty and holds no checkpoint; refusing to replace it even "
                "with --force (remove it yourself if that is what you want)"
            )

    check_target()
    with _DirectoryLock(path), _sigterm_as_interrupt():
        remove_stale_temporaries(path)
        tmp = Path(
            tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        )
        _chmod_umask(tmp, 0o777)  # mkdtemp's 0700 would hide a shared checkpoint
        try:
            yield tmp
            check_target()  # (again: the directory may have appeared meanwhile)
            if path.exists():
                old = Path(
                    tempfile.mkdtemp(
                        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".old"
                    )
                )
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def parse_size(size: int | str) -> int:
    """Parse ``"2GB"`` (10**9, as transformers), ``"500MiB"`` (2**20) or an int into bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"size must be an int or a string like '2GB', got {type(size).__name__}")
    m = _SIZE_RE.match(size)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot parse size {size!r}: use e.g. '2GB', '500MB' or '1GiB'")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return n


def unique_keys(error: type[Exception], where: str) -> Callable[[list[tuple[Any, Any]]], dict]:
    """An ``object_pairs_hook`` (json, msgpack) that raises ``error`` naming a repeated key.

    Python's json and msgpack keep the last of two equal keys silently; a checkpoint that says
    two things about one tensor is refused instead.

    Example:
        >>> json.loads('{"a": 1}', object_pairs_hook=unique_keys(ValueError, "the header"))
        {'a': 1}
    """

    def hook(pairs: list[tuple[Any, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise error(f"duplicate key {k!r} in {where}")
            out[k] = v
        return out

    return hook
