"""gpt2_core.hub: local directories, preset ids, and clear offline errors."""

import sys

import pytest

from gpt2_core import hub, presets


def test_local_directory_is_used_as_is(tmp_path):
    assert hub.resolve_dir(tmp_path) == tmp_path
    (tmp_path / "config.json").write_text("{}")
    assert hub.resolve_file(tmp_path, "config.json") == tmp_path / "config.json"
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        hub.resolve_file(tmp_path, "tokenizer.json")
    with pytest.raises(NotADirectoryError):
        hub.resolve_dir(tmp_path / "config.json")


def test_preset_names_map_to_hub_ids():
    assert presets.hub_id("gpt2") == "openai-community/gpt2"
    assert presets.hub_id("distilgpt2") == "distilbert/distilgpt2"
    assert presets.hub_id("someone/model") == "someone/model"


def test_offline_error_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError) as ei:
        hub.resolve_dir("gpt2")
    msg = str(ei.value)
    assert "HF_HUB_OFFLINE" in msg and "local directory" in msg
    assert "openai-community/gpt2" in msg


def test_missing_huggingface_hub_is_explained(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(hub.HubError, match="huggingface_hub is not installed"):
        hub.resolve_dir("someone/model")


def test_network_failure_becomes_hub_error(monkeypatch):
    class FakeHub:
        @staticmethod
        def snapshot_download(*a, **k):
            raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub)
    with pytest.raises(hub.HubError, match="ConnectionError: no route to host"):
        hub.resolve_dir("someone/model")


def test_paths_are_not_mistaken_for_hub_ids():
    with pytest.raises(FileNotFoundError, match="no such directory"):
        hub.resolve_dir("./missing-dir")
    with pytest.raises(FileNotFoundError):
        hub.resolve_dir("/abs/missing/dir")
