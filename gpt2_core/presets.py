"""Offline presets: the config.json of each released GPT-2, shipped inside the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: accepted name -> preset file stem. Hub ids map to the same files, so
#: ``GPT2Config.from_pretrained("openai-community/gpt2")`` works offline too.
PRESETS = {
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "distilgpt2": "distilgpt2",
}
HUB_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_BY_ID = {**PRESETS, **{hub_id: name for name, hub_id in HUB_IDS.items()}}


def is_preset(name: str) -> bool:
    return name in _BY_ID


def preset_name(name: str) -> str:
    """Canonical preset name for ``name`` (a preset or its hub id); KeyError if unknown."""
    if name not in _BY_ID:
        raise KeyError(f"unknown GPT-2 preset {name!r}; known: {sorted(PRESETS)}")
    return _BY_ID[name]


def preset_config_dict(name: str) -> dict[str, Any]:
    stem = preset_name(name)
    text = resources.files("gpt2_core").joinpath("presets", f"{stem}.json").read_text("utf-8")
    return json.loads(text)


def hub_id(name: str) -> str:
    """The hub repository of a preset (``gpt2`` -> ``openai-community/gpt2``); other ids unchanged."""
    return HUB_IDS.get(_BY_ID.get(name, ""), name)
