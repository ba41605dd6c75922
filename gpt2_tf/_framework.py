"""Keras plumbing of the GPT-2 models that is not the model itself (issue #14).

:class:`FrameworkMixin` is a base of ``gpt2_tf.modeling.GPT2PreTrainedModel`` (listed before
``keras.Model``, so its hooks override Keras' own): ``get_config`` (Keras serialisation; the
model's ``from_config`` stays in modeling.py, which all three backends share),
``compute_loss`` / ``compute_metrics`` (``model.fit`` on the model's own losses),
``predict_step``, ``jit_call`` (an XLA-compiled forward) and the SavedModel exports
(``export``, ``export_serving``), with the module functions that serve them; and
``state_dict`` / ``load_state_dict`` (the canonical dict), which ``nn.Module`` gives torch.
``gpt2_torch`` and ``gpt2_flax`` have a ``_framework.py`` with a ``FrameworkMixin`` of the same
name holding their own framework's plumbing, so the three ``modeling.py`` files keep only what
translates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from gpt2_core.config import GPT2Config


class FrameworkMixin:
    """Keras-only members of ``GPT2PreTrainedModel`` (which is also a ``keras.Model``).

    Heads set ``_LOSS_KEYS`` (their losses, summed by ``fit``) and ``_OUTPUT_KEYS`` (what a
    compiled loss, ``predict`` and the SavedModel signatures get).
    """

    # ---------------------------------------------------------------- state dicts
    # (torch's come with nn.Module)
    def state_dict(self) -> dict[str, np.ndarray]:
        """The canonical state dict (HF PyTorch names and layouts, numpy, tied keys included)."""
        from gpt2_tf.weights import to_canonical

        return to_canonical(self)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True):
        """Copy a canonical state dict into this model in place; returns the load report."""
        from gpt2_tf.weights import load_canonical

        return load_canonical(self, state_dict, strict=strict, init_missing=True)

    # ---------------------------------------------------------------- Keras serialisation
    def get_config(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "trainable": self.trainable,
        }

    # ---------------------------------------------------------------- fit() support
    _LOSS_KEYS: ClassVar[tuple[str, ...]] = ("loss",)
    _OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ("logits",)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras hook: the model's own loss(es) when labels were in ``x``, else the compiled loss."""
        own = [
            y_pred[k]
            for k in self._LOSS_KEYS
            if isinstance(y_pred, Mapping) and y_pred.get(k) is not None
        ]
        if y is not None and getattr(self, "loss", None) is not None:
            return super().compute_loss(x, y, _keras_y_pred(self, y_pred), sample_weight, training)
        if not own:
            raise ValueError(
                f"{type(self).__name__}: nothing to train on. Put the labels in the input dict "
                f"(e.g. {{'input_ids': ..., 'labels': ...}}) or compile with a loss and pass y."
            )
        total = tf.add_n([tf.cast(v, tf.float32) for v in own])
        if self.losses:
            total = total + tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if y is None:
            return self.get_metrics_result()
        return super().compute_metrics(x, y, _keras_y_pred(self, y_pred), sample_weight)

    # ---------------------------------------------------------------- compiled forward / export
    def jit_call(self, **inputs: Any):
        """One XLA-compiled forward (``tf.function(jit_compile=True)``), cached per input shape.

        XLA drops TensorFlow's Assert ops, so ids are range-checked here on the host first.
        """
        checked = {}
        for k, v in inputs.items():
            if v is None or isinstance(v, bool):
                checked[k] = v
                continue
            checked[k] = tf.convert_to_tensor(v)
        _host_check_inputs(self.config, checked)
        fn = self.__dict__.get("_jit_fn")
        if fn is None:
            # object.__setattr__: keep the function out of Keras / SavedModel tracking
            fn = tf.function(lambda kw: self(**kw, training=False), jit_compile=True)
            object.__setattr__(self, "_jit_fn", fn)
        return fn(checked)

    def predict_step(self, data):
        """Keras hook of ``predict`` / ``predict_on_batch``: x is ``input_ids`` or a dict of
        call arguments; returns the head's outputs as a dict of arrays (``{"logits": ...}``),
        without the cache."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, Mapping):
            out = self(**{**_forward_kwargs(self), **x}, training=False)
        else:
            out = self(input_ids=x, training=False, **_forward_kwargs(self))
        return _outputs_dict(self, out)

    def export_serving(
        self, path: str | os.PathLike, *, with_tokenizer: bool = False, **text_kwargs: Any
    ) -> None:
        """Write a SavedModel whose ``serving_default`` maps (input_ids, attention_mask) to the
        head's outputs (int32 (B, T) each; ``(B, N, T)`` for the double-heads model). It loads
        with plain ``tf.saved_model.load`` — no gpt2_tf, no Keras needed.

        With ``with_tokenizer=True`` (LM only) it maps ``text`` strings to ``generated_text``
        instead: tokenizer, greedy decoding and detokenizer in the graph
        (:func:`gpt2_tf.serving.export_text_serving`; ``tokenizer=``, ``max_new_tokens=``).
        """
        if with_tokenizer:
            from gpt2_tf.serving import export_text_serving

            return export_text_serving(self, path, **text_kwargs)
        if text_kwargs:
            raise TypeError(f"{sorted(text_kwargs)} apply with with_tokenizer=True only")
        archive, serve, spec = _serving_archive(self)
        archive.add_endpoint("serving_default", serve, input_signature=spec)
        archive.write_out(str(path), verbose=False)

    def export(
        self,
        filepath: str | os.PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        **kwargs: Any,
    ) -> None:
        """Keras 3's ``model.export``: for ``format="tf_saved_model"`` without an explicit
        ``input_signature``, a SavedModel with Keras' ``serve`` endpoint (and
        ``serving_default``) taking int32 ``input_ids`` and ``attention_mask`` and returning
        the head's outputs as a dict -- whether or not the model was called before. Other
        formats and explicit signatures go to Keras.

        Example:
            >>> model.export("exported/")                     # doctest: +SKIP
            >>> tf.saved_model.load("exported/").serve(ids, mask)["logits"]  # doctest: +SKIP
        """
        if format != "tf_saved_model" or input_signature is not None:
            return super().export(
                filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
            )
        archive, serve, spec = _serving_archive(self)
        archive.add_endpoint("serve", serve, input_signature=spec)
        archive.add_endpoint("serving_default", serve, input_signature=spec)
        archive.write_out(str(filepath), verbose=bool(verbose))
        return None


def _keras_y_pred(model: keras.Model, y_pred):
    """The head's outputs (``_OUTPUT_KEYS``) as Keras' compiled losses and metrics take them."""
    if not isinstance(y_pred, Mapping):
        return y_pred
    outs = [y_pred[k] for k in model._OUTPUT_KEYS]
    return outs[0] if len(outs) == 1 else tuple(outs)


def _outputs_dict(model: keras.Model, out: Mapping[str, Any]) -> dict[str, Any]:
    """The head's outputs (``_OUTPUT_KEYS``, plus ``loss`` when computed) as a plain dict:
    what Keras' ``predict`` / ``evaluate`` and SavedModel signatures can carry."""
    keys = ("last_hidden_state",) if model.head == "base" else model._OUTPUT_KEYS
    return {k: out[k] for k in (*model._LOSS_KEYS, *keys) if out.get(k) is not None}


def _forward_kwargs(model: keras.Model) -> dict[str, Any]:
    return {} if model.head == "question_answering" else {"use_cache": False}


def _serving_archive(model: keras.Model) -> Any:
    """A Keras ExportArchive tracking ``model``, its serving function and input spec."""
    rank = 3 if model.head == "double_heads" else 2
    spec = [
        tf.TensorSpec([None] * rank, tf.int32, name="input_ids"),
        tf.TensorSpec([None] * rank, tf.int32, name="attention_mask"),
    ]
    keys = ("last_hidden_state",) if model.head == "base" else model._OUTPUT_KEYS

    def serve(input_ids, attention_mask):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            training=False,
            **_forward_kwargs(model),
        )
        return {k: tf.cast(out[k], tf.float32) for k in keys}

    archive = keras.export.ExportArchive()
    archive.track(model)
    return archive, serve, spec


def _host_check_inputs(config: GPT2Config, inputs: Mapping[str, Any]) -> None:
    """Eager range checks of the id inputs (used before XLA, which cannot raise)."""
    from gpt2_tf.modeling import _check_int_ids  # modeling imports this module

    for name, upper, what in (
        ("input_ids", config.vocab_size, "the vocabulary"),
        ("token_type_ids", config.vocab_size, "the vocabulary"),
        ("position_ids", config.n_positions, "the positions"),
    ):
        v = inputs.get(name)
        if v is not None:
            _check_int_ids(name, tf.convert_to_tensor(v), upper, what)
