"""Flax NNX plumbing of the GPT-2 models that is not the model itself (issue #14).

NNX keeps a module's attributes that are not arrays as static data in its ``GraphDef``, which
``jit`` hashes. So the model keeps a hashable copy of its config (:class:`_StaticGPT2Config`)
and holds its unhashable attributes (``generation_config``, ``load_report``) in
:class:`_Unhashed` boxes compared by identity. :class:`FrameworkMixin`, a base of
``gpt2_flax.modeling.GPT2PreTrainedModel``, declares those two attributes, and gives the
model ``state_dict`` / ``load_state_dict`` (the canonical dict), which ``nn.Module`` gives
torch. ``gpt2_torch`` and ``gpt2_tf`` have a ``_framework.py`` with a ``FrameworkMixin`` of the
same name holding their own framework's plumbing, so the three ``modeling.py`` files keep only
what translates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpt2_core.config import GPT2Config


class _StaticGPT2Config(GPT2Config):
    """A ``GPT2Config`` that can be hashed: NNX keeps module attributes that are not arrays in
    the (hashed) ``GraphDef``, and ``jit`` hashes static arguments. The hash is the JSON text,
    consistent with ``GPT2Config.__eq__`` (which compares ``to_dict()``)."""

    def __hash__(self) -> int:
        return hash(self.to_json_string())


def _static_config(config: GPT2Config) -> GPT2Config:
    if not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a gpt2_core.GPT2Config, got {type(config).__name__}")
    if isinstance(config, _StaticGPT2Config):
        return config
    return _StaticGPT2Config.from_dict(config.to_dict())


class _Unhashed:
    """Holds a Python value that is not hashable (a ``GenerationConfig``, a ``LoadReport``) as
    static NNX data: compared and hashed by identity, so the module's ``GraphDef`` stays
    hashable for ``jit``."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _unhashed_attribute(name: str, doc: str) -> property:
    """A model attribute kept in an :class:`_Unhashed` (reads None until set)."""
    slot = "_" + name

    def get(self):
        holder = vars(self).get(slot)
        return None if holder is None else holder.value

    def set_(self, value):
        setattr(self, slot, _Unhashed(value))

    return property(get, set_, doc=doc)


class FrameworkMixin:
    """NNX-only members of ``GPT2PreTrainedModel`` (which is also an ``nnx.Module``)."""

    generation_config = _unhashed_attribute(
        "generation_config", "The checkpoint's generation_config.json (None: from the config)."
    )
    load_report = _unhashed_attribute(
        "load_report", "What from_pretrained found (a gpt2_core.naming.LoadReport)."
    )

    # -- state dicts (torch's come with nn.Module)
    def state_dict(self) -> dict[str, np.ndarray]:
        """The canonical state dict (HF PyTorch names and layouts, numpy, tied keys included)."""
        from gpt2_flax import weights

        return weights.to_canonical(self)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True):
        """Copy a canonical state dict into this model in place; returns the load report."""
        from gpt2_flax import weights

        return weights.load_canonical(self, state_dict, strict=strict)
