"""The hostile-input corpus (tests/hostile/make_cases.py) through ``gpt2 convert`` and the
readers: every case fails with one line naming the file and the problem, writes nothing, leaks
no byte from outside SRC, and (bomb cases, in a subprocess) stays within memory and time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conversion import cli
from gpt2_core import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import make_cases as mc

REPO = Path(__file__).resolve().parents[2]
#: peak RSS of a bomb case's whole process (interpreter + numpy + h5py + the failed load)
MAX_RSS_MB = 400
MAX_SECONDS = 30


def _no_marker_anywhere(root: Path) -> None:
    """No output (OUT, its temporaries) and nothing written into SRC holds the secret."""
    outputs = [p for p in root.iterdir() if p.name == "out" or p.name.startswith(".out.")]
    for d in [root / "src", *outputs]:
        for p in [d, *d.rglob("*")] if d.is_dir() else [d]:
            if p.is_symlink() or not p.is_file():
                continue
            assert mc.MARKER not in p.read_bytes(), f"{p} holds bytes from outside SRC"


def _check_error(case: mc.Case, err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert case.names in lines[0], lines[0]
    assert __import__("re").search(case.match, lines[0]), lines[0]


@pytest.mark.parametrize("case", [c for c in mc.CASES if not c.bomb], ids=lambda c: c.name)
def test_case_in_process(case, tmp_path, capsys):
    src = case.build(tmp_path)
    out = tmp_path / "out"
    if case.action == "read":
        with pytest.raises(Exception) as e:
            checkpoint.read_state_dict(src)
        err = f"{type(e.value).__name__}: {e.value}"
    else:
        assert cli.main(["convert", str(src), str(out), "--to", "safetensors"]) == 1
        err = capsys.readouterr().err
    _check_error(case, err)
    assert not out.exists()
    assert not (tmp_path / "pwned").exists()
    _no_marker_anywhere(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporaries


@pytest.mark.parametrize("case", [c for c in mc.CASES if c.bomb], ids=lambda c: c.name)
def test_bomb_case_bounded(case, tmp_path):
    src = case.build(tmp_path)
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "tests/hostile/_measure.py"), case.action, str(src)]
    if case.action == "convert":
        argv.append(str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["rc"] == 1, r.stderr
    _check_error(case, r.stderr)
    assert stats["maxrss_mb"] < MAX_RSS_MB, stats
    assert stats["seconds"] < MAX_SECONDS, stats
    assert not out.exists()
    _no_marker_anywhere(tmp_path)


@pytest.mark.parametrize(
    "case", [c for c in mc.CASES if c.reference_refuses is not None], ids=lambda c: c.name
)
def test_safetensors_rules_match_the_reference(case, tmp_path):
    """Each safetensors rule agrees with the reference package (duplicates: we are stricter)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = (case.build(tmp_path) / "model.safetensors").read_bytes()
    if case.reference_refuses:
        with pytest.raises(SafetensorError):
            load(data)
    else:
        load(data)  # the reference keeps one of the duplicates silently; we refuse


def test_corpus_script_lists_and_builds(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "tests/hostile/make_cases.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{len(mc.CASES)} cases" in r.stdout
    assert len(mc.CASES) == len(mc.BY_NAME)  # unique names
