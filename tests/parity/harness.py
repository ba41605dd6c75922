"""One adapter per framework so the parity tests read the same for every backend.

Each adapter builds a model of any head from a canonical state dict, runs a forward pass on
numpy inputs and returns numpy outputs, computes gradients of the loss keyed by canonical
names (in canonical layout), exports the weights back to canonical form, and generates.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config

FIELDS = ("loss", "mc_loss", "logits", "mc_logits", "start_logits", "end_logits",
          "last_hidden_state")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float() if x.dtype.is_floating_point else x.detach()
        return x.numpy()
    return np.asarray(x)


def _collect(out) -> dict[str, np.ndarray]:
    res = {f: _np(out[f]).astype(np.float64) for f in FIELDS if f in out}
    if "hidden_states" in out:
        for i, h in enumerate(out["hidden_states"]):
            res[f"hidden_states/{i}"] = _np(h).astype(np.float64)
    return res


def _total_loss(out):
    return out["loss"] + out["mc_loss"] if "mc_loss" in out else out["loss"]


class TorchAdapter:
    name = "torch"

    def __init__(self) -> None:
        import torch

        import gpt2_torch

        self.torch, self.pkg = torch, gpt2_torch
        from gpt2_torch import weights

        self.weights = weights

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        from gpt2_torch.modeling import MODEL_CLASSES

        model = MODEL_CLASSES[head](GPT2Config.from_dict(cfg.to_dict()))
        self.weights.load_canonical(model, sd)
        if dtype == "bf16":
            model = model.to(self.torch.bfloat16)
        return model.eval()

    def _inputs(self, inputs: dict) -> dict:
        t = self.torch
        return {k: t.from_numpy(np.array(v)).long() if np.issubdtype(v.dtype, np.integer)
                else t.from_numpy(np.array(v)) for k, v in inputs.items()}

    def forward(self, model, inputs: dict) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            out = model(**self._inputs(inputs), output_hidden_states=True)
        return _collect(out)

    def grads(self, model, inputs: dict) -> dict[str, np.ndarray]:
        model.zero_grad(set_to_none=True)
        out = model(**self._inputs(inputs))
        _total_loss(out).backward()
        grads = {k: p.grad.numpy().astype(np.float64) for k, p in model.named_parameters()
                 if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return grads

    def canonical(self, model) -> dict[str, np.ndarray]:
        return self.weights.to_canonical(model)

    def generate(self, model, input_ids, attention_mask, **kwargs) -> np.ndarray:
        t = self.torch
        out = model.generate(t.from_numpy(np.array(input_ids)).long(),
                             attention_mask=t.from_numpy(np.array(attention_mask)).long(), **kwargs)
        return _np(out)


class TFAdapter:
    name = "tf"

    def __init__(self) -> None:
        import tensorflow as tf

        import gpt2_tf
        from gpt2_tf import weights

        self.tf, self.pkg, self.weights = tf, gpt2_tf, weights

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        from gpt2_tf.modeling import MODEL_CLASSES

        kwargs = {"dtype": "bfloat16"} if dtype == "bf16" else {}
        model = MODEL_CLASSES[head](GPT2Config.from_dict(cfg.to_dict()), **kwargs)
        self.weights.load_canonical(model, sd)
        return model

    def _inputs(self, inputs: dict) -> dict:
        return {k: self.tf.constant(v) for k, v in inputs.items()}

    def forward(self, model, inputs: dict) -> dict[str, np.ndarray]:
        out = model(**self._inputs(inputs), output_hidden_states=True, training=False)
        return _collect(out)

    def grads(self, model, inputs: dict) -> dict[str, np.ndarray]:
        vmap = self.weights.variable_map(model)
        with self.tf.GradientTape() as tape:
            out = model(**self._inputs(inputs), training=False)
            loss = _total_loss(out)
        keys = list(vmap)
        gs = tape.gradient(loss, [vmap[k] for k in keys])
        res = {}
        for k, g in zip(keys, gs):
            if g is None:
                continue
            g = np.asarray(self.tf.convert_to_tensor(g), dtype=np.float64)
            if k in getattr(self.weights, "TRANSPOSED", ()) or naming.strip_base_prefix(k).startswith(
                    ("lm_head", "score", "classifier", "qa_outputs", "multiple_choice_head")) and g.ndim == 2:
                g = g.T
            res[k] = g
        return res

    def canonical(self, model) -> dict[str, np.ndarray]:
        return self.weights.to_canonical(model)

    def generate(self, model, input_ids, attention_mask, **kwargs) -> np.ndarray:
        out = model.generate(np.asarray(input_ids, np.int32),
                             attention_mask=np.asarray(attention_mask, np.int32), **kwargs)
        return np.asarray(out)


class FlaxAdapter:
    name = "flax"

    def __init__(self) -> None:
        import jax.numpy as jnp
        from flax import nnx

        import gpt2_flax
        from gpt2_flax import weights

        self.jnp, self.nnx, self.pkg, self.weights = jnp, nnx, gpt2_flax, weights

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        kwargs = {"dtype": self.jnp.bfloat16, "param_dtype": self.jnp.bfloat16} if dtype == "bf16" else {}
        from gpt2_flax.modeling import MODEL_CLASSES

        return MODEL_CLASSES[head].from_state_dict(
            GPT2Config.from_dict(cfg.to_dict()), sd, **kwargs)

    def _inputs(self, inputs: dict) -> dict:
        return {k: self.jnp.asarray(v) for k, v in inputs.items()}

    def forward(self, model, inputs: dict) -> dict[str, np.ndarray]:
        return _collect(model(**self._inputs(inputs), output_hidden_states=True))

    def grads(self, model, inputs: dict) -> dict[str, np.ndarray]:
        nnx = self.nnx
        x = self._inputs(inputs)
        grads = nnx.grad(lambda m: _total_loss(m(**x)))(model)
        res = {}
        for path, v in nnx.to_flat_state(grads):
            key = self.weights.canonical_key(path)
            g = np.asarray(v.get_value() if hasattr(v, "get_value") else v, dtype=np.float64)
            res[key] = g.T if self.weights.is_transposed(key) else g
        return res

    def canonical(self, model) -> dict[str, np.ndarray]:
        return self.weights.to_state_dict(model)

    def generate(self, model, input_ids, attention_mask, **kwargs) -> np.ndarray:
        jnp = self.jnp
        out = model.generate(jnp.asarray(input_ids), attention_mask=jnp.asarray(attention_mask), **kwargs)
        return np.asarray(out)


def load_pretrained(framework: str, directory, head: str):
    """``<Class>.from_pretrained(directory)`` in ``framework`` (inference mode)."""
    from conversion import verify

    return verify.load_model(framework, directory, head)


ADAPTERS = {"torch": TorchAdapter, "tf": TFAdapter, "flax": FlaxAdapter}
_INSTANCES: dict[str, Any] = {}


def adapter(name: str):
    """The adapter of ``name`` (constructed once); skips the test if the backend is missing."""
    import pytest

    if name not in _INSTANCES:
        pkg = {"torch": "gpt2_torch", "tf": "gpt2_tf", "flax": "gpt2_flax"}[name]
        try:
            importlib.import_module(pkg)
        except ImportError as e:  # pragma: no cover - every backend is installed by make test
            pytest.skip(f"{pkg} unavailable: {e}")
        _INSTANCES[name] = ADAPTERS[name]()
    return _INSTANCES[name]
