"""The gpt2 command: help, inspect, convert (atomic, refuses to clobber), demo (numpy path)."""

import subprocess
import sys

import numpy as np
import pytest

from conversion import cli
from gpt2_core import checkpoint
from gpt2_core.init import random_state_dict, tiny_config

CFG = tiny_config()


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    checkpoint.save_pretrained(random_state_dict(CFG, "lm", seed=0, std=0.3), CFG, d, "lm")
    (d / "vocab.json").write_text("{}")
    return d


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "conversion", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("demo", "inspect", "convert"):
        assert cmd in out


def test_inspect(src, capsys):
    assert cli.main(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "safetensors" in out and "GPT2LMHeadModel" in out
    assert f"{CFG.num_parameters('lm'):,} parameters" in out
    assert "tied weights" in out


@pytest.mark.parametrize("to", ["safetensors", "pytorch", "tf", "flax"])
def test_convert_round_trip_is_bit_exact(src, tmp_path, to, capsys):
    out = tmp_path / f"out-{to}"
    assert cli.main(["convert", str(src), str(out), "--to", to]) == 0
    assert (out / "vocab.json").exists()  # tokenizer files travel with the weights
    _, a, _ = checkpoint.load_pretrained(src, "lm")
    _, b, _ = checkpoint.load_pretrained(out, "lm")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert "tied weights stored once" in capsys.readouterr().out


def test_convert_refuses_to_clobber(src, tmp_path, capsys):
    assert cli.main(["convert", str(src), str(src), "--to", "tf"]) == 1
    assert "refusing to overwrite the source" in capsys.readouterr().err
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["convert", str(src), str(out), "--to", "tf"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["convert", str(src), str(out), "--to", "tf", "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "tf_model.h5").exists()


def test_convert_failure_leaves_nothing_behind(src, tmp_path, monkeypatch):
    from gpt2_core.formats import tf_h5

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf_h5, "save", boom)
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), str(out), "--to", "tf"]) == 130
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temporary directory left


def test_convert_dtype_and_shards(src, tmp_path):
    out = tmp_path / "bf16"
    assert cli.main(["convert", str(src), str(out), "--to", "safetensors", "--dtype", "bf16",
                     "--max-shard-size", "20KB"]) == 0
    assert (out / "model.safetensors.index.json").exists()
    raw, info = checkpoint.read_state_dict(out)
    assert info.format == "safetensors-sharded" and len(info.files) > 2
    assert {str(v.dtype) for v in raw.values()} == {"bfloat16"}


def test_convert_reports_missing_keys(src, tmp_path, capsys):
    from gpt2_core.formats import safetensors as st

    sd = st.load_file(src / "model.safetensors", mmap=False)
    del sd["transformer.h.0.ln_1.weight"]
    st.save_file(sd, src / "model.safetensors")
    assert cli.main(["convert", str(src), str(tmp_path / "o"), "--to", "flax"]) == 1
    assert "missing keys" in capsys.readouterr().err


def test_demo_numpy_path(tmp_path, capsys):
    assert cli.main(["demo", "--frameworks", "", "--out", str(tmp_path), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("yes") == 5 and "demo passed" in out
