"""GPT-2 in Keras 3 (TensorFlow backend): GPT2Model and its six heads.

The same classes, attribute names, arguments and outputs as the PyTorch backend and as
transformers 4.57.6's PyTorch eager path, written as Keras layers in KerasHub style (``name=``
and ``dtype=`` on every sublayer, ``get_config`` / ``from_config``). Variables carry the
canonical weight names (``wte``, ``h_0/attn/c_attn/weight`` ...), so ``weights.py`` maps them
to the canonical state dict by walking attributes.

Numerics follow transformers' eager attention exactly: causally masked scores are replaced by
``finfo.min`` and the (causal + padding) additive mask is added on top, so a fully masked row
(a left-pad query) attends uniformly to its visible keys instead of producing NaN. Softmax and
LayerNorm always run in float32, also under a ``mixed_bfloat16`` / ``mixed_float16`` policy.

Shape legend used in comments:
    B = batch, N = choices (double heads), T = query length (new tokens), S = key length (past
    + T, or the static cache length), H = heads, D = head dim, C = n_embd, F = inner dim,
    V = vocab size.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2_core import naming
from gpt2_core import outputs as core_outputs
from gpt2_core.config import GPT2Config
from gpt2_core.generation import problem_type
from gpt2_core.inputs import check_ids_shape, dtype_name, stored_dtype_name
from gpt2_tf._framework import FrameworkMixin

logger = logging.getLogger(__name__)

_MIN32 = float(np.finfo(np.float32).min)

# ----------------------------------------------------------------------------- outputs
# tf.function rebuilds dict outputs as ``type(out)(iterable_of_pairs)``; the core classes take
# positional *fields*, so these subclasses also accept a mapping / iterable of pairs, as dict.


def _tf_output(base: type[core_outputs.ModelOutput]) -> type[core_outputs.ModelOutput]:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if (
            len(args) == 1
            and not kwargs
            and not tf.is_tensor(args[0])
            and not isinstance(args[0], np.ndarray | tuple)
        ):
            kwargs = dict(args[0])
            args = ()
        base.__init__(self, *args, **kwargs)

    return type(
        base.__name__,
        (base,),
        {"__init__": __init__, "__module__": __name__, "__doc__": base.__doc__},
    )


BaseModelOutputWithPastAndCrossAttentions = _tf_output(
    core_outputs.BaseModelOutputWithPastAndCrossAttentions
)
CausalLMOutputWithCrossAttentions = _tf_output(core_outputs.CausalLMOutputWithCrossAttentions)
GPT2DoubleHeadsModelOutput = _tf_output(core_outputs.GPT2DoubleHeadsModelOutput)
SequenceClassifierOutputWithPast = _tf_output(core_outputs.SequenceClassifierOutputWithPast)
TokenClassifierOutput = _tf_output(core_outputs.TokenClassifierOutput)
QuestionAnsweringModelOutput = _tf_output(core_outputs.QuestionAnsweringModelOutput)

# ----------------------------------------------------------------------------- helpers
_ZERO_INIT = False  # set by _no_init(): from_pretrained overwrites every variable anyway


@contextlib.contextmanager
def _no_init():
    """Build variables with cheap zero initialisers (the checkpoint overwrites them)."""
    global _ZERO_INIT
    old, _ZERO_INIT = _ZERO_INIT, True
    try:
        yield
    finally:
        _ZERO_INIT = old


def _normal(std: float):
    return "zeros" if _ZERO_INIT else keras.initializers.RandomNormal(stddev=std)


def _gelu_tanh(x):
    # GPT-2's own tanh approximation (transformers' gelu_new / gelu_pytorch_tanh / gelu_fast)
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3.0))))


def _quick_gelu(x):
    return x * tf.sigmoid(1.702 * x)


ACT_FNS = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "quick_gelu": _quick_gelu,
    "relu": tf.nn.relu,
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "linear": lambda x: x,
}


def _static_dim(x, axis: int):
    d = x.shape[axis]
    return d if d is not None else tf.shape(x)[axis]


def _check_int_ids(name: str, ids, upper: int | None, what: str):
    """Integer dtype check (static) and range check [0, upper) that raises in eager and graph.

    XLA drops Assert ops, so compiled entry points (``generate``, ``jit_call``) check on the host
    before calling, and ``GPT2Model`` additionally turns rows with bad ids into NaN.
    """
    if not ids.dtype.is_integer:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype.name}")
    if tf.executing_eagerly():
        arr = ids.numpy()
        if arr.size and (arr.min() < 0 or (upper is not None and arr.max() >= upper)):
            bad = arr[(arr < 0) | ((arr >= upper) if upper is not None else False)]
            raise ValueError(f"{name} contains {bad.flat[0]}, outside {what} [0, {upper})")
        return
    checks = [tf.debugging.assert_non_negative(ids, message=f"{name} has negative ids")]
    if upper is not None:
        checks.append(
            tf.debugging.assert_less(
                ids,
                tf.cast(upper, ids.dtype),
                message=f"{name} has ids outside {what} [0, {upper})",
            )
        )
    return checks


def _to_tensor(x, dtype=None):
    if x is None or tf.is_tensor(x):
        return x
    return tf.convert_to_tensor(x, dtype=dtype)


def _unpack_inputs(call):
    """Accept the Keras ``fit`` style: a dict of inputs as the first positional argument."""

    @functools.wraps(call)
    def wrapper(self, input_ids=None, *args, **kwargs):
        if isinstance(input_ids, Mapping):
            merged = dict(input_ids)
            if args:
                raise TypeError("pass the other inputs inside the dict or as keywords")
            for k, v in kwargs.items():
                if k in merged and v is not None:
                    raise TypeError(f"{k} given both in the input dict and as a keyword")
                if v is not None or k not in merged:
                    merged[k] = v
            return call(self, **merged)
        return call(self, input_ids, *args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- layers
class Conv1D(keras.layers.Layer):
    """GPT-2's ``Conv1D``: a dense layer whose weight is stored (in, out) = (nx, nf).

    Args:
        nf: output features.
        nx: input features.
        init_std: std of the normal initialiser of ``weight``.
    """

    def __init__(self, nf: int, nx: int, init_std: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nf, self.nx = nf, nx
        self.weight = self.add_weight(shape=(nx, nf), name="weight", initializer=_normal(init_std))
        self.bias = self.add_weight(shape=(nf,), name="bias", initializer="zeros")
        self.built = True

    def call(self, x):
        shape = tf.shape(x)
        y = tf.matmul(tf.reshape(x, [-1, self.nx]), self.weight) + self.bias  # (B*T, nf)
        return tf.reshape(y, tf.concat([shape[:-1], [self.nf]], 0))


class LayerNorm(keras.layers.Layer):
    """LayerNorm computed in float32 whatever the dtype policy (``gamma`` / ``beta``).

    Args:
        dim: normalised size.
        epsilon: ``config.layer_norm_epsilon``.
    """

    def __init__(self, dim: int, epsilon: float, **kwargs: Any) -> None:
        # autocast=False: read the float32 master variables, not a bf16/fp16 copy
        super().__init__(autocast=False, **kwargs)
        self.epsilon = epsilon
        self.gamma = self.add_weight(shape=(dim,), name="gamma", initializer="ones")
        self.beta = self.add_weight(shape=(dim,), name="beta", initializer="zeros")
        self.built = True

    def call(self, x):
        x32 = tf.cast(x, tf.float32)
        mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
        y = (x32 - mean) * tf.math.rsqrt(var + self.epsilon)
        y = y * tf.cast(self.gamma, tf.float32) + tf.cast(self.beta, tf.float32)
        return tf.cast(y, self.compute_dtype)


class StaticCache(NamedTuple):
    """A preallocated key/value cache: one ``(B, H, max_length, D)`` buffer per layer.

    Pass it as ``past_key_values`` with ``cache_position`` (the slots of the new tokens): the
    forward writes the new keys/values there (XLA ``dynamic_update_slice``) and attends over
    every slot with the causal + padding mask, so shapes never change from step to step. A
    tuple (of two tuples of tensors), so it travels through ``tf.function`` / ``tf.nest``; the
    forward returns the updated cache (TensorFlow tensors are immutable).

    Example:
        >>> cache = StaticCache.allocate(model.config, batch_size=1, max_length=32)
        >>> out = model(input_ids=ids, past_key_values=cache, cache_position=tf.range(3))
    """

    keys: tuple
    values: tuple

    @classmethod
    def allocate(
        cls, config: GPT2Config, batch_size: int, max_length: int, dtype: Any = tf.float32
    ) -> StaticCache:
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, H, S, D)
        return cls(
            keys=tuple(tf.zeros(shape, dtype) for _ in range(config.n_layer)),
            values=tuple(tf.zeros(shape, dtype) for _ in range(config.n_layer)),
        )

    @property
    def max_length(self) -> int:
        return _static_dim(self.keys[0], 2)

    @property
    def batch_size(self) -> int:
        return _static_dim(self.keys[0], 0)

    def reorder(self, index) -> StaticCache:
        """Reorder the batch rows (beam search): row i becomes old row ``index[i]``."""
        return StaticCache(
            keys=tuple(tf.gather(k, index) for k in self.keys),
            values=tuple(tf.gather(v, index) for v in self.values),
        )


def _dense(units: int, config: GPT2Config, name: str, dtype, use_bias: bool = True):
    layer = keras.layers.Dense(
        units,
        use_bias=use_bias,
        name=name,
        dtype=dtype,
        kernel_initializer=_normal(config.initializer_range),
    )
    layer.build((None, config.n_embd))
    return layer


def _attn_implementation(config: GPT2Config) -> str:
    """The config's attn_implementation for this backend: TensorFlow has no fused attention
    kernel to offer, so only the explicit (eager) path; the others are refused, never replaced."""
    impl = config.attn_implementation or "eager"
    if impl != "eager":
        raise ValueError(
            f"attn_implementation={impl!r} is not available in gpt2_tf: TensorFlow "
            "has no fused attention kernel for it; use 'eager' (or the torch / flax "
            "backend)"
        )
    return impl


class GPT2Attention(keras.layers.Layer):
    """Multi-head causal self-attention (or cross-attention) with a fused q/k/v projection.

    Args:
        config: the model config; reads ``scale_attn_weights``,
            ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn`` and dropouts.
        is_cross_attention: build ``q_attn`` + a k/v-only ``c_attn`` for attending to an encoder.
        layer_idx: index of the block (for ``scale_attn_by_inverse_layer_idx``).

    Example:
        >>> attn = GPT2Attention(GPT2Config(n_embd=36, n_head=3), name="attn")
        >>> out, present, weights = attn(tf.zeros([2, 5, 36]), use_cache=True)
    """

    def __init__(
        self,
        config: GPT2Config,
        is_cross_attention: bool = False,
        layer_idx: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        C = config.n_embd
        self.embed_dim, self.num_heads, self.head_dim = C, config.n_head, config.head_dim
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        scale = 1.0 / math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale  # the combined scale (the upcast path folds it into QK^T)
        self.attn_implementation = _attn_implementation(config)
        std = config.initializer_range
        proj_std = std / math.sqrt(2 * config.n_layer)  # transformers' scaled c_proj init
        dt = self.dtype_policy
        with keras.name_scope(self.name, caller=self):  # full variable paths
            if is_cross_attention:
                self.c_attn = Conv1D(
                    2 * C, C, std, name="c_attn", dtype=dt
                )  # k, v from the encoder
                self.q_attn = Conv1D(C, C, std, name="q_attn", dtype=dt)
            else:
                self.c_attn = Conv1D(3 * C, C, std, name="c_attn", dtype=dt)  # fused q, k, v
            self.c_proj = Conv1D(C, C, proj_std, name="c_proj", dtype=dt)
            self.attn_dropout = keras.layers.Dropout(
                config.attn_pdrop, name="attn_dropout", dtype=dt
            )
            self.resid_dropout = keras.layers.Dropout(
                config.resid_pdrop, name="resid_dropout", dtype=dt
            )
        self.built = True

    def _split_heads(self, x):
        # (B, T, C) -> (B, H, T, D)
        B, T = _static_dim(x, 0), _static_dim(x, 1)
        x = tf.reshape(x, [B, T, self.num_heads, self.head_dim])  # (B, T, H, D)
        return tf.transpose(x, [0, 2, 1, 3])

    def _merge_heads(self, x):
        # (B, H, T, D) -> (B, T, C)
        B, T = _static_dim(x, 0), _static_dim(x, 2)
        return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [B, T, self.embed_dim])

    def _eager_attention(self, q, k, v, causal_mask, attention_mask, head_mask, training):
        """softmax(QK^T + masks) V as transformers' eager path; weights (B, H, T, S)."""
        if self.reorder_and_upcast_attn:
            # transformers' _upcast_and_reordered_attn: fp32 QK^T with the scale folded in
            w = tf.matmul(tf.cast(q, tf.float32), tf.cast(k, tf.float32), transpose_b=True)
            w = w * self.scale
        else:
            w = tf.matmul(q, k, transpose_b=True)  # (B, H, T, S)
            if self.scale_attn_weights:
                w = w / tf.constant(float(self.head_dim) ** 0.5, dtype=w.dtype)
            if self.scale_attn_by_inverse_layer_idx:
                w = w / tf.constant(float(self.layer_idx + 1), dtype=w.dtype)
        w = tf.cast(w, tf.float32)  # masks and softmax in float32
        if causal_mask is not None:
            w = tf.where(causal_mask, w, _MIN32)
        if attention_mask is not None:
            # the masks travel as booleans (Keras would autocast a float mask to bf16/fp16);
            # min + min = -inf for causal-masked slots, as transformers' additive 4-D mask
            w = w + tf.where(attention_mask, 0.0, _MIN32)
        w = tf.cast(tf.nn.softmax(w, axis=-1), v.dtype)
        w = self.attn_dropout(w, training=training)
        if head_mask is not None:
            w = w * tf.cast(head_mask, w.dtype)
        return tf.matmul(w, v), w

    def call(
        self,
        hidden_states,
        layer_past=None,
        attention_mask=None,
        causal_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        use_cache=False,
        output_attentions=False,
        cache_position=None,
        training=None,
    ):
        """Attention output (B, T, C), the present (k, v) if ``use_cache``, the weights if asked.

        Self-attention: ``layer_past`` is ``(k, v)`` (B, H, S_past, D) of earlier positions,
        concatenated with the new ones; or, when ``cache_position`` is given, preallocated
        (B, H, S, D) buffers written at slots ``cache_position`` (contiguous). Cross-attention:
        ``layer_past`` holds the encoder's (k, v), reused. ``attention_mask`` (B|1, 1, T, S)
        and ``causal_mask`` (1, 1, T, S) are boolean: True = may attend.
        """
        if self.is_cross_attention:
            q = self._split_heads(self.q_attn(hidden_states))
            if layer_past is not None:
                k, v = layer_past  # the encoder's keys/values never change: reuse them
            else:
                k, v = tf.split(self.c_attn(encoder_hidden_states), 2, axis=-1)
                k, v = self._split_heads(k), self._split_heads(v)  # (B, H, S_enc, D)
            attention_mask, causal_mask = encoder_attention_mask, None
        else:
            q, k, v = tf.split(self.c_attn(hidden_states), 3, axis=-1)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if layer_past is not None:
                past_k, past_v = layer_past
                if cache_position is not None:
                    # static cache: write the T new slots into the (B, H, S, D) buffers (XLA)
                    start = [0, 0, tf.cast(cache_position[0], tf.int32), 0]
                    k = xla.dynamic_update_slice(past_k, tf.cast(k, past_k.dtype), start)
                    v = xla.dynamic_update_slice(past_v, tf.cast(v, past_v.dtype), start)
                else:
                    k = tf.concat([tf.cast(past_k, k.dtype), k], axis=2)  # (B, H, S, D)
                    v = tf.concat([tf.cast(past_v, v.dtype), v], axis=2)
        present = (k, v) if use_cache else None
        out, weights = self._eager_attention(
            q, k, v, causal_mask, attention_mask, head_mask, training
        )
        out = self._merge_heads(out)  # (B, T, C)
        out = self.resid_dropout(self.c_proj(out), training=training)
        return out, present, (weights if output_attentions else None)


class GPT2MLP(keras.layers.Layer):
    """Position-wise feed-forward: c_fc -> activation -> c_proj -> dropout.

    Args:
        intermediate_size: width of ``c_fc`` (``config.inner_dim``).
        config: the model config (activation, dropout, init).
    """

    def __init__(self, intermediate_size: int, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        C, dt = config.n_embd, self.dtype_policy
        std = config.initializer_range
        with keras.name_scope(self.name, caller=self):  # full variable paths
            self.c_fc = Conv1D(intermediate_size, C, std, name="c_fc", dtype=dt)
            self.c_proj = Conv1D(
                C, intermediate_size, std / math.sqrt(2 * config.n_layer), name="c_proj", dtype=dt
            )
        self.act = ACT_FNS[config.activation_function]
        self.dropout = keras.layers.Dropout(config.resid_pdrop, name="dropout", dtype=dt)
        self.built = True

    def call(self, hidden_states, training=None):
        h = self.act(self.c_fc(hidden_states))  # (B, T, F)
        return self.dropout(self.c_proj(h), training=training)


class GPT2Block(keras.layers.Layer):
    """Pre-LN transformer block: attn (+ cross-attn) and MLP, each with a residual.

    Args:
        config: the model config.
        layer_idx: the block's index.
    """

    def __init__(self, config: GPT2Config, layer_idx: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        C, eps, dt = config.n_embd, config.layer_norm_epsilon, self.dtype_policy
        with keras.name_scope(self.name, caller=self):  # full variable paths
            self.ln_1 = LayerNorm(C, eps, name="ln_1", dtype=dt)
            self.attn = GPT2Attention(config, layer_idx=layer_idx, name="attn", dtype=dt)
            self.ln_2 = LayerNorm(C, eps, name="ln_2", dtype=dt)
            self.add_cross_attention = config.add_cross_attention
            if config.add_cross_attention:
                self.crossattention = GPT2Attention(
                    config,
                    is_cross_attention=True,
                    layer_idx=layer_idx,
                    name="crossattention",
                    dtype=dt,
                )
                self.ln_cross_attn = LayerNorm(C, eps, name="ln_cross_attn", dtype=dt)
            self.mlp = GPT2MLP(config.inner_dim, config, name="mlp", dtype=dt)
        self.built = True

    def call(
        self,
        hidden_states,
        layer_past=None,
        attention_mask=None,
        causal_mask=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        use_cache=False,
        output_attentions=False,
        cache_position=None,
        training=None,
    ):
        """Returns (hidden (B, T, C), present, self-attention weights, cross-attention weights)."""
        self_past = None if layer_past is None else tuple(layer_past[:2])
        attn_out, present, self_w = self.attn(
            self.ln_1(hidden_states),
            layer_past=self_past,
            attention_mask=attention_mask,
            causal_mask=causal_mask,
            head_mask=head_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            cache_position=cache_position,
            training=training,
        )
        hidden_states = hidden_states + attn_out
        cross_w = None
        if encoder_hidden_states is not None:
            if not self.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states were passed but the model has no "
                    "cross-attention: build it with config.add_cross_attention=True"
                )
            cross_past = (
                tuple(layer_past[2:4]) if layer_past is not None and len(layer_past) == 4 else None
            )
            cross_out, cross_present, cross_w = self.crossattention(
                self.ln_cross_attn(hidden_states),
                layer_past=cross_past,
                head_mask=head_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                use_cache=use_cache,
                output_attentions=output_attentions,
                training=training,
            )
            hidden_states = hidden_states + cross_out
            if present is not None and cache_position is None:
                # (k, v, cross_k, cross_v): transformers' legacy layout (a static cache holds
                # the self-attention buffers only)
                present = present + cross_present
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states), training=training)
        return hidden_states, present, self_w, cross_w


class GPT2SequenceSummary(keras.layers.Layer):
    """The multiple-choice head of GPT2DoubleHeadsModel (transformers' GPT2SequenceSummary).

    Args:
        config: reads ``summary_type``, ``summary_use_proj``, ``summary_proj_to_labels``,
            ``summary_activation``, ``summary_first_dropout`` and ``summary_last_dropout``.
    """

    def __init__(self, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        dt = self.dtype_policy
        self.summary_type = config.summary_type
        with keras.name_scope(self.name, caller=self):  # full variable paths
            self.summary = None
            if config.summary_use_proj:
                self.summary = _dense(naming.summary_out_features(config), config, "summary", dt)
        act = config.summary_activation
        self.activation = ACT_FNS[act] if act else (lambda x: x)
        with keras.name_scope(self.name, caller=self):  # full variable paths
            self.first_dropout = keras.layers.Dropout(
                config.summary_first_dropout, name="first_dropout", dtype=dt
            )
            self.last_dropout = keras.layers.Dropout(
                config.summary_last_dropout, name="last_dropout", dtype=dt
            )
        self.built = True

    def call(self, hidden_states, cls_index=None, training=None):
        """hidden_states (B, N, T, C), cls_index (B, N) -> (B, N, out) (transformers' indexing)."""
        if self.summary_type == "last":
            out = hidden_states[:, -1]
        elif self.summary_type == "first":
            out = hidden_states[:, 0]
        elif self.summary_type == "mean":
            out = tf.reduce_mean(hidden_states, axis=1)
        else:  # cls_index
            if cls_index is None:
                T = _static_dim(hidden_states, -2)
                cls_index = tf.fill(tf.shape(hidden_states)[:-2], T - 1)
            out = tf.gather(
                hidden_states, tf.cast(cls_index, tf.int32), batch_dims=len(hidden_states.shape) - 2
            )  # (B, N, C)
        out = self.first_dropout(out, training=training)
        if self.summary is not None:
            out = self.summary(out)
        out = self.activation(out)
        return self.last_dropout(out, training=training)


# ----------------------------------------------------------------------------- losses
def _masked_ce(logits, labels, ignore_index=-100):
    """Mean cross-entropy over labels != ignore_index, in float32. Every label ignored gives
    NaN, as transformers' (torch's) 0/0 -- the same in all three backends."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    keep = tf.not_equal(labels, ignore_index)
    per = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(keep, labels, 0), logits=logits
    )
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(per * keep) / tf.reduce_sum(keep)


def causal_lm_loss(logits, labels, vocab_size: int):
    """transformers' ForCausalLMLoss: predict labels[..., 1:] from logits[..., :-1, :]."""
    labels = tf.cast(labels, tf.int32)
    checks = _label_checks(labels, vocab_size, "labels")
    with tf.control_dependencies(checks):
        shift_logits = tf.reshape(logits[..., :-1, :], [-1, vocab_size])
        shift_labels = tf.reshape(labels[..., 1:], [-1])
    return _masked_ce(shift_logits, shift_labels)


def _label_checks(labels, n: int, name: str):
    if tf.executing_eagerly():
        arr = labels.numpy()
        bad = arr[(arr != -100) & ((arr < 0) | (arr >= n))]
        if bad.size:
            raise ValueError(
                f"{name} contains {bad.flat[0]}: use ids in [0, {n}) or -100 to ignore"
            )
        return []
    ok = tf.logical_or(tf.equal(labels, -100), tf.logical_and(labels >= 0, labels < n))
    return [
        tf.debugging.assert_equal(
            tf.reduce_all(ok), True, message=f"{name} must be in [0, {n}) or -100"
        )
    ]


# ----------------------------------------------------------------------------- base classes
class GPT2PreTrainedModel(FrameworkMixin, keras.Model):
    """Shared plumbing of every GPT-2 Keras model: config, checkpoints. The Keras hooks
    (``get_config``, ``fit`` / ``predict`` support, ``jit_call``, SavedModel export) and
    ``state_dict`` / ``load_state_dict`` come from :class:`gpt2_tf._framework.FrameworkMixin`.

    ``model.fit`` trains on the model's own loss when the input dict holds labels (``labels``,
    ``mc_labels``, ``start_positions`` ...), or on a loss given to ``compile`` with separate
    targets ``y`` (applied to the logits).

    Args:
        config: a :class:`gpt2_core.GPT2Config` (or its dict, as stored by ``get_config``).
        **kwargs: ``keras.Model`` arguments, e.g. ``name`` and ``dtype`` (a dtype policy such
            as ``"mixed_bfloat16"``).
    """

    head: ClassVar[str] = "base"

    def __init__(self, config: GPT2Config | Mapping[str, Any], **kwargs: Any) -> None:
        if isinstance(config, Mapping):
            config = GPT2Config.from_dict(config)
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a GPT2Config, got {type(config).__name__}")
        super().__init__(**kwargs)
        self.config = config
        self.generation_config = None

    # ---------------------------------------------------------------- Keras deserialisation
    @classmethod
    def from_config(cls, config: Mapping[str, Any], custom_objects=None):
        config = dict(config)
        if isinstance(config.get("dtype"), Mapping):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: Any = None,
        config: GPT2Config | None = None,
        prefer: str | None = None,
        strict: bool = True,
        quantize: str | None = None,
        **config_overrides: Any,
    ):
        """Load a transformers-style checkpoint directory (or hub id) of any format.

        Args:
            name_or_path: a directory with config.json and model.safetensors (also sharded),
                pytorch_model.bin, tf_model.h5 or flax_model.msgpack; or a hub id.
            dtype: ``"fp32"`` / ``"bf16"`` / ``"fp16"`` (variables and compute in that dtype, any
                spelling of :func:`gpt2_core.inputs.dtype_name`), ``"auto"`` (the checkpoint's
                dtype) or a Keras policy name such as ``"mixed_bfloat16"``; default: Keras'
                global policy.
            config: use this config instead of the checkpoint's config.json.
            prefer: read this format when several are present.
            strict: raise on missing / unexpected / mis-shaped weights.
            quantize: ``"int8"`` (or ``dtype="int8"``): int8 weight-only quantization, see
                :mod:`gpt2_tf.quantize`.
            **config_overrides: config fields to change (e.g. ``num_labels=3``).

        Example:
            >>> model = GPT2LMHeadModel.from_pretrained("gpt2", dtype="mixed_bfloat16")  # doctest: +SKIP
        """
        from gpt2_core import checkpoint
        from gpt2_tf import quantize as Q
        from gpt2_tf.weights import load_canonical

        dtype, quantize = Q.resolve(dtype, quantize)
        cfg, sd, report = checkpoint.load_pretrained(
            name_or_path, cls.head, config=config, prefer=prefer, strict=strict, **config_overrides
        )
        if isinstance(dtype, str) and dtype.lower() == "auto":
            dtype = stored_dtype_name(sd)  # the checkpoint's own dtype
        with _no_init():
            model = cls(cfg, dtype=_policy(dtype))
        load_canonical(model, sd, strict=strict, init_missing=True)
        try:
            from gpt2_core.generation_config import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(
                checkpoint.hub.resolve_dir(name_or_path)
            )
        except (ValueError, OSError):
            pass
        logger.info("loaded %s: %s", name_or_path, report.summary())
        return Q.quantize_model(model, quantize) if quantize else model

    @classmethod
    def from_state_dict(
        cls,
        config: GPT2Config,
        state_dict: Mapping[str, Any],
        *,
        dtype: Any = None,
        strict: bool = True,
    ):
        """A model built from ``config`` and filled from a canonical state dict (HF PyTorch
        names and layouts); raises ``CheckpointError`` naming bad keys when ``strict``."""
        with _no_init():
            model = cls(config, dtype=_policy(dtype))
        model.load_state_dict(state_dict, strict=strict)
        return model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        tf_h5: bool = False,
        max_shard_size: int | str = "5GB",
        dtype: Any = None,
    ) -> list:
        """Write config.json + model.safetensors (and, with ``tf_h5``, a transformers tf_model.h5).

        Returns the written paths.
        """
        from gpt2_core import checkpoint
        from gpt2_tf.quantize import refuse_save
        from gpt2_tf.weights import to_canonical

        refuse_save(self)
        formats = ("safetensors", "tf") if tf_h5 else ("safetensors",)
        written = checkpoint.save_pretrained(
            to_canonical(self),
            self.config,
            save_directory,
            self.head,
            max_shard_size=max_shard_size,
            dtype=dtype,
            formats=formats,
        )
        if self.generation_config is not None:
            written.append(self.generation_config.save_pretrained(save_directory))
        return written

    def get_input_embeddings(self) -> keras.layers.Embedding:
        base = self if isinstance(self, GPT2Model) else self.transformer
        return base.wte

    def num_parameters(self) -> int:
        """Parameter count (the tied LM head has no variable of its own)."""
        return int(sum(np.prod(v.shape) for v in self.weights))


def _policy(dtype: Any):
    """from_pretrained's dtype argument -> a Keras dtype policy (or None for the global one)."""
    if dtype is None:
        return None
    if isinstance(dtype, keras.DTypePolicy):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in ("mixed_bfloat16", "mixed_bf16"):
        return keras.DTypePolicy("mixed_bfloat16")
    if isinstance(dtype, str) and dtype.lower() in ("mixed_float16", "mixed_fp16"):
        return keras.DTypePolicy("mixed_float16")
    name = dtype_name(dtype)
    if name == "auto":
        raise ValueError(
            "dtype='auto' (the checkpoint's dtype) is for from_pretrained; give "
            "fp32, bf16 or fp16 here"
        )
    return keras.DTypePolicy(name)


def _keep_mask(mask, B, S):
    """(B, S) 0/1 mask -> (B, 1, 1, S) boolean, True = may attend."""
    return tf.cast(tf.reshape(mask, [B, S]), tf.bool)[:, None, None, :]


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2Model(GPT2PreTrainedModel):
    """The bare GPT-2 transformer: embeddings, ``n_layer`` blocks, final LayerNorm.

    Args:
        config: the model config.
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype`` policy).

    Call arguments (all optional keywords, as transformers'): ``input_ids`` (B, T) int,
    ``past_key_values`` (a tuple over layers of (k, v), each (B, H, S_past, D)),
    ``attention_mask`` (B, S_past + T) 0/1, ``token_type_ids``, ``position_ids`` (B|1, T),
    ``head_mask`` (H,) or (L, H), ``inputs_embeds`` (B, T, C), ``encoder_hidden_states``,
    ``encoder_attention_mask``, ``use_cache``, ``output_attentions``, ``output_hidden_states``,
    ``return_dict``, ``training``. A dict of these as the first argument also works (fit style).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2Model(tiny_config())
        >>> out = model(input_ids=tf.constant([[1, 2, 3]]))
        >>> out.last_hidden_state.shape
        TensorShape([1, 3, 36])
    """

    head = "base"
    _OUTPUT_KEYS = ("last_hidden_state",)

    def __init__(self, config: GPT2Config | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg, dt = self.config, self.dtype_policy
        with keras.name_scope(self.name, caller=self):  # full variable paths
            self.wte = keras.layers.Embedding(
                cfg.vocab_size,
                cfg.n_embd,
                name="wte",
                dtype=dt,
                embeddings_initializer=_normal(cfg.initializer_range),
            )
            self.wte.build((None,))
            self.wpe = keras.layers.Embedding(
                cfg.n_positions,
                cfg.n_embd,
                name="wpe",
                dtype=dt,
                embeddings_initializer=_normal(cfg.initializer_range),
            )
            self.wpe.build((None,))
            self.drop = keras.layers.Dropout(cfg.embd_pdrop, name="drop", dtype=dt)
            self.h = [
                GPT2Block(cfg, layer_idx=i, name=f"h_{i}", dtype=dt) for i in range(cfg.n_layer)
            ]
            self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, name="ln_f", dtype=dt)
        self.built = True

    def _head_masks(self, head_mask):
        """transformers' get_head_mask: (H,) or (L, H) -> per layer (1, H, 1, 1) or None."""
        L, H = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * L
        head_mask = tf.convert_to_tensor(head_mask)
        if head_mask.shape.rank == 1:
            return [tf.reshape(head_mask, [1, H, 1, 1])] * L
        if head_mask.shape.rank == 2:
            return [tf.reshape(head_mask[i], [1, H, 1, 1]) for i in range(L)]
        raise ValueError(f"head_mask must be (n_head,) or (n_layer, n_head), got {head_mask.shape}")

    def _flatten_inputs(self, input_ids, inputs_embeds, static):
        """Check the ids / embeddings and fold leading dims: (..., T) -> (B, T); returns
        ``(input_ids, inputs_embeds, input_shape, checks)`` (graph-mode range checks)."""
        cfg = self.config
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError(
                "You cannot specify both input_ids and inputs_embeds at the same "
                "time: pass either one"
            )
        checks = []
        if input_ids is not None:
            if input_ids.shape.rank is not None:
                check_ids_shape(input_ids.shape.as_list())
            if not static:
                checks += (
                    _check_int_ids("input_ids", input_ids, cfg.vocab_size, "the vocabulary") or []
                )
            input_shape = tf.shape(input_ids)
            input_ids = tf.reshape(input_ids, [-1, _static_dim(input_ids, -1)])  # (B, T)
        elif inputs_embeds is not None:
            input_shape = tf.shape(inputs_embeds)[:-1]
            T = _static_dim(inputs_embeds, -2)
            inputs_embeds = tf.reshape(inputs_embeds, [-1, T, cfg.n_embd])  # (B, T, C)
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        return input_ids, inputs_embeds, input_shape, checks

    def _read_cache(self, past_key_values, B, T, cache_position):
        """The per-layer pasts, the past length, the key length S and the slots of the new
        tokens; ``static`` with a :class:`StaticCache` (or preallocated buffers and
        ``cache_position``)."""
        cfg = self.config
        if isinstance(past_key_values, StaticCache):
            if cache_position is None:
                raise ValueError("a StaticCache needs cache_position (the slots of the new tokens)")
            past_key_values = tuple(zip(past_key_values.keys, past_key_values.values))
        static = cache_position is not None
        if past_key_values is not None and len(past_key_values) != cfg.n_layer:
            raise ValueError(
                f"past_key_values has {len(past_key_values)} layers, the model has {cfg.n_layer}"
            )
        if static:
            cache_position = tf.cast(cache_position, tf.int32)
            S = _static_dim(past_key_values[0][0], 2)
            past_length = cache_position[0]
        else:
            past_length = (
                _static_dim(past_key_values[0][0], 2) if past_key_values is not None else 0
            )
            S = past_length + T
            cache_position = tf.range(past_length, S)
        layer_pasts = past_key_values if past_key_values is not None else [None] * cfg.n_layer
        return layer_pasts, past_length, S, cache_position, static

    def _embed(
        self,
        input_ids,
        inputs_embeds,
        position_ids,
        token_type_ids,
        cache_position,
        T,
        past_length,
        S,
        static,
        checks,
        training,
    ):
        """wte(ids) + wpe(positions) [+ wte(token types)], then dropout: (B, T, C)."""
        cfg = self.config
        if position_ids is None:
            if isinstance(S, int) and cfg.n_positions < S:
                raise ValueError(
                    f"sequence length {S} (past {past_length} + new {T}) exceeds "
                    f"n_positions={cfg.n_positions}"
                )
            if not isinstance(S, int):
                checks.append(
                    tf.debugging.assert_less_equal(
                        S,
                        cfg.n_positions,
                        message=f"sequence length exceeds n_positions={cfg.n_positions}",
                    )
                )
            position_ids = cache_position[None, :]  # (1, T)
        else:
            if not static:
                checks += (
                    _check_int_ids("position_ids", position_ids, cfg.n_positions, "the positions")
                    or []
                )
            position_ids = tf.reshape(position_ids, [-1, T])
        if token_type_ids is not None:
            checks += (
                _check_int_ids("token_type_ids", token_type_ids, cfg.vocab_size, "the vocabulary")
                or []
            )
            token_type_ids = tf.reshape(token_type_ids, [-1, T])

        with tf.control_dependencies(checks):
            if inputs_embeds is None:
                inputs_embeds = self.wte(input_ids)  # (B, T, C)
                if not static:
                    # XLA cannot raise: make rows with out-of-range ids NaN rather than silently
                    # reading a clamped (CPU) or zero (GPU) embedding
                    bad = tf.reduce_any((input_ids < 0) | (input_ids >= cfg.vocab_size), axis=-1)
                    inputs_embeds = tf.where(
                        bad[:, None, None],
                        tf.constant(float("nan"), inputs_embeds.dtype),
                        inputs_embeds,
                    )
            hidden_states = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            hidden_states = hidden_states + self.wte(token_type_ids)
        return self.drop(hidden_states, training=training)

    def _attention_masks(
        self, attention_mask, encoder_hidden_states, encoder_attention_mask, B, S, cache_position
    ):
        """Boolean masks, True = may attend: causal (1, 1, T, S), causal & not padding
        (B|1, 1, T, S), and the encoder's (B, 1, 1, S_enc) or None. Booleans because Keras
        would autocast a float mask to bf16/fp16."""
        causal = tf.range(S)[None, :] <= cache_position[:, None]  # (T, S)
        causal_mask = causal[None, None]
        if attention_mask is not None:
            if (
                attention_mask.shape.rank is not None
                and attention_mask.shape[-1] is not None
                and isinstance(S, int)
                and attention_mask.shape[-1] != S
            ):
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[-1]} positions but "
                    f"past + new tokens are {S}"
                )
            keep = causal_mask & _keep_mask(attention_mask, B, S)
        else:
            keep = causal_mask
        encoder_mask = None
        if encoder_hidden_states is not None:
            enc_B, enc_S = (
                _static_dim(encoder_hidden_states, 0),
                _static_dim(encoder_hidden_states, 1),
            )
            if encoder_attention_mask is None:
                encoder_attention_mask = tf.ones([enc_B, enc_S], tf.int32)
            encoder_mask = _keep_mask(encoder_attention_mask, enc_B, enc_S)
        return keep, causal_mask, encoder_mask

    def _run_blocks(
        self,
        hidden_states,
        layer_pasts,
        keep,
        causal_mask,
        head_masks,
        encoder_hidden_states,
        encoder_mask,
        cache_position,
        static,
        use_cache,
        output_attentions,
        output_hidden_states,
        training,
    ):
        """Every block in turn; returns (hidden, presents, all hidden states, self / cross
        attention weights), the last three None when not asked for."""
        presents = [] if use_cache else None
        all_hidden = [] if output_hidden_states else None
        all_self = [] if output_attentions else None
        all_cross = (
            []
            if output_attentions
            and self.config.add_cross_attention
            and encoder_hidden_states is not None
            else None
        )
        for block, layer_past, layer_head_mask in zip(self.h, layer_pasts, head_masks):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, present, self_w, cross_w = block(
                hidden_states,
                layer_past=layer_past,
                attention_mask=keep,
                causal_mask=causal_mask,
                head_mask=layer_head_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_mask,
                use_cache=use_cache,
                output_attentions=output_attentions,
                cache_position=cache_position if static else None,
                training=training,
            )
            if presents is not None:
                presents.append(present)
            if all_self is not None:
                all_self.append(self_w)
                if all_cross is not None:
                    all_cross.append(cross_w)
        return hidden_states, presents, all_hidden, all_self, all_cross

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        training=None,
    ):
        """Forward pass; returns ``BaseModelOutputWithPastAndCrossAttentions``.

        ``cache_position`` (T,) with a :class:`StaticCache` (or ``past_key_values`` of
        preallocated (B, H, S, D) buffers) selects the static cache used by the XLA generation
        loop (slots are written in place, ``attention_mask`` then covers all S slots).
        """
        cfg = self.config
        output_attentions = (
            cfg.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict
        input_ids, attention_mask, token_type_ids, position_ids, encoder_hidden_states = (
            _to_tensor(x)
            for x in (
                input_ids,
                attention_mask,
                token_type_ids,
                position_ids,
                encoder_hidden_states,
            )
        )
        static_cache = past_key_values if isinstance(past_key_values, StaticCache) else None

        input_ids, inputs_embeds, input_shape, checks = self._flatten_inputs(
            input_ids, inputs_embeds, static=cache_position is not None
        )
        B, T = (
            _static_dim(input_ids if input_ids is not None else inputs_embeds, i) for i in (0, 1)
        )
        layer_pasts, past_length, S, cache_position, static = self._read_cache(
            past_key_values, B, T, cache_position
        )
        hidden_states = self._embed(
            input_ids,
            inputs_embeds,
            position_ids,
            token_type_ids,
            cache_position,
            T,
            past_length,
            S,
            static,
            checks,
            training,
        )
        keep, causal_mask, encoder_mask = self._attention_masks(
            attention_mask, encoder_hidden_states, encoder_attention_mask, B, S, cache_position
        )
        hidden_states, presents, all_hidden, all_self, all_cross = self._run_blocks(
            hidden_states,
            layer_pasts,
            keep,
            causal_mask,
            self._head_masks(head_mask),
            encoder_hidden_states,
            encoder_mask,
            cache_position,
            static,
            use_cache,
            output_attentions,
            output_hidden_states,
            training,
        )
        hidden_states = self.ln_f(hidden_states)
        out_shape = tf.concat([input_shape, [cfg.n_embd]], 0)
        hidden_states = tf.reshape(hidden_states, out_shape)  # (B, [N,] T, C)
        if all_hidden is not None:
            all_hidden.append(hidden_states)

        past_out = None
        if use_cache:
            past_out = tuple(presents)
            if static_cache is not None:
                past_out = StaticCache(
                    keys=tuple(p[0] for p in presents), values=tuple(p[1] for p in presents)
                )
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_out,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_self) if all_self is not None else None,
            cross_attentions=tuple(all_cross) if all_cross is not None else None,
        )
        return out if return_dict else out.to_tuple()


# ----------------------------------------------------------------------------- heads
from gpt2_tf.generation import GenerationMixin  # noqa: E402  (generation imports our outputs)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with a language-modelling head (tied to ``wte`` unless ``tie_word_embeddings=False``).

    ``labels`` (B, T) give transformers' shifted LM loss (-100 ignored). ``generate`` runs one
    XLA-compiled loop over a static cache (see :mod:`gpt2_tf.generation`).

    Args:
        config: the model config.
        **kwargs: ``keras.Model`` arguments (``name``, ``dtype`` policy).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2LMHeadModel(tiny_config())
        >>> ids = tf.constant([[1, 2, 3]])
        >>> out = model(input_ids=ids, labels=ids)
        >>> out.logits.shape, out.loss.shape
        (TensorShape([1, 3, 257]), TensorShape([]))
    """

    head = "lm"

    def __init__(self, config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        with keras.name_scope(self.name, caller=self):
            self.transformer = GPT2Model(cfg, name="transformer", dtype=self.dtype_policy)
            # tied (the default): no lm_head variable, the logits are hidden @ wte^T
            self.lm_head = None
            if not cfg.tie_word_embeddings:
                self.lm_head = _dense(
                    cfg.vocab_size, cfg, "lm_head", self.dtype_policy, use_bias=False
                )
        self.built = True

    def _lm_logits(self, hidden_states):
        """LM logits (..., V): ``hidden @ wte^T`` when tied, else ``lm_head(hidden)``."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        wte = tf.cast(self.transformer.wte.embeddings, hidden_states.dtype)  # (V, C)
        flat = tf.reshape(hidden_states, [-1, self.config.n_embd])
        logits = tf.matmul(flat, wte, transpose_b=True)  # (B*T, V)
        return tf.reshape(
            logits, tf.concat([tf.shape(hidden_states)[:-1], [self.config.vocab_size]], 0)
        )

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        logits_to_keep: int = 0,
        training=None,
    ):
        """Logits (B, T, V) and, with ``labels`` (B, T), the shifted LM loss (-100 ignored).

        ``logits_to_keep=k`` computes logits for the last k positions only (0 = all).
        Other arguments: see :meth:`GPT2Model.call`.
        """
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            return_dict=True,
            training=training,
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        hidden = base.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:, :]
        logits = self._lm_logits(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, _to_tensor(labels), self.config.vocab_size)
        out = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
            cross_attentions=base.cross_attentions,
        )
        return out if return_dict else out.to_tuple()


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2DoubleHeadsModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with an LM head and a multiple-choice head (inputs (B, N, T)).

    ``labels`` give the LM loss (``loss``) and ``mc_labels`` (B,) the multiple-choice loss
    (``mc_loss``), both as transformers; ``fit`` trains on their sum.

    Args:
        config: the model config (``summary_*`` fields shape the multiple-choice head).
        **kwargs: ``keras.Model`` arguments.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2DoubleHeadsModel(tiny_config())
        >>> out = model(input_ids=tf.constant([[[1, 2, 3], [4, 5, 6]]]), mc_token_ids=[[2, 2]])
        >>> out.mc_logits.shape
        TensorShape([1, 2])
    """

    head = "double_heads"
    _LOSS_KEYS = ("loss", "mc_loss")
    _OUTPUT_KEYS = ("logits", "mc_logits")

    def __init__(self, config, **kwargs: Any) -> None:
        if isinstance(config, GPT2Config) and config.num_labels != 1:
            config = config.copy(num_labels=1)  # as transformers, on a copy (see gpt2_torch)
        super().__init__(config, **kwargs)
        cfg = self.config
        with keras.name_scope(self.name, caller=self):
            self.transformer = GPT2Model(cfg, name="transformer", dtype=self.dtype_policy)
            # tied (the default): no lm_head variable, the logits are hidden @ wte^T
            self.lm_head = None
            if not cfg.tie_word_embeddings:
                self.lm_head = _dense(
                    cfg.vocab_size, cfg, "lm_head", self.dtype_policy, use_bias=False
                )
        with keras.name_scope(self.name, caller=self):
            self.multiple_choice_head = GPT2SequenceSummary(
                self.config, name="multiple_choice_head", dtype=self.dtype_policy
            )
        self.built = True

    def _lm_logits(self, hidden_states):
        """LM logits (..., V): ``hidden @ wte^T`` when tied, else ``lm_head(hidden)``."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        wte = tf.cast(self.transformer.wte.embeddings, hidden_states.dtype)  # (V, C)
        flat = tf.reshape(hidden_states, [-1, self.config.n_embd])
        logits = tf.matmul(flat, wte, transpose_b=True)  # (B*T, V)
        return tf.reshape(
            logits, tf.concat([tf.shape(hidden_states)[:-1], [self.config.vocab_size]], 0)
        )

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        mc_token_ids=None,
        labels=None,
        mc_labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cache_position=None,
        training=None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            return_dict=True,
            training=training,
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cache_position=cache_position,
        )
        hidden = base.last_hidden_state  # (B, N, T, C)
        lm_logits = self._lm_logits(hidden)
        if mc_token_ids is not None:
            mc_token_ids = tf.convert_to_tensor(mc_token_ids)
            T = _static_dim(hidden, -2)
            checks = (
                _check_int_ids(
                    "mc_token_ids", mc_token_ids, T if isinstance(T, int) else None, "the sequence"
                )
                or []
            )
            with tf.control_dependencies(checks):
                mc_token_ids = tf.identity(mc_token_ids)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids, training=training)
        if mc_logits.shape[-1] == 1:
            mc_logits = tf.squeeze(mc_logits, -1)  # (B, N)
        mc_loss = lm_loss = None
        if mc_labels is not None:
            n = _static_dim(mc_logits, -1)
            mc_loss = _masked_ce(
                tf.reshape(mc_logits, [-1, n]), tf.reshape(_to_tensor(mc_labels), [-1])
            )
        if labels is not None:
            lm_loss = causal_lm_loss(lm_logits, _to_tensor(labels), self.config.vocab_size)
        out = GPT2DoubleHeadsModelOutput(
            loss=lm_loss,
            mc_loss=mc_loss,
            logits=lm_logits,
            mc_logits=mc_logits,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict else out.to_tuple()


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a linear ``score`` head pooled at the last non-pad token of each row.

    The pooled position is ``argmax(arange(T) * (input_ids != pad_token_id))``, correct for
    left and right padding; without ``config.pad_token_id`` it is the last position (batch 1
    only, as transformers). The loss follows ``config.problem_type`` (inferred from the labels
    when None: MSE for one label, cross-entropy for int labels, BCE otherwise).

    Args:
        config: the model config (``num_labels``, ``pad_token_id``, ``problem_type``).
        **kwargs: ``keras.Model`` arguments.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=0))
        >>> model(input_ids=tf.constant([[0, 5, 6], [5, 6, 0]])).logits.shape
        TensorShape([2, 3])
    """

    head = "sequence_classification"

    def __init__(self, config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        with keras.name_scope(self.name, caller=self):
            self.transformer = GPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        with keras.name_scope(self.name, caller=self):
            self.score = _dense(
                self.config.num_labels, self.config, "score", self.dtype_policy, use_bias=False
            )
        self.built = True

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=None,
    ):
        cfg = self.config
        return_dict = cfg.use_return_dict if return_dict is None else return_dict
        input_ids = _to_tensor(input_ids)
        base = self.transformer(
            return_dict=True,
            training=training,
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(base.last_hidden_state)  # (B, T, num_labels)
        B, T = _static_dim(logits, 0), _static_dim(logits, 1)
        if cfg.pad_token_id is None:
            if isinstance(B, int) and B != 1:
                raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
            last = tf.fill([B], T - 1)
        elif input_ids is not None:
            # rightmost non-pad token: handles left and right padding
            non_pad = tf.cast(tf.not_equal(input_ids, cfg.pad_token_id), tf.int32)
            last = tf.argmax(
                tf.range(T, dtype=tf.int32)[None, :] * non_pad, axis=-1, output_type=tf.int32
            )
        else:
            logger.warning(
                "%s will not detect padding tokens in `inputs_embeds`", type(self).__name__
            )
            last = tf.fill([B], T - 1)
        pooled = tf.gather(logits, last, batch_dims=1)  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self._classification_loss(pooled, _to_tensor(labels))
        out = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict else out.to_tuple()

    def _classification_loss(self, pooled, labels):
        n = self.config.num_labels
        problem = problem_type(self.config, labels.dtype.is_integer)
        pooled = tf.cast(pooled, tf.float32)
        if problem == "regression":
            labels = tf.cast(labels, tf.float32)
            if n == 1:
                return tf.reduce_mean(
                    tf.square(tf.reshape(pooled, [-1]) - tf.reshape(labels, [-1]))
                )
            return tf.reduce_mean(tf.square(pooled - labels))
        if problem == "single_label_classification":
            return _masked_ce(tf.reshape(pooled, [-1, n]), tf.reshape(labels, [-1]))
        labels = tf.cast(labels, tf.float32)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=pooled))


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 with a per-token ``classifier`` (dropout ``config.classifier_dropout_prob``).

    Args:
        config: the model config (``num_labels``, ``classifier_dropout``).
        **kwargs: ``keras.Model`` arguments.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForTokenClassification(tiny_config(num_labels=4))
        >>> model(input_ids=tf.constant([[1, 2, 3]])).logits.shape
        TensorShape([1, 3, 4])
    """

    head = "token_classification"

    def __init__(self, config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        with keras.name_scope(self.name, caller=self):
            self.transformer = GPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        dt = self.dtype_policy
        self.dropout = keras.layers.Dropout(
            self.config.classifier_dropout_prob, name="dropout", dtype=dt
        )
        with keras.name_scope(self.name, caller=self):
            self.classifier = _dense(self.config.num_labels, self.config, "classifier", dt)
        self.built = True

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        past_key_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            return_dict=True,
            training=training,
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = self.dropout(base.last_hidden_state, training=training)
        logits = self.classifier(hidden)  # (B, T, num_labels)
        loss = None
        if labels is not None:
            n = self.config.num_labels
            loss = _masked_ce(tf.reshape(logits, [-1, n]), tf.reshape(_to_tensor(labels), [-1]))
        out = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=base.hidden_states, attentions=base.attentions
        )
        return out if return_dict else out.to_tuple()


@keras.saving.register_keras_serializable(package="gpt2_tf")
class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 with an extractive-QA head ``qa_outputs`` (start and end logits).

    ``start_positions`` / ``end_positions`` (B,) give the mean of the two cross-entropies;
    positions outside the sequence are clamped to T and ignored, as transformers.

    Args:
        config: the model config.
        **kwargs: ``keras.Model`` arguments.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForQuestionAnswering(tiny_config())
        >>> model(input_ids=tf.constant([[1, 2, 3]])).start_logits.shape
        TensorShape([1, 3])
    """

    head = "question_answering"
    _OUTPUT_KEYS = ("start_logits", "end_logits")

    def __init__(self, config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        with keras.name_scope(self.name, caller=self):
            self.transformer = GPT2Model(self.config, name="transformer", dtype=self.dtype_policy)
        with keras.name_scope(self.name, caller=self):
            self.qa_outputs = _dense(2, self.config, "qa_outputs", self.dtype_policy)
        self.built = True

    @_unpack_inputs
    def call(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            return_dict=True,
            training=training,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.qa_outputs(base.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            T = _static_dim(start_logits, 1)

            def clamp(p):
                p = tf.reshape(tf.cast(_to_tensor(p), tf.int32), [-1])
                return tf.clip_by_value(p, 0, T)  # T = ignored index

            start_loss = _masked_ce(start_logits, clamp(start_positions), ignore_index=T)
            end_loss = _masked_ce(end_logits, clamp(end_positions), ignore_index=T)
            loss = (start_loss + end_loss) / 2.0
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict else out.to_tuple()


MODEL_CLASSES: dict[str, type[GPT2PreTrainedModel]] = {
    "base": GPT2Model,
    "lm": GPT2LMHeadModel,
    "double_heads": GPT2DoubleHeadsModel,
    "sequence_classification": GPT2ForSequenceClassification,
    "token_classification": GPT2ForTokenClassification,
    "question_answering": GPT2ForQuestionAnswering,
}
