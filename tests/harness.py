"""One adapter per framework, so that the shared checks read the same for every backend.

Each adapter builds a model of any head from a canonical state dict, calls it on numpy inputs
(framework values such as a returned cache pass through untouched), turns outputs back into
numpy, computes gradients keyed by canonical names (in canonical layout), exports the weights,
saves / loads checkpoints and generates. Only public model APIs are used: the model classes,
``weights.load_canonical`` / ``to_canonical`` / ``variable_map`` / ``is_transposed``,
``save_pretrained`` / ``from_pretrained`` and ``generate``.

Users: tests/test_backends.py (the checks every backend must pass: golden outputs, causality,
cache, padding, save/load, bad input) and tests/parity/ (one backend against another).

Tolerance: :func:`assert_close` is the one policy for fp32 comparisons, see its docstring.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np

from gpt2_core.config import GPT2Config

FIELDS = (
    "loss",
    "mc_loss",
    "logits",
    "mc_logits",
    "start_logits",
    "end_logits",
    "last_hidden_state",
)
#: framework -> the third-party package whose absence (only) lets its tests skip
FRAMEWORK_PACKAGES = {"torch": "torch", "tf": "tensorflow", "flax": "flax"}
FRAMEWORKS = tuple(FRAMEWORK_PACKAGES)

#: :func:`assert_close`: allowed max|diff| per unit of the reference's scale (fp32)
REL = 5e-5


def assert_close(ours, ref, what: str = "", rel: float = REL) -> float:
    """Assert ``max|ours - ref| <= rel * max(1, max|ref|)``; return max|diff|.

    The one tolerance policy of the fp32 checks (golden outputs, cache, padding, causality).
    The error is measured against the array's scale, not elementwise: logits of std-0.3 tiny
    models reach |x| ~ 20-40, and float32 accumulation error grows with the magnitudes summed,
    so an elementwise rtol would be either too loose for small entries or fail on near-zero
    ones. Measured on these fixtures (tests/test_backends.py, every case/head/scenario/field
    incl. attentions, caches and gradients) the largest max|diff| / scale was 5.0e-6 in torch,
    1.7e-5 in tf and 1.2e-5 in flax, both on gradients (XLA fuses and reorders the sums; every
    forward output stays below 6.5e-6). REL = 5e-5 leaves a 3x margin above that, while a
    layout or masking bug gives errors of order 1e-1 and more.
    Callers mask padded query positions first: those outputs are implementation-defined.
    To re-measure, run with ``GPT2_TOLERANCE_LOG=<file>``: each comparison appends
    ``what<TAB>max|diff|/scale`` to it.
    """
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    if ref.size == 0:
        return 0.0
    diff = float(np.max(np.abs(ours - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    if os.environ.get("GPT2_TOLERANCE_LOG"):
        with open(os.environ["GPT2_TOLERANCE_LOG"], "a") as f:
            f.write(f"{what}\t{diff / scale:.3e}\n")
    assert diff <= rel * scale, (
        f"{what}: max|diff| {diff:.3g} > {rel:g} x scale {scale:.3g} "
        f"at {np.unravel_index(np.argmax(np.abs(ours - ref)), ref.shape)}"
    )
    return diff


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


def field(out, name: str):
    """One output by its golden-fixture name (``logits``, ``hidden_states/1``,
    ``past_key_values/0/key`` ...) as numpy; None when this backend does not return it
    (tf and flax recompute the cross-attention keys/values instead of caching them)."""
    parts = name.split("/")
    if parts[0] == "past_key_values":
        layer = out["past_key_values"][int(parts[1])]
        slot = {"key": 0, "value": 1, "cross_key": 2, "cross_value": 3}[parts[2]]
        return _np(layer[slot]) if len(layer) > slot else None
    if len(parts) == 2:
        return _np(out[parts[0]][int(parts[1])])
    return _np(out[name])


class Adapter:
    """What every framework adapter offers; the framework parts are the subclasses'."""

    name = ""
    package = ""

    def __init__(self) -> None:
        self.pkg = importlib.import_module(self.package)
        self.weights = importlib.import_module(self.package + ".weights")
        self.classes = importlib.import_module(self.package + ".modeling").MODEL_CLASSES

    # -- building
    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        raise NotImplementedError

    def canonical(self, model) -> dict[str, np.ndarray]:
        return self.weights.to_canonical(model)

    # -- calling
    def tensor(self, a: np.ndarray):
        raise NotImplementedError

    def call(self, model, **kwargs):
        """``model(**kwargs)`` in inference mode; numpy arrays become framework tensors."""
        raise NotImplementedError

    def call_eager(self, model, **kwargs):
        """:meth:`call` outside any compiled function, where input checks raise."""
        return self.call(model, **kwargs)

    def forward(self, model, inputs: dict) -> dict[str, np.ndarray]:
        return _collect(self.call(model, **inputs, output_hidden_states=True))

    def grads(self, model, inputs: dict, **flags) -> dict[str, np.ndarray]:
        """d(loss [+ mc_loss]) / d(parameter), keyed by canonical name, in canonical layout."""
        raise NotImplementedError

    # -- checkpoints and generation
    def save(self, model, directory) -> None:
        model.save_pretrained(directory)

    def load(self, directory, head: str):
        return load_pretrained(self.name, directory, head)

    def generate(self, model, input_ids, attention_mask, **kwargs) -> np.ndarray:
        out = model.generate(
            self.tensor(np.asarray(input_ids)),
            attention_mask=self.tensor(np.asarray(attention_mask)),
            **kwargs,
        )
        return _np(out)


def _convert(adapter: Adapter, kwargs: dict) -> dict:
    return {k: adapter.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


class TorchAdapter(Adapter):
    name, package = "torch", "gpt2_torch"

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.torch = torch

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        model = self.classes[head](GPT2Config.from_dict(cfg.to_dict()))
        self.weights.load_canonical(model, sd)
        if dtype == "bf16":
            model = model.to(self.torch.bfloat16)
        return model.eval()

    def tensor(self, a: np.ndarray):
        t = self.torch.from_numpy(np.array(a))
        return t.long() if np.issubdtype(a.dtype, np.integer) else t

    def call(self, model, **kwargs):
        with self.torch.no_grad():
            return model(**_convert(self, kwargs))

    def grads(self, model, inputs: dict, **flags) -> dict[str, np.ndarray]:
        model.zero_grad(set_to_none=True)
        out = model(**_convert(self, inputs), **flags)
        _total_loss(out).backward()
        grads = {
            k: p.grad.numpy().astype(np.float64)
            for k, p in self.weights.variable_map(model).items()
            if p.grad is not None
        }
        model.zero_grad(set_to_none=True)
        return grads


class TFAdapter(Adapter):
    name, package = "tf", "gpt2_tf"

    def __init__(self) -> None:
        import tensorflow as tf

        super().__init__()
        self.tf = tf

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        kwargs = {"dtype": "bfloat16"} if dtype == "bf16" else {}
        model = self.classes[head](GPT2Config.from_dict(cfg.to_dict()), **kwargs)
        self.weights.load_canonical(model, sd)
        return model

    def tensor(self, a: np.ndarray):
        return self.tf.constant(a)

    def call(self, model, **kwargs):
        return model(**_convert(self, kwargs), training=False)

    def grads(self, model, inputs: dict, **flags) -> dict[str, np.ndarray]:
        vmap = self.weights.variable_map(model)
        with self.tf.GradientTape() as tape:
            out = model(**_convert(self, inputs), **flags, training=False)
            loss = _total_loss(out)
        keys = list(vmap)
        gs = tape.gradient(loss, [vmap[k] for k in keys])
        res = {}
        for k, g in zip(keys, gs):
            if g is not None:
                g = np.asarray(self.tf.convert_to_tensor(g), dtype=np.float64)
                res[k] = g.T if self.weights.is_transposed(k) else g
        return res


class FlaxAdapter(Adapter):
    name, package = "flax", "gpt2_flax"

    def __init__(self) -> None:
        import jax.numpy as jnp
        from flax import nnx

        super().__init__()
        self.jnp, self.nnx = jnp, nnx
        self._jitted = nnx.jit(
            lambda model, arrays, static: model(**arrays, **dict(static)), static_argnums=2
        )

    def build(self, cfg: GPT2Config, head: str, sd: dict, dtype: str = "fp32"):
        jnp = self.jnp
        kwargs = {"dtype": jnp.bfloat16, "param_dtype": jnp.bfloat16} if dtype == "bf16" else {}
        return self.classes[head].from_state_dict(GPT2Config.from_dict(cfg.to_dict()), sd, **kwargs)

    def tensor(self, a: np.ndarray):
        return self.jnp.asarray(a)

    def call(self, model, **kwargs):
        """Through ``nnx.jit`` (non-array arguments static): one XLA compile per input shape
        instead of one per primitive keeps the flax checks fast. Input checks that need
        concrete values (ids in range ...) run only in :meth:`call_eager`."""
        arrays, static = {}, []
        for k, v in _convert(self, kwargs).items():
            if v is None or isinstance(v, bool | int | float | str):
                static.append((k, v))
            else:
                arrays[k] = v
        return self._jitted(model, arrays, tuple(sorted(static)))

    def call_eager(self, model, **kwargs):
        return model(**_convert(self, kwargs))

    def grads(self, model, inputs: dict, **flags) -> dict[str, np.ndarray]:
        nnx = self.nnx
        x = _convert(self, inputs)
        grads = nnx.grad(lambda m: _total_loss(m(**x, **flags)))(model)
        res = {}
        for path, v in nnx.to_flat_state(grads):
            key = self.weights.canonical_key(path)
            g = np.asarray(v.get_value() if hasattr(v, "get_value") else v, dtype=np.float64)
            res[key] = g.T if self.weights.is_transposed(key) else g
        return res


def load_pretrained(framework: str, directory, head: str):
    """``<Class>.from_pretrained(directory)`` in ``framework`` (inference mode)."""
    from conversion import verify

    return verify.load_model(framework, directory, head)


ADAPTERS = {"torch": TorchAdapter, "tf": TFAdapter, "flax": FlaxAdapter}
_INSTANCES: dict[str, Any] = {}


def adapter(name: str) -> Adapter:
    """The adapter of ``name`` (constructed once).

    Skips the test only when the framework itself (torch, tensorflow, flax) is not installed;
    a broken in-repo package (gpt2_torch ...) fails the test instead of hiding it.
    """
    import pytest

    if name not in _INSTANCES:
        third_party = FRAMEWORK_PACKAGES[name]
        if (
            importlib.util.find_spec(third_party) is None
        ):  # pragma: no cover - make test installs all
            pytest.skip(f"{third_party} is not installed")
        _INSTANCES[name] = ADAPTERS[name]()
    return _INSTANCES[name]
