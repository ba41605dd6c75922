"""The Hugging Face cache, offline (issue #12): ``from_pretrained("openai-community/gpt2")``
with ``HF_HUB_OFFLINE=1`` reads the cached snapshot in every backend and in the CLI; a legacy
``models--gpt2`` cache is found for the id ``gpt2``; errors name ``hf download``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from conversion import cli
from gpt2_core import checkpoint, hub
from gpt2_core.init import random_state_dict, tiny_config


def make_cache(root: Path, repo: str, cfg=None, commit: str = "0123abcd" * 5) -> Path:
    """A hub cache laid out as huggingface_hub writes it: blobs named by hash, a snapshot of
    symlinks into them, refs/main naming the snapshot."""
    cfg = cfg or tiny_config()
    src = root / "_src"
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=3, std=0.3), cfg, src, "lm")
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_cache_dir_follows_huggingface_hub(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hub.cache_dir() == Path("~/.cache/huggingface/hub").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert hub.cache_dir() == tmp_path / "x" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"


@pytest.mark.parametrize(
    "cached_as,asked_as",
    [
        ("openai-community/gpt2", "openai-community/gpt2"),
        ("openai-community/gpt2", "gpt2"),
        ("gpt2", "gpt2"),  # a legacy cache (models--gpt2)
        ("gpt2", "openai-community/gpt2"),
    ],
)
def test_offline_reads_the_cache(offline_cache, cached_as, asked_as):
    snap = make_cache(offline_cache, cached_as)
    assert hub.resolve_dir(asked_as) == snap
    assert hub.resolve_file(asked_as, "config.json") == snap / "config.json"
    cfg, sd, _ = checkpoint.load_pretrained(asked_as, "lm")
    assert cfg.n_embd == 36 and "lm_head.weight" in sd


def test_offline_miss_names_the_cache_and_hf_download(offline_cache):
    with pytest.raises(hub.HubError) as ei:
        hub.resolve_dir("gpt2")
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE" in msg and str(offline_cache) in msg
    assert "models--openai-community--gpt2" in msg and "models--gpt2" in msg
    assert "hf download openai-community/gpt2" in msg and "huggingface-cli" not in msg


def test_network_failure_falls_back_to_the_cache(tmp_path, monkeypatch):
    import sys

    class DownHub:
        @staticmethod
        def snapshot_download(*a, **k):
            raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", DownHub)
    snap = make_cache(tmp_path, "openai-community/gpt2")
    assert hub.resolve_dir("gpt2") == snap
    # without huggingface_hub at all, the cache still serves
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert hub.resolve_dir("gpt2") == snap


@pytest.mark.parametrize("framework", ["torch", "tf", "flax"])
def test_every_backend_loads_from_the_offline_cache(offline_cache, framework):
    pytest.importorskip({"torch": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    make_cache(offline_cache, "openai-community/gpt2")
    ids = np.array([[5, 17, 200]])
    want = None
    from gpt2_core import reference

    cfg, sd, _ = checkpoint.load_pretrained("gpt2", "lm")
    want = reference.lm_logits(sd, cfg, ids)
    if framework == "torch":
        import torch

        from gpt2_torch import GPT2LMHeadModel

        got = (
            GPT2LMHeadModel.from_pretrained("openai-community/gpt2")(torch.from_numpy(ids))
            .logits.detach()
            .numpy()
        )
    elif framework == "tf":
        from gpt2_tf import GPT2LMHeadModel

        got = GPT2LMHeadModel.from_pretrained("openai-community/gpt2")(input_ids=ids).logits
    else:
        from gpt2_flax import GPT2LMHeadModel

        got = GPT2LMHeadModel.from_pretrained("openai-community/gpt2")(input_ids=ids).logits
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_cli_inspect_and_convert_from_the_offline_cache(offline_cache, tmp_path, capsys):
    make_cache(offline_cache, "gpt2")  # legacy layout, asked for by its current id
    assert cli.main(["inspect", "openai-community/gpt2"]) == 0
    assert "safetensors" in capsys.readouterr().out
    out = tmp_path / "flax-out"
    assert cli.main(["convert", "openai-community/gpt2", str(out), "--to", "flax"]) == 0
    assert (out / "flax_model.msgpack").is_file()
