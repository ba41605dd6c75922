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
    out = subprocess.run(
        [sys.executable, "-m", "conversion", "--help"], capture_output=True, text=True, check=True
    ).stdout
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
    # --force replaces only a directory that holds a checkpoint, never any tree
    assert cli.main(["convert", str(src), str(out), "--to", "tf", "--force"]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err and (out / "keep.txt").exists()
    (out / "config.json").write_text("{}")
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
    assert (
        cli.main(
            [
                "convert",
                str(src),
                str(out),
                "--to",
                "safetensors",
                "--dtype",
                "bf16",
                "--max-shard-size",
                "20KB",
            ]
        )
        == 0
    )
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
    assert (
        cli.main(["demo", "--frameworks", "", "--out", str(tmp_path), "--max-new-tokens", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("yes") == 5 and "demo passed" in out


def test_openai_tf1_round_trip(src, tmp_path):
    """--to openai writes OpenAI's release layout; converting it back is bit-exact."""
    pytest.importorskip("tensorflow")
    import json

    import tensorflow as tf

    oa = tmp_path / "openai"
    assert cli.main(["convert", str(src), str(oa), "--to", "openai"]) == 0
    assert json.loads((oa / "hparams.json").read_text()) == {
        "n_vocab": 257,
        "n_ctx": 32,
        "n_embd": 36,
        "n_head": 3,
        "n_layer": 2,
    }
    assert (oa / "encoder.json").exists()  # vocab.json under OpenAI's name
    shapes = dict(tf.train.list_variables(str(oa / "model.ckpt")))
    assert shapes["model/h0/attn/c_attn/w"] == [1, 36, 108]
    assert shapes["model/h1/ln_2/g"] == [36] and shapes["model/wte"] == [257, 36]
    back = tmp_path / "back"
    assert cli.main(["convert", str(oa), str(back), "--to", "safetensors"]) == 0
    assert (back / "vocab.json").exists()
    _, a, _ = checkpoint.load_pretrained(src, "lm")
    _, b, _ = checkpoint.load_pretrained(back, "lm")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_openai_export_refuses_unrepresentable_config(tmp_path):
    pytest.importorskip("tensorflow")
    cfg = tiny_config(activation_function="relu")
    d = tmp_path / "relu"
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0), cfg, d, "lm")
    assert cli.main(["convert", str(d), str(tmp_path / "o"), "--to", "openai"]) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("native_fmt", ["keras", "nnx"])
def test_backend_native_formats_round_trip(src, tmp_path, native_fmt):
    """--to keras / nnx write each backend's own save format; converting back is bit-exact."""
    pytest.importorskip("tensorflow" if native_fmt == "keras" else "flax")
    out = tmp_path / native_fmt
    assert cli.main(["convert", str(src), str(out), "--to", native_fmt, "--verify"]) == 0
    assert (out / ("model.keras" if native_fmt == "keras" else "nnx_state.msgpack")).is_file()
    back = tmp_path / "back"
    assert cli.main(["convert", str(out), str(back), "--to", "safetensors"]) == 0
    _, a, _ = checkpoint.load_pretrained(src, "lm")
    _, b, _ = checkpoint.load_pretrained(back, "lm")
    assert all(np.array_equal(a[k], b[k]) for k in a)
