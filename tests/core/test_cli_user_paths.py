"""The ``gpt2`` command as users meet it (issue #12): a missing framework is one line and
writes nothing, ``inspect`` knows every directory ``convert`` reads, errors name what they
found, and the OpenAI reader infers the MLP width."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conversion import cli
from gpt2_core import checkpoint, naming
from gpt2_core.config import GPT2Config
from gpt2_core.init import random_state_dict, tiny_config


@pytest.fixture
def ckpt(tmp_path):
    cfg = tiny_config()
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0), cfg, tmp_path / "ckpt", "lm")
    return tmp_path / "ckpt"


def _hide(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a)
    )


@pytest.mark.parametrize(
    "argv,hidden,extra",
    [
        (["--to", "keras"], ("tensorflow",), "tf"),
        (["--to", "openai"], ("tensorflow",), "tf"),
        (["--to", "nnx"], ("jax", "flax"), "flax"),
        (["--to", "tf", "--verify"], ("tensorflow",), "tf"),
        (["--to", "flax", "--verify"], ("torch",), "torch"),
    ],
)
def test_convert_without_the_framework_writes_nothing(
    argv, hidden, extra, ckpt, tmp_path, monkeypatch, capsys
):
    _hide(monkeypatch, *hidden)
    out = tmp_path / "out"
    assert cli.main(["convert", str(ckpt), str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert f"pip install 'gpt2-zoo[{extra}]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_inspect_names_openai_keras_and_nnx_directories(ckpt, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    for to in ("openai", "keras"):
        assert cli.main(["convert", str(ckpt), str(tmp_path / to), "--to", to]) == 0
        capsys.readouterr()
        assert cli.main(["inspect", str(tmp_path / to)]) == 0
        out = capsys.readouterr().out
        assert f"formats:    {to}" in out and "none" not in out


def test_shape_mismatch_is_reported_once_per_key():
    cfg = tiny_config()
    sd = random_state_dict(cfg, "lm", seed=0)
    sd["transformer.h.0.attn.c_attn.weight"] = np.zeros((36, 100), np.float32)
    _, report = naming.normalize_state_dict(sd, cfg, "lm")
    assert [k for k, *_ in report.mismatched] == ["transformer.h.0.attn.c_attn.weight"]
    assert report.missing == []
    assert "missing" not in report.summary()


def test_foreign_model_type_is_named():
    with pytest.raises(ValueError, match="this is a 'bert' config"):
        GPT2Config(model_type="bert")


def test_openai_reader_infers_the_mlp_width(tmp_path):
    pytest.importorskip("tensorflow")
    from conversion import openai_ckpt

    wide = tiny_config(n_inner=50)
    sd = random_state_dict(wide, "lm", seed=0)
    openai_ckpt.save(sd, tiny_config(), tmp_path)  # hparams.json has no n_inner
    assert "n_inner" not in json.loads((tmp_path / "hparams.json").read_text())
    config, loaded = openai_ckpt.load(tmp_path)
    assert config.n_inner == 50
    np.testing.assert_array_equal(
        loaded["transformer.h.1.mlp.c_fc.weight"], sd["transformer.h.1.mlp.c_fc.weight"]
    )


def test_cli_output_has_no_tensorflow_banners(ckpt):
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run(
        [sys.executable, "-m", "conversion", "verify", str(ckpt), "--frameworks", "tf"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    for banner in ("cpu_feature_guard", "oneDNN custom operations", "Unable to register"):
        assert banner not in r.stderr + r.stdout
