"""How ``gpt2 convert`` writes: never deletes SRC, replaces only a checkpoint, one writer at a
time, no temporaries left after SIGTERM / SIGKILL, umask honoured; and what still loads: a
Hugging Face cache snapshot (symlinks into blobs/), a poisoned pickle not affecting later loads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conversion import cli
from gpt2_core import checkpoint, io_utils
from gpt2_core.formats import torch_bin

sys.path.insert(0, str(Path(__file__).parent))
import make_cases as mc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(tmp_path):
    return mc._src(tmp_path)


def _convert(src, out, *extra):
    return cli.main(["convert", str(src), str(out), "--to", "pytorch", *extra])


def test_force_never_deletes_src_inside_out(tmp_path, capsys):
    out = tmp_path / "parent"
    src = mc._src(out)  # SRC = parent/src
    assert _convert(src, out, "--force") == 1
    assert "source checkpoint" in capsys.readouterr().err
    assert (src / "model.safetensors").exists()


def test_force_replaces_only_a_checkpoint(src, tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _convert(src, out, "--force") == 1
    assert "holds no checkpoint" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _convert(src, empty) == 0 and (empty / "pytorch_model.bin").exists()
    assert _convert(src, empty, "--force") == 0  # a checkpoint: replaced


def test_a_second_writer_fails_clearly(src, tmp_path, capsys):
    out = tmp_path / "out"
    with io_utils._DirectoryLock(out.absolute()):
        assert _convert(src, out) == 1
    err = capsys.readouterr().err
    assert "being written by another process" in err and str(out) in err
    assert not out.exists()
    assert _convert(src, out) == 0  # the lock is released with the writer
    assert not (tmp_path / ".out.lock").exists()


def test_stale_temporaries_of_dead_processes_are_removed(src, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.{dead.pid}.abc123.tmp"
    stale.mkdir()
    (stale / "pytorch_model.bin").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.{os.getpid() + 0}.keep.tmp"  # ours: alive, kept
    live.mkdir()
    assert _convert(src, tmp_path / "out") == 0
    assert not stale.exists() and live.exists()


def test_a_previous_out_moved_aside_by_a_killed_writer_is_restored(src, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".out.{dead.pid}.xyz.old"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "config.json").write_text("{}")
    io_utils.remove_stale_temporaries(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").exists() and not aside.exists()


def test_sigterm_leaves_no_temporary(src, tmp_path):
    out = tmp_path / "out"
    script = f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from gpt2_core.formats import torch_bin
from conversion import cli
def slow(*a, **k):
    print("writing", flush=True)
    time.sleep(60)
torch_bin.save = slow
sys.exit(cli.main(["convert", {str(src)!r}, {str(out)!r}, "--to", "pytorch"]))
"""
    p = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 130
    assert "interrupted" in p.stderr.read()
    assert not out.exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".out")] == []


def test_umask_is_honoured(src, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert _convert(src, out) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_hf_cache_snapshot_symlinks_into_blobs_are_read(tmp_path):
    """A Hugging Face cache snapshot is made of symlinks into the repository's blobs/."""
    plain = mc._src(tmp_path / "plain")
    repo = tmp_path / "hub" / "models--me--tiny"
    snap = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(plain.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    out = tmp_path / "out"
    assert _convert(snap, out) == 0
    assert (out / "vocab.json").read_text() == "{}" and not (out / "vocab.json").is_symlink()


def test_poisoned_pickle_does_not_change_later_loads(tmp_path):
    good = tmp_path / "good.bin"
    arr = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    torch_bin.save({"w": arr}, good)
    src = mc.bin_build_poison(tmp_path / "case")
    with pytest.raises(torch_bin.UnsafeCheckpointError, match="BUILD"):
        torch_bin.load(src / "pytorch_model.bin")
    back = torch_bin.load(good)["w"]
    assert back.dtype == np.float32 and np.array_equal(back, arr)


def test_sharded_pytorch_checkpoint_still_loads(tmp_path):
    src, sd, _ = mc._bin_sharded(tmp_path)
    _, got, _ = checkpoint.load_pretrained(src, "lm")
    assert all(np.array_equal(got[k], sd[k]) for k in sd)


def test_read_regular_file_refuses_devices_and_fifos(tmp_path):
    with pytest.raises(io_utils.UnsafeFileError, match="not a regular file"):
        io_utils.read_regular_file("/dev/zero", 1 << 20, "config file")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(io_utils.UnsafeFileError, match="not a regular file"):
        io_utils.read_regular_file(tmp_path / "fifo", 1 << 20)  # returns at once, no writer
    (tmp_path / "big.json").write_bytes(b" " * 2000)
    with pytest.raises(io_utils.UnsafeFileError, match="over the 1000-byte limit"):
        io_utils.load_json_file(tmp_path / "big.json", max_bytes=1000)


def test_cli_errors_are_one_line_and_verbose_gives_the_traceback(
    src, tmp_path, capsys, monkeypatch
):
    from gpt2_core import naming

    def boom(*a, **k):
        raise TypeError("something\nspanning lines")

    monkeypatch.setattr(naming, "normalize_state_dict", boom)
    assert _convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TypeError: something spanning lines" in err
    with pytest.raises(TypeError):
        cli.main(["-v", "convert", str(src), str(tmp_path / "out2"), "--to", "pytorch"])


def test_config_json_stays_loadable_after_refusals(src):
    """Sanity: the untouched corpus base converts (the refusals are not blanket ones)."""
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["n_layer"] == 2
    assert checkpoint.load_pretrained(src, "lm")[0].n_layer == 2


@pytest.mark.parametrize("command", [["inspect"], ["verify", "--frameworks", "torch"]])
def test_inspect_and_verify_do_not_hang_on_a_fifo_config(tmp_path, command):
    src = mc.config_fifo(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "conversion", command[0], str(src), *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 1
    assert "config.json" in r.stderr and "not a regular file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
