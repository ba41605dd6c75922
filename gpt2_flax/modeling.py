"""GPT-2 in Flax NNX: the base model and all six heads, read top to bottom.

The same classes and attribute names as ``gpt2_torch`` and ``gpt2_tf`` (``GPT2Attention``,
``GPT2MLP``, ``GPT2Block``, ``GPT2Model`` and six heads; ``wte, wpe, h[i].ln_1, attn.c_attn,
attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f``), so the three files read as translations.
Behaviour is that of transformers 4.57.6's PyTorch *eager* path (the zoo's reference), with every
``GPT2Config`` flag honoured.

Layouts. GPT-2's ``Conv1D`` computes ``x @ W + b`` with ``W`` stored **(in, out)**: exactly the
layout of ``nnx.Linear``'s ``kernel``, so ``c_attn / c_proj / c_fc`` load from the canonical
state dict without a transpose. (transformers' own Flax port stores them (out, in) and transposes
at call time; that is the "Flax Conv1D trap" that :mod:`gpt2_flax.weights` documents.) Only the
``nn.Linear`` heads (``lm_head``, ``score``, ``classifier``, ``qa_outputs``, the summary) are
transposed on load, because PyTorch's Linear stores (out, in).

Functional use: the modules are ordinary NNX modules, so ``nnx.split`` / ``nnx.merge``,
``nnx.jit``, ``nnx.grad`` and ``jax.jit`` over ``(graphdef, state)`` all work. Outputs are the
``gpt2_core.outputs`` classes, registered as pytrees so they cross ``jit``.

Shape legend used in comments:
    B = batch, N = choices (double heads), T = query length (new tokens), S = key length (past
    + T, or the static cache length), H = heads, D = head dim, C = n_embd, F = inner dim,
    V = vocab size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import checkify

from gpt2_core import naming
from gpt2_core import outputs as core_outputs
from gpt2_core.config import GPT2Config
from gpt2_core.generation import problem_type
from gpt2_core.inputs import check_ids_shape, dtype_name, stored_dtype_name
from gpt2_core.outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    ModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from gpt2_flax._framework import FrameworkMixin, _static_config
from gpt2_flax.generation import GenerationMixin

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value skipped by every loss, as torch's CrossEntropyLoss


# ---------------------------------------------------------------------------- activations
def _gelu_tanh(x: jax.Array) -> jax.Array:
    # gelu_new / gelu_fast / gelu_pytorch_tanh are all GPT-2's tanh approximation
    return jax.nn.gelu(x, approximate=True)


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


#: ``GPT2Config.activation_function`` -> function (the keys of ``gpt2_core.config.ACTIVATIONS``).
ACT2FN = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


# ---------------------------------------------------------------------------- outputs as pytrees
def _register_output_pytrees() -> None:
    """Make the shared output classes pytrees so they can be returned from ``jit``/``grad``."""

    def flatten(out: ModelOutput):
        keys = tuple(out.keys())
        return tuple(out[k] for k in keys), (keys,)

    def make_unflatten(cls):
        def unflatten(aux, children):
            (keys,) = aux
            return cls(**dict(zip(keys, children)))

        return unflatten

    for name in core_outputs.__all__:
        cls = getattr(core_outputs, name)
        if cls is ModelOutput:
            continue
        with contextlib.suppress(ValueError):  # already registered (module reloaded)
            jax.tree_util.register_pytree_node(cls, flatten, make_unflatten(cls))


_register_output_pytrees()


# ---------------------------------------------------------------------------- input checks
def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_int_array(x: Any, name: str) -> jax.Array:
    """``x`` as an integer jax array; float or bool ids are refused (they would be truncated)."""
    if isinstance(x, list | tuple):
        x = np.asarray(x)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array of integer token ids, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(f"{name} must hold integers, got dtype {dtype}")
    return jnp.asarray(x)


def _check_range(x: jax.Array, high: int, name: str, what: str) -> None:
    """Raise if a concrete ``x`` leaves [0, high); under ``jit`` register a checkify check.

    JAX gathers clamp (or wrap negative indices) silently, so an out-of-range id would still
    return plausible logits; we refuse before computing anything. Under ``jit`` the check is a
    :func:`checkify.debug_check` (active inside :func:`checked`), and the lookup itself fills
    invalid rows with NaN so an invalid id can never produce finite logits.
    """
    if x.size == 0:
        return
    if _is_traced(x):
        checkify.debug_check(
            jnp.all((x >= 0) & (x < high)),
            f"{name} out of range: every value must be in [0, {high}) ({what})",
        )
        return
    lo, hi = int(jnp.min(x)), int(jnp.max(x))
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside [0, {high}) ({what})")


def _lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Row lookup that yields NaN rows for ids outside the table (never a clamped row)."""
    n = table.shape[0]
    safe = jnp.where((ids >= 0) & (ids < n), ids, n)  # negative ids would wrap: send them out
    return jnp.take(table, safe, axis=0, mode="fill", fill_value=jnp.nan)


def _jnp_dtype(dtype: Any, state_dict: dict[str, Any] | None = None) -> Any:
    """A dtype argument in any spelling -> a jnp dtype; ``"auto"``: the checkpoint's dtype."""
    name = dtype_name(dtype)
    if name is None:
        return jnp.float32
    if name == "auto":
        name = stored_dtype_name(state_dict or {})
    return jnp.dtype(name)


def checked(fn):
    """Wrap ``fn`` (e.g. a jitted forward) so that bad ids raise under ``jit`` too.

    Outside ``jit`` the models check concrete ids themselves. Inside ``jit`` the ids are
    tracers; the models register :func:`jax.experimental.checkify.debug_check` checks, which
    this wrapper turns on (``checkify.checkify``) and raises as ``JaxRuntimeError`` naming the
    problem. Modules passed as arguments are split into state and merged inside the checked
    trace (their RNG counts and other state are written back afterwards), so a model in train
    mode -- dropout drawing keys -- works as in eval mode. Pass the model as an argument rather
    than closing over it.

    Example:
        >>> fwd = checked(nnx.jit(lambda m, ids: m(input_ids=ids).logits))   # doctest: +SKIP
        >>> fwd(model, jnp.array([[5, 999999]]))  # raises: input_ids out of range
    """

    def pure(graphdef, state):
        args, kwargs = nnx.merge(graphdef, state, copy=True)  # fresh Variables in this trace
        out = fn(*args, **kwargs)
        return out, nnx.state((args, kwargs))

    checked_fn = checkify.checkify(pure, errors=checkify.user_checks)

    def wrapper(*args, **kwargs):
        graphdef, state = nnx.split((list(args), kwargs))
        err, (out, new_state) = checked_fn(graphdef, state)
        err.throw()
        nnx.update((list(args), kwargs), new_state)
        return out

    return wrapper


# ---------------------------------------------------------------------------- losses
def cross_entropy(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX
) -> jax.Array:
    """Mean cross-entropy over the labels that are not ``ignore_index`` (torch semantics).

    ``logits`` (n, K), ``labels`` (n,). All labels ignored gives NaN, as torch's 0/0.
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def _check_labels(
    labels: jax.Array, num_classes: int, name: str, ignore_index: int | None = IGNORE_INDEX
) -> None:
    if _is_traced(labels) or labels.size == 0:
        return
    arr = np.asarray(labels)
    if ignore_index is not None:
        arr = arr[arr != ignore_index]
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} must be in [0, {num_classes}) or {ignore_index} (ignored), "
            f"got values in [{arr.min()}, {arr.max()}]"
        )


def _result(out: ModelOutput, return_dict: bool):
    return out if return_dict else out.to_tuple()


# ---------------------------------------------------------------------------- building blocks
def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


class Conv1D(nnx.Linear):
    """GPT-2's "Conv1D": ``x @ W + b`` with ``W`` stored (in, out) = (nx, nf), which is exactly
    ``nnx.Linear``'s ``kernel`` layout, so loading needs no transpose.

    Args:
        nf: output features.
        nx: input features.
        init_std: std of the normal initialiser of ``kernel``.
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.
    """

    def __init__(
        self,
        nf: int,
        nx: int,
        init_std: float = 0.02,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__(
            nx, nf, kernel_init=_normal(init_std), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )


class LayerNorm(nnx.LayerNorm):
    """LayerNorm over the last dim (``scale`` / ``bias``), variance as torch computes it.

    Args:
        dim: normalised size.
        epsilon: ``config.layer_norm_epsilon``.
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.
    """

    def __init__(
        self,
        dim: int,
        epsilon: float,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        # use_fast_variance=False: E[(x - mean)^2] as torch, not E[x^2] - mean^2
        super().__init__(
            dim,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_fast_variance=False,
            rngs=rngs,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StaticCache:
    """A preallocated key/value cache: one ``(B, H, max_length, D)`` buffer per layer.

    A forward pass with ``past_key_values=cache`` writes its keys/values at ``index`` (an int32
    scalar: the filled slots; ``lax.dynamic_update_slice``) and returns the cache advanced by T,
    so shapes never change under ``jit``. Its ``attention_mask`` must then cover all
    ``max_length`` slots (B, S); slots after the current position are masked causally, so they
    may be 1. (The torch and TF caches take the slots as ``cache_position`` instead: a
    functional cache carries its own write position.)

    Example:
        >>> cache = StaticCache.allocate(model.config, batch_size=1, max_length=64)
        >>> out = model(ids, past_key_values=cache, attention_mask=jnp.ones((1, 64), jnp.int32))
        >>> out.past_key_values.index  # == ids.shape[1]
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    index: jax.Array

    @classmethod
    def allocate(
        cls, config: GPT2Config, batch_size: int, max_length: int, dtype: Any = jnp.float32
    ) -> StaticCache:
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, H, S, D)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(
            keys=zeros,
            values=tuple(jnp.zeros(shape, dtype) for _ in zeros),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def reorder(self, index: jax.Array) -> StaticCache:
        """Reorder the batch rows (beam search): row i becomes old row ``index[i]``."""
        return StaticCache(
            keys=tuple(k[index] for k in self.keys),
            values=tuple(v[index] for v in self.values),
            index=self.index,
        )


class GPT2Attention(nnx.Module):
    """Multi-head causal self-attention (or cross-attention) with a fused q/k/v projection.

    ``c_attn`` is fused (C -> 3C for q, k, v; for cross-attention C -> 2C for k, v and a separate
    ``q_attn``). Scores are divided by sqrt(D) (``scale_attn_weights``) and by ``layer_idx + 1``
    (``scale_attn_by_inverse_layer_idx``); ``reorder_and_upcast_attn`` computes QK^T and the
    softmax in float32. Masked scores get ``finfo(dtype).min`` (never -inf alone), so fully
    masked rows (left pads) stay finite, as in transformers.

    Args:
        config: the model config; reads ``scale_attn_weights``,
            ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn`` and dropouts.
        is_cross_attention: build ``q_attn`` + a k/v-only ``c_attn`` for attending to an encoder.
        layer_idx: index of the block (for ``scale_attn_by_inverse_layer_idx``).
        dtype: computation dtype; param_dtype: dtype of the parameters.
        rngs: ``nnx.Rngs`` for initialisation and dropout.

    Example:
        >>> attn = GPT2Attention(tiny_config(), layer_idx=0, rngs=nnx.Rngs(0))
    """

    def __init__(
        self,
        config: GPT2Config,
        is_cross_attention: bool = False,
        layer_idx: int = 0,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        C, std = config.n_embd, config.initializer_range
        proj_std = std / math.sqrt(2 * config.n_layer)  # GPT-2's scaled residual init
        self.embed_dim, self.num_heads, self.head_dim = C, config.n_head, config.head_dim
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        scale = 1.0 / math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale  # the combined scale, for the fused path and the upcast path
        self.attn_implementation = _attn_implementation(config, dtype)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if is_cross_attention:
            self.c_attn = Conv1D(2 * C, C, std, **kw)  # k, v from the encoder
            self.q_attn = Conv1D(C, C, std, **kw)
        else:
            self.c_attn = Conv1D(3 * C, C, std, **kw)  # fused q, k, v
        self.c_proj = Conv1D(C, C, proj_std, **kw)
        self.attn_dropout = nnx.Dropout(config.attn_pdrop, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        # (B, T, C) -> (B, H, T, D)
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge_heads(self, x: jax.Array) -> jax.Array:
        # (B, H, T, D) -> (B, T, C)
        B, _, T, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, self.embed_dim)

    def _eager_attention(self, q, k, v, causal_mask, attention_mask, head_mask, deterministic):
        """softmax(QK^T + masks) V as transformers' eager path; weights (B, H, T, S)."""
        if self.reorder_and_upcast_attn:
            # QK^T in float32 with the scale folded in (torch.baddbmm(alpha=scale) in HF)
            w = jnp.einsum("bhtd,bhsd->bhts", q.astype(jnp.float32), k.astype(jnp.float32))
            w = w * self.scale
        else:
            w = jnp.einsum("bhtd,bhsd->bhts", q, k)  # (B, H, T, S)
            if self.scale_attn_weights:
                w = w / jnp.asarray(float(self.head_dim) ** 0.5, w.dtype)
            if self.scale_attn_by_inverse_layer_idx:
                w = w / jnp.asarray(float(self.layer_idx + 1), w.dtype)
        if causal_mask is not None:
            w = jnp.where(causal_mask, w, jnp.finfo(w.dtype).min)
        if attention_mask is not None:
            # the additive mask also carries the causal part, so future keys of a fully padded
            # row reach min + min = -inf while its past keys stay at min: exactly HF's eager path
            w = w + attention_mask.astype(w.dtype)
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
        w = self.attn_dropout(w, deterministic=deterministic)
        if head_mask is not None:
            w = w * head_mask
        return jnp.einsum("bhts,bhsd->bhtd", w, v), w  # (B, H, T, D)

    def _fused_attention(self, q, k, v, causal_mask, attention_mask):
        """``jax.nn.dot_product_attention`` (XLA's fused path, or cuDNN's flash kernel) with the
        eager path's scale and masks; no weights are materialised."""
        dtype = v.dtype
        if self.reorder_and_upcast_attn:  # the flag promises float32 scores and softmax
            q, k, v = q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)
        # the eager path's masks as one additive bias, in the scores' dtype: scores + min rounds
        # to min, so masked keys get exactly what the eager path writes
        dt = q.dtype
        bias = None
        if causal_mask is not None:
            bias = jnp.where(causal_mask, 0, jnp.finfo(dt).min).astype(dt)  # (1, 1, T, S)
        if attention_mask is not None:
            bias = attention_mask.astype(dt) if bias is None else bias + attention_mask.astype(dt)
        impl = "cudnn" if self.attn_implementation == "cudnn" else None
        out = jax.nn.dot_product_attention(
            q.transpose(0, 2, 1, 3),
            k.transpose(0, 2, 1, 3),
            v.transpose(0, 2, 1, 3),
            bias=bias,
            scale=self.scale,
            implementation=impl,
        )  # (B, T, H, D)
        return out.transpose(0, 2, 1, 3).astype(dtype)  # (B, H, T, D)

    def __call__(
        self,
        hidden_states: jax.Array,
        layer_past: tuple[jax.Array, ...] | None = None,
        attention_mask: jax.Array | None = None,
        causal_mask: jax.Array | None = None,
        head_mask: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        cache_position: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, ...] | None, jax.Array | None]:
        """Attention output (B, T, C), the present (k, v) if ``use_cache``, the weights if asked.

        Self-attention: ``layer_past`` is ``(k, v)`` (B, H, S_past, D) of earlier positions,
        concatenated with the new ones; or, when ``cache_position`` (the scalar slot of the
        first new token) is given, preallocated (B, H, S, D) buffers written there.
        Cross-attention: ``layer_past`` holds the encoder's (k, v), reused. ``causal_mask``
        (1, 1, T, S) is boolean (True = may attend); ``attention_mask`` (B|1, 1, T|1, S) is
        additive (0 = attend).
        """
        if self.is_cross_attention:
            q = self._split_heads(self.q_attn(hidden_states))
            if layer_past is not None:
                k, v = layer_past  # the encoder's keys/values never change: reuse them
            else:
                k, v = jnp.split(self.c_attn(encoder_hidden_states), 2, axis=-1)
                k, v = self._split_heads(k), self._split_heads(v)  # (B, H, S_enc, D)
            attention_mask, causal_mask = encoder_attention_mask, None
        else:
            q, k, v = jnp.split(self.c_attn(hidden_states), 3, axis=-1)  # 3 x (B, T, C)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if layer_past is not None:
                past_k, past_v = layer_past
                if cache_position is not None:
                    # static cache: write the T new slots into the (B, H, S, D) buffers
                    start = (0, 0, cache_position, 0)
                    k = jax.lax.dynamic_update_slice(past_k, k.astype(past_k.dtype), start)
                    v = jax.lax.dynamic_update_slice(past_v, v.astype(past_v.dtype), start)
                else:
                    k = jnp.concatenate([past_k.astype(k.dtype), k], axis=2)  # (B, H, S, D)
                    v = jnp.concatenate([past_v.astype(v.dtype), v], axis=2)
        present = (k, v) if use_cache or cache_position is not None else None

        dropout_off = self.attn_dropout.rate == 0 or (
            self.attn_dropout.deterministic if deterministic is None else deterministic
        )
        weights = None
        if self.attn_implementation != "eager" and head_mask is None and dropout_off:
            out = self._fused_attention(q, k, v, causal_mask, attention_mask)
        else:
            out, weights = self._eager_attention(
                q, k, v, causal_mask, attention_mask, head_mask, deterministic
            )
        out = self._merge_heads(out)  # (B, T, C)
        out = self.resid_dropout(self.c_proj(out), deterministic=deterministic)
        return out, present, (weights if output_attentions else None)


def _attn_implementation(config: GPT2Config, dtype: Any) -> str:
    """The config's attn_implementation for Flax (default eager): "sdpa" is
    ``jax.nn.dot_product_attention`` (XLA, any device), "cudnn" its cuDNN kernel (GPU with
    fp16/bf16 compute only); the others are refused, never replaced."""
    impl = config.attn_implementation or "eager"
    if impl not in ("eager", "sdpa", "cudnn"):
        raise ValueError(
            f"attn_implementation={impl!r} is not available in gpt2_flax; use "
            "'eager', 'sdpa' (jax.nn.dot_product_attention) or 'cudnn' (GPU)"
        )
    if impl == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError(
                "attn_implementation='cudnn' needs a GPU (JAX runs on "
                f"{jax.default_backend()!r}); use 'sdpa' or 'eager'"
            )
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
            raise ValueError(
                "attn_implementation='cudnn' needs fp16 or bf16 compute "
                f"(dtype={jnp.dtype(dtype).name}); use 'sdpa' or 'eager'"
            )
        if config.reorder_and_upcast_attn:
            raise ValueError(
                "attn_implementation='cudnn' cannot honour reorder_and_upcast_attn"
                "=True (float32 scores); use 'sdpa' or 'eager'"
            )
    return impl


class GPT2MLP(nnx.Module):
    """Position-wise feed-forward: c_fc -> activation -> c_proj -> dropout.

    Args:
        intermediate_size: width of the hidden layer (``config.inner_dim``).
        config: the model config (``activation_function``, ``resid_pdrop``).
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.

    Example:
        >>> mlp = GPT2MLP(144, tiny_config(), rngs=nnx.Rngs(0))
    """

    def __init__(
        self,
        intermediate_size: int,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        C, std = config.n_embd, config.initializer_range
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = Conv1D(intermediate_size, C, std, **kw)
        self.c_proj = Conv1D(C, intermediate_size, std / math.sqrt(2 * config.n_layer), **kw)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def __call__(self, hidden_states: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        h = self.act(self.c_fc(hidden_states))  # (B, T, F)
        return self.dropout(self.c_proj(h), deterministic=deterministic)


class GPT2Block(nnx.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)) [+ crossattn(ln_cross_attn(x))] + mlp(ln_2(x)).

    Args:
        config: the model config.
        layer_idx: index of this block.
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.

    Example:
        >>> block = GPT2Block(tiny_config(), layer_idx=1, rngs=nnx.Rngs(0))
    """

    def __init__(
        self,
        config: GPT2Config,
        layer_idx: int = 0,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        C, eps = config.n_embd, config.layer_norm_epsilon
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = LayerNorm(C, eps, **kw)
        self.attn = GPT2Attention(config, layer_idx=layer_idx, **kw)
        self.ln_2 = LayerNorm(C, eps, **kw)
        self.add_cross_attention = config.add_cross_attention
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(
                config, is_cross_attention=True, layer_idx=layer_idx, **kw
            )
            self.ln_cross_attn = LayerNorm(C, eps, **kw)
        self.mlp = GPT2MLP(config.inner_dim, config, **kw)

    def __call__(
        self,
        hidden_states: jax.Array,
        layer_past: tuple[jax.Array, ...] | None = None,
        attention_mask: jax.Array | None = None,
        causal_mask: jax.Array | None = None,
        head_mask: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        cache_position: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
    ):
        """Returns (hidden (B, T, C), present, self-attention weights, cross-attention weights)."""
        self_past = None if layer_past is None else tuple(layer_past[:2])
        attn_out, present, self_w = self.attn(
            self.ln_1(hidden_states),
            self_past,
            attention_mask,
            causal_mask,
            head_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            cache_position=cache_position,
            deterministic=deterministic,
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
                cross_past,
                head_mask=head_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                use_cache=use_cache,
                output_attentions=output_attentions,
                deterministic=deterministic,
            )
            hidden_states = hidden_states + cross_out
            if present is not None and cache_position is None:
                # (k, v, cross_k, cross_v): transformers' legacy layout (a static cache holds
                # the self-attention buffers only)
                present = present + cross_present
        hidden_states = hidden_states + self.mlp(
            self.ln_2(hidden_states), deterministic=deterministic
        )
        return hidden_states, present, self_w, cross_w


class GPT2SequenceSummary(nnx.Module):
    """The multiple-choice head of GPT2DoubleHeadsModel: pick a token, project, activate.

    Args:
        config: reads ``summary_type`` (last / first / mean / cls_index), ``summary_use_proj``,
            ``summary_proj_to_labels``, ``summary_activation``, ``summary_first_dropout`` and
            ``summary_last_dropout``.
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.

    Example:
        >>> s = GPT2SequenceSummary(tiny_config(), rngs=nnx.Rngs(0))
    """

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.summary_type = config.summary_type
        # one assignment: NNX fixes an attribute as data (a layer) or static (None) when first set
        self.summary = (
            nnx.Linear(
                config.n_embd,
                naming.summary_out_features(config),
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=_normal(config.initializer_range),
                rngs=rngs,
            )
            if config.summary_use_proj
            else None
        )
        act = config.summary_activation
        self.activation = ACT2FN[act] if act else ACT2FN["linear"]
        self.first_dropout = nnx.Dropout(config.summary_first_dropout, rngs=rngs)
        self.last_dropout = nnx.Dropout(config.summary_last_dropout, rngs=rngs)

    def __call__(
        self,
        hidden_states: jax.Array,
        cls_index: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """hidden_states (B, N, T, C), cls_index (B, N) -> (B, N, out).

        "last", "first" and "mean" index axis 1 exactly as transformers does
        (``hidden[:, -1]`` ...), which for double-heads inputs is the *choice* axis.
        """
        if self.summary_type == "last":
            output = hidden_states[:, -1]
        elif self.summary_type == "first":
            output = hidden_states[:, 0]
        elif self.summary_type == "mean":
            output = hidden_states.mean(axis=1)
        else:  # cls_index; default: the last token
            if cls_index is None:
                cls_index = jnp.full(
                    hidden_states.shape[:-2], hidden_states.shape[-2] - 1, jnp.int32
                )
            output = jnp.take_along_axis(hidden_states, cls_index[..., None, None], axis=-2)[
                ..., 0, :
            ]  # (B, N, C)
        output = self.first_dropout(output, deterministic=deterministic)
        if self.summary is not None:
            output = self.summary(output)
        output = self.activation(output)
        return self.last_dropout(output, deterministic=deterministic)


# ---------------------------------------------------------------------------- models
class GPT2PreTrainedModel(FrameworkMixin, nnx.Module):
    """Shared plumbing: config, from_pretrained / save_pretrained. The NNX static-data plumbing
    (a hashable config, ``generation_config``, ``load_report``) and ``state_dict`` /
    ``load_state_dict`` come from :class:`gpt2_flax._framework.FrameworkMixin`.

    Subclasses set ``head`` (a key of ``gpt2_core.naming.HEADS``).
    """

    head: str = "base"
    config: GPT2Config

    def __init__(self, config: GPT2Config) -> None:
        self.config = _static_config(config)

    @classmethod
    def from_config(cls, config: GPT2Config, *, seed: int = 0, **kwargs: Any):
        """A randomly initialised model (transformers' init) from a config."""
        return cls(config, rngs=nnx.Rngs(seed), **kwargs)

    @classmethod
    def from_state_dict(
        cls,
        config: GPT2Config,
        state_dict: dict[str, Any],
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        seed: int = 0,
        sharding: Any = None,
        strict: bool = True,
    ):
        """Build abstractly (``nnx.eval_shape``: no random init pass) and fill from a canonical
        state dict (HF PyTorch names/layouts); raises ``CheckpointError`` naming bad keys."""
        from gpt2_flax import weights

        abstract = nnx.eval_shape(
            lambda: cls(
                config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), sharding=sharding
            )
        )
        model = weights.materialize(abstract, state_dict, seed=seed, strict=strict)
        model.eval()
        return model

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        config: GPT2Config | None = None,
        prefer: str | None = None,
        seed: int = 0,
        sharding: Any = None,
        quantize: str | None = None,
        **config_overrides: Any,
    ):
        """Load any transformers GPT-2 checkpoint (safetensors, sharded, pytorch_model.bin,
        tf_model.h5, flax_model.msgpack) from a directory or hub id.

        Args:
            name_or_path: directory, preset name or hub id.
            dtype: computation dtype; param_dtype: dtype the weights are stored in. Either
                takes any spelling of :func:`gpt2_core.inputs.dtype_name` (``jnp.bfloat16``,
                ``"bf16"``, ``"float32"`` ...) or ``"auto"``: the checkpoint's own dtype.
            config: use this config instead of the checkpoint's config.json.
            prefer: format to read when several are present ("safetensors", "flax", ...).
            seed: seeds the dropout streams and any head weights absent from the checkpoint.
            sharding: a :class:`gpt2_flax.sharding.ShardingConfig` to annotate the parameters.
            quantize: ``"int8"`` (or ``dtype="int8"``): int8 weight-only quantization, see
                :mod:`gpt2_flax.quantize`.
            **config_overrides: config fields to change (e.g. ``num_labels=3``).

        The model is returned in eval mode (dropout off), as transformers does, with
        ``model.load_report`` (what was loaded / newly initialised) and
        ``model.generation_config`` (the checkpoint's generation_config.json, if any).

        Example:
            >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2", param_dtype=jnp.bfloat16)
        """
        from gpt2_core import checkpoint
        from gpt2_core.generation_config import GenerationConfig
        from gpt2_flax import quantize as Q

        dtype, quantize = Q.resolve(dtype, quantize)
        config, sd, report = checkpoint.load_pretrained(
            name_or_path, cls.head, config=config, prefer=prefer, **config_overrides
        )
        dtype, param_dtype = (_jnp_dtype(d, sd) for d in (dtype, param_dtype))
        model = cls.from_state_dict(
            config, sd, dtype=dtype, param_dtype=param_dtype, seed=seed, sharding=sharding
        )
        model.load_report = report
        with contextlib.suppress(ValueError, OSError):  # no generation_config.json
            model.generation_config = GenerationConfig.from_pretrained(
                checkpoint.hub.resolve_dir(name_or_path)
            )
        return Q.quantize_model(model, quantize) if quantize else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        flax_msgpack: bool = False,
        max_shard_size: int | str = "5GB",
        dtype: Any = None,
    ) -> list:
        """Write ``config.json`` + ``model.safetensors`` (and ``flax_model.msgpack`` in
        transformers' Flax layout when ``flax_msgpack``) that transformers loads directly, and
        the generation config when the model has one."""
        from gpt2_core.checkpoint import save_pretrained
        from gpt2_flax.quantize import refuse_save

        refuse_save(self)
        formats = ("safetensors", "flax") if flax_msgpack else ("safetensors",)
        written = save_pretrained(
            self.state_dict(),
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

    def get_input_embeddings(self) -> nnx.Embed:
        base = self if isinstance(self, GPT2Model) else self.transformer
        return base.wte

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))


def _annotate(model: nnx.Module, sharding: Any) -> None:
    if sharding is not None:
        from gpt2_flax.sharding import annotate

        annotate(model, sharding)


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 transformer: embeddings, ``n_layer`` blocks and the final LayerNorm.

    Args:
        config: a :class:`gpt2_core.GPT2Config`; every behaviour is read from it.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); param_dtype: parameter dtype.
        rngs: ``nnx.Rngs`` (keyword-only) for the initialisers and the dropout streams.
        sharding: optional :class:`gpt2_flax.sharding.ShardingConfig` (partition specs are
            attached as ``out_sharding`` metadata; place with ``gpt2_flax.shard_model``).

    Call arguments and outputs are transformers' (``input_ids, past_key_values, attention_mask,
    token_type_ids, position_ids, head_mask, inputs_embeds, encoder_hidden_states,
    encoder_attention_mask, use_cache, output_attentions, output_hidden_states, return_dict``)
    plus ``deterministic`` (None: the module's train/eval mode).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2Model(tiny_config(), rngs=nnx.Rngs(0))
        >>> model(jnp.array([[1, 2, 3]])).last_hidden_state.shape
        (1, 3, 36)
    """

    head = "base"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        super().__init__(config)
        config = self.config
        self.dtype = dtype
        C, std = config.n_embd, config.initializer_range
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wte = nnx.Embed(config.vocab_size, C, embedding_init=_normal(std), **kw)
        self.wpe = nnx.Embed(config.n_positions, C, embedding_init=_normal(std), **kw)
        self.drop = nnx.Dropout(config.embd_pdrop, rngs=rngs)
        self.h = nnx.List([GPT2Block(config, layer_idx=i, **kw) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(C, config.layer_norm_epsilon, **kw)
        _annotate(self, sharding)

    def _head_masks(self, head_mask: Any) -> list:
        """``head_mask`` (H,) or (L, H) -> per-layer (1, H, 1, 1) multipliers (None: no mask)."""
        n_layer, n_head = self.config.n_layer, self.config.n_head
        if head_mask is None:
            return [None] * n_layer
        hm = jnp.asarray(head_mask)
        if hm.ndim == 1:
            hm = jnp.broadcast_to(hm, (n_layer, hm.shape[0]))
        if hm.ndim != 2 or hm.shape != (n_layer, n_head):
            raise ValueError(
                f"head_mask must have shape ({n_head},) or ({n_layer}, {n_head}), "
                f"got {jnp.shape(head_mask)}"
            )
        return [hm[i][None, :, None, None] for i in range(n_layer)]

    def _flatten_inputs(self, input_ids, inputs_embeds):
        """Check the ids / embeddings and fold leading dims: (..., T) -> (B, T); returns
        ``(input_ids, inputs_embeds, input_shape)`` (the caller's shape, without C)."""
        cfg = self.config
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError(
                "You cannot specify both input_ids and inputs_embeds at the same "
                "time: pass either one"
            )
        if input_ids is not None:
            input_ids = _as_int_array(input_ids, "input_ids")
            check_ids_shape(input_ids.shape)
            input_shape = input_ids.shape
            input_ids = input_ids.reshape(-1, input_shape[-1])  # (B, T); double heads: (B*N, T)
        elif inputs_embeds is not None:
            inputs_embeds = jnp.asarray(inputs_embeds)
            check_ids_shape(inputs_embeds.shape[:-1], "inputs_embeds")
            if inputs_embeds.ndim < 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {cfg.n_embd}), "
                    f"got {inputs_embeds.shape}"
                )
            input_shape = inputs_embeds.shape[:-1]
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])  # (B, T, C)
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        if input_shape[-1] == 0:
            raise ValueError("input sequence is empty (seq_len 0)")
        return input_ids, inputs_embeds, input_shape

    def _read_cache(self, past_key_values, B: int, T: int, position_ids):
        """The per-layer pasts, the past length, the key length S and the slot of the first
        new token (``cache_position``, a scalar; None unless ``past_key_values`` is a
        :class:`StaticCache`)."""
        cfg = self.config
        if isinstance(past_key_values, StaticCache):
            cache_position = past_key_values.index
            S = past_key_values.max_length
            past_length: Any = cache_position
            if past_key_values.batch_size != B:
                raise ValueError(f"StaticCache holds batch {past_key_values.batch_size}, got {B}")
            if not _is_traced(cache_position) and int(cache_position) + T > S:
                raise ValueError(
                    f"StaticCache is full: index {int(cache_position)} + {T} new "
                    f"tokens > its length {S}"
                )
            layer_pasts = list(zip(past_key_values.keys, past_key_values.values))
            return layer_pasts, past_length, S, cache_position
        if past_key_values is not None:
            if len(past_key_values) != cfg.n_layer:
                raise ValueError(
                    f"past_key_values has {len(past_key_values)} layers, "
                    f"the model has {cfg.n_layer}"
                )
            layer_pasts = past_key_values
            past_length = past_key_values[0][0].shape[2]
        else:
            layer_pasts, past_length = [None] * cfg.n_layer, 0
        S = past_length + T
        if position_ids is None and cfg.n_positions < S:
            raise ValueError(
                f"sequence length {S} (past {past_length} + new {T}) exceeds "
                f"n_positions={cfg.n_positions}"
            )
        return layer_pasts, past_length, S, None

    def _embed(
        self, input_ids, inputs_embeds, position_ids, token_type_ids, past_length, T, deterministic
    ):
        """wte(ids) + wpe(positions) [+ wte(token types)], then dropout: (B, T, C).

        Ids are range-checked first (under ``jit``: checkify checks), and the lookups give NaN
        rows for ids outside the tables, never a clamped row."""
        cfg = self.config
        if input_ids is not None:
            _check_range(input_ids, cfg.vocab_size, "input_ids", f"vocab_size={cfg.vocab_size}")
        if token_type_ids is not None:
            token_type_ids = _as_int_array(token_type_ids, "token_type_ids").reshape(-1, T)
            _check_range(
                token_type_ids, cfg.vocab_size, "token_type_ids", "token types are looked up in wte"
            )
        if position_ids is None:
            position_ids = (past_length + jnp.arange(T, dtype=jnp.int32))[None, :]  # (1, T)
        else:
            position_ids = _as_int_array(position_ids, "position_ids").reshape(-1, T)
        _check_range(
            position_ids, cfg.n_positions, "position_ids", f"n_positions={cfg.n_positions}"
        )
        if inputs_embeds is None:
            inputs_embeds = _lookup(self.wte.embedding[...], input_ids)  # (B, T, C)
        hidden_states = inputs_embeds + _lookup(self.wpe.embedding[...], position_ids)
        if token_type_ids is not None:
            hidden_states = hidden_states + _lookup(self.wte.embedding[...], token_type_ids)
        hidden_states = hidden_states.astype(self.dtype)
        return self.drop(hidden_states, deterministic=deterministic)

    def _attention_masks(
        self,
        attention_mask,
        encoder_hidden_states,
        encoder_attention_mask,
        B: int,
        T: int,
        past_length,
        S: int,
        static: bool,
    ):
        """The causal mask (1, 1, T, S) (bool, True = may attend), the additive self-attention
        mask (B|1, 1, T, S) and the encoder's (B, 1, 1|T, S_enc) or None: HF's eager 4-D mask =
        where(causal & not-pad, 0, min), applied on top of the causal where."""
        cfg = self.config
        q_pos = past_length + jnp.arange(T)  # absolute slot of each query
        causal = jnp.arange(S)[None, :] <= q_pos[:, None]  # (T, S)
        causal_mask = causal[None, None]
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask).reshape(B, -1)
            if attention_mask.shape[1] != S:
                what = "the cache length" if static else "past + current length"
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns but {what} is {S}"
                )
            keep = causal_mask & (attention_mask != 0)[:, None, None, :]  # (B, 1, T, S)
        else:
            keep = causal_mask
        score_dtype = jnp.float32 if cfg.reorder_and_upcast_attn else self.dtype
        min_value = jnp.finfo(score_dtype).min
        bias = jnp.where(keep, 0.0, min_value).astype(score_dtype)
        encoder_bias = None
        if encoder_hidden_states is not None and cfg.add_cross_attention:
            enc = jnp.asarray(encoder_hidden_states)
            if encoder_attention_mask is None:
                encoder_attention_mask = jnp.ones(enc.shape[:2], jnp.float32)
            m = jnp.asarray(encoder_attention_mask, jnp.float32)
            m = m[:, None, None, :] if m.ndim == 2 else m[:, None, :, :]  # (B, 1, 1|T, S_enc)
            encoder_bias = ((1.0 - m) * min_value).astype(score_dtype)
        return bias, causal_mask, encoder_bias

    def _run_blocks(
        self,
        hidden_states,
        layer_pasts,
        bias,
        causal_mask,
        head_masks,
        encoder_hidden_states,
        encoder_bias,
        cache_position,
        use_cache,
        output_attentions,
        output_hidden_states,
        deterministic,
    ):
        """Every block in turn; returns (hidden, presents, all hidden states, self / cross
        attention weights), the last three None when not asked for."""
        presents: list | None = [] if use_cache or cache_position is not None else None
        all_hidden: tuple | None = () if output_hidden_states else None
        all_self: tuple | None = () if output_attentions else None
        all_cross: tuple | None = (
            ()
            if output_attentions
            and self.config.add_cross_attention
            and encoder_hidden_states is not None
            else None
        )
        for block, layer_past, layer_head_mask in zip(self.h, layer_pasts, head_masks):
            if all_hidden is not None:
                all_hidden += (hidden_states,)
            hidden_states, present, self_w, cross_w = block(
                hidden_states,
                layer_past,
                bias,
                causal_mask,
                layer_head_mask,
                encoder_hidden_states,
                encoder_bias,
                use_cache,
                output_attentions,
                cache_position,
                deterministic=deterministic,
            )
            if presents is not None:
                presents.append(present)
            if all_self is not None:
                all_self += (self_w,)
                if all_cross is not None:
                    all_cross += (cross_w,)
        return hidden_states, presents, all_hidden, all_self, all_cross

    def __call__(
        self,
        input_ids: Any = None,
        past_key_values: tuple | StaticCache | None = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        head_mask: Any = None,
        inputs_embeds: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: Any = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        deterministic: bool | None = None,
    ):
        """Run the transformer; returns ``BaseModelOutputWithPastAndCrossAttentions``.

        ``past_key_values`` is a tuple over layers of (k, v) (B, H, S_past, D) [+ cross (k, v)],
        as returned with ``use_cache``, or a :class:`StaticCache` (returned advanced by T).
        """
        cfg = self.config
        output_attentions = (
            cfg.output_attentions if output_attentions is None else output_attentions
        )
        if output_attentions and self.h[0].attn.attn_implementation != "eager":
            raise ValueError(
                "output_attentions=True needs attn_implementation='eager' (the fused "
                f"{self.h[0].attn.attn_implementation!r} path computes no weights)"
            )
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict

        input_ids, inputs_embeds, input_shape = self._flatten_inputs(input_ids, inputs_embeds)
        B, T = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        layer_pasts, past_length, S, cache_position = self._read_cache(
            past_key_values, B, T, position_ids
        )
        static = cache_position is not None
        hidden_states = self._embed(
            input_ids, inputs_embeds, position_ids, token_type_ids, past_length, T, deterministic
        )
        bias, causal_mask, encoder_bias = self._attention_masks(
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            B,
            T,
            past_length,
            S,
            static,
        )
        hidden_states, presents, all_hidden, all_self, all_cross = self._run_blocks(
            hidden_states,
            layer_pasts,
            bias,
            causal_mask,
            self._head_masks(head_mask),
            encoder_hidden_states,
            encoder_bias,
            cache_position,
            use_cache,
            output_attentions,
            output_hidden_states,
            deterministic,
        )
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.reshape(
            *input_shape, hidden_states.shape[-1]
        )  # (B, [N,] T, C)
        if all_hidden is not None:
            all_hidden += (hidden_states,)

        past_out = None
        if use_cache:
            past_out = tuple(presents)
            if static:
                past_out = StaticCache(
                    keys=tuple(p[0] for p in presents),
                    values=tuple(p[1] for p in presents),
                    index=cache_position + T,
                )
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_out,
            hidden_states=all_hidden,
            attentions=all_self,
            cross_attentions=all_cross,
        )
        return _result(out, return_dict)


# ---------------------------------------------------------------------------- heads
class GPT2LMHeadModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with the language-modelling head (tied to ``wte`` when ``tie_word_embeddings``).

    Args:
        config, dtype, param_dtype, rngs, sharding: as :class:`GPT2Model`.

    Call: :class:`GPT2Model`'s arguments plus ``labels`` (B, T) (shifted inside; -100 ignored)
    and ``logits_to_keep`` (0 = all positions, k = the last k). Returns
    ``CausalLMOutputWithCrossAttentions``. ``generate`` is in :mod:`gpt2_flax.generation`.

    Example:
        >>> model = GPT2LMHeadModel(tiny_config(), rngs=nnx.Rngs(0))
        >>> out = model(jnp.array([[1, 2, 3]]), labels=jnp.array([[1, 2, 3]]))
        >>> out.logits.shape, out.loss.shape
        ((1, 3, 257), ())
    """

    head = "lm"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        super().__init__(config)
        config = self.config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # tied (the default): no lm_head variable, the logits are hidden @ wte^T
        self.lm_head = (
            nnx.Linear(
                config.n_embd,
                config.vocab_size,
                use_bias=False,
                kernel_init=_normal(config.initializer_range),
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if not config.tie_word_embeddings
            else None
        )
        _annotate(self, sharding)

    def _lm_logits(self, hidden_states: jax.Array) -> jax.Array:
        """LM logits (..., V): ``hidden @ wte^T`` when tied, else ``lm_head(hidden)``."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        wte = self.transformer.wte.embedding[...].astype(hidden_states.dtype)  # (V, C)
        return jnp.einsum("...c,vc->...v", hidden_states, wte)

    def __call__(
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
        logits_to_keep: int = 0,
        *,
        deterministic: bool | None = None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids,
            past_key_values,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states,
            encoder_attention_mask,
            use_cache,
            output_attentions,
            output_hidden_states,
            return_dict=True,
            deterministic=deterministic,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[..., -logits_to_keep:, :]
        logits = self._lm_logits(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            V = self.config.vocab_size
            _check_labels(labels, V, "labels")
            # pad labels with -100 on the right and shift left (HF ForCausalLMLoss)
            shifted = jnp.concatenate(
                [labels[..., 1:], jnp.full(labels.shape[:-1] + (1,), IGNORE_INDEX, labels.dtype)],
                axis=-1,
            )
            loss = cross_entropy(logits.reshape(-1, V), shifted.reshape(-1))
        result = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )
        return _result(result, return_dict)


class GPT2DoubleHeadsModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 with the LM head and a multiple-choice head on inputs (B, N choices, T).

    Args:
        config, dtype, param_dtype, rngs, sharding: as :class:`GPT2Model`.

    Call: ``mc_token_ids`` (B, N) picks the token summarised per choice (default: the last);
    ``labels`` (B, N, T) gives the LM loss (``loss``), ``mc_labels`` (B,) the multiple-choice
    loss (``mc_loss``), returned separately as transformers does.

    Example:
        >>> model = GPT2DoubleHeadsModel(tiny_config(), rngs=nnx.Rngs(0))
        >>> out = model(jnp.ones((2, 3, 5), jnp.int32), mc_labels=jnp.array([0, 2]))
        >>> out.mc_logits.shape
        (2, 3)
    """

    head = "double_heads"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        if isinstance(config, GPT2Config) and config.num_labels != 1:
            config = config.copy(num_labels=1)  # as transformers, on a copy (see gpt2_torch)
        super().__init__(config)
        config = self.config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transformer = GPT2Model(config, **kw)
        self.lm_head = (
            nnx.Linear(
                config.n_embd,
                config.vocab_size,
                use_bias=False,
                kernel_init=_normal(config.initializer_range),
                **kw,
            )
            if not config.tie_word_embeddings
            else None
        )
        self.multiple_choice_head = GPT2SequenceSummary(config, **kw)
        _annotate(self, sharding)

    def _lm_logits(self, hidden_states: jax.Array) -> jax.Array:
        """LM logits (..., V): ``hidden @ wte^T`` when tied, else ``lm_head(hidden)``."""
        if self.lm_head is not None:
            return self.lm_head(hidden_states)
        wte = self.transformer.wte.embedding[...].astype(hidden_states.dtype)  # (V, C)
        return jnp.einsum("...c,vc->...v", hidden_states, wte)

    def __call__(
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
        *,
        deterministic: bool | None = None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids,
            past_key_values,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            deterministic=deterministic,
        )
        hidden = out.last_hidden_state  # (B, N, T, C)
        lm_logits = self._lm_logits(hidden)  # (B, N, T, V)
        if mc_token_ids is not None:
            mc_token_ids = _as_int_array(mc_token_ids, "mc_token_ids")
            _check_range(mc_token_ids, hidden.shape[-2], "mc_token_ids", "sequence length")
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids, deterministic=deterministic)
        mc_logits = jnp.squeeze(mc_logits, -1) if mc_logits.shape[-1] == 1 else mc_logits
        mc_loss = None
        if mc_labels is not None:
            mc_labels = _as_int_array(mc_labels, "mc_labels")
            _check_labels(mc_labels, mc_logits.shape[-1], "mc_labels")
            mc_loss = cross_entropy(
                mc_logits.reshape(-1, mc_logits.shape[-1]), mc_labels.reshape(-1)
            )
        lm_loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            V = self.config.vocab_size
            _check_labels(labels, V, "labels")
            lm_loss = cross_entropy(
                lm_logits[..., :-1, :].reshape(-1, V), labels[..., 1:].reshape(-1)
            )
        result = GPT2DoubleHeadsModelOutput(
            loss=lm_loss,
            mc_loss=mc_loss,
            logits=lm_logits,
            mc_logits=mc_logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _result(result, return_dict)


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a bias-free ``score`` layer pooled at the last non-pad token of each row.

    The pooled position is ``argmax(arange(T) * (ids != pad_token_id))``: it works for left
    and right padding. Without ``config.pad_token_id`` only batch size 1 is allowed (as
    transformers); with ``inputs_embeds`` the last position is used.

    Args:
        config, dtype, param_dtype, rngs, sharding: as :class:`GPT2Model`.

    Example:
        >>> model = GPT2ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=0),
        ...                                       rngs=nnx.Rngs(0))
        >>> model(jnp.array([[0, 5, 6]]), labels=jnp.array([2])).logits.shape
        (1, 3)
    """

    head = "sequence_classification"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        super().__init__(config)
        config = self.config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = nnx.Linear(
            config.n_embd,
            config.num_labels,
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_normal(config.initializer_range),
            rngs=rngs,
        )
        _annotate(self, sharding)

    def __call__(
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
        *,
        deterministic: bool | None = None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        pad = self.config.pad_token_id
        batch = jnp.shape(input_ids)[0] if input_ids is not None else jnp.shape(inputs_embeds)[0]
        if pad is None and batch != 1:
            raise ValueError(
                "Cannot handle batch sizes > 1 if no padding token is defined "
                "(set config.pad_token_id)"
            )
        out = self.transformer(
            input_ids,
            past_key_values,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            deterministic=deterministic,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        T = logits.shape[1]
        if pad is None:
            last = jnp.full((batch,), T - 1)
        elif input_ids is not None:
            ids = jnp.asarray(input_ids).reshape(batch, -1)
            last = jnp.argmax(jnp.arange(T) * (ids != pad), axis=-1)  # rightmost non-pad token
        else:
            logger.warning(
                "GPT2ForSequenceClassification: padding is not detected with "
                "inputs_embeds; pooling the last position"
            )
            last = jnp.full((batch,), T - 1)
        pooled = logits[jnp.arange(batch), last]  # (B, num_labels)
        loss = self._classification_loss(pooled, labels) if labels is not None else None
        result = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _result(result, return_dict)

    def _classification_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        """transformers' problem_type rules: regression (MSE), single-label (CE), multi-label (BCE)."""
        labels = jnp.asarray(labels)
        n = self.config.num_labels
        problem = problem_type(self.config, jnp.issubdtype(labels.dtype, jnp.integer))
        if problem == "regression":
            labels = labels.astype(jnp.float32)
            if n == 1:
                return jnp.mean(
                    (jnp.squeeze(logits).astype(jnp.float32) - jnp.squeeze(labels)) ** 2
                )
            return jnp.mean((logits.astype(jnp.float32) - labels) ** 2)
        if problem == "single_label_classification":
            if not jnp.issubdtype(labels.dtype, jnp.integer):
                raise TypeError(
                    f"single-label classification needs integer labels, got {labels.dtype}"
                )
            _check_labels(labels, n, "labels")
            return cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
        # multi-label: mean binary cross-entropy with logits
        x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
        if x.shape != y.shape:
            raise ValueError(
                f"multi-label labels must have the logits' shape {x.shape}, got {y.shape}"
            )
        return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 with dropout (``classifier_dropout``, then ``hidden_dropout``, then 0.1) and a
    ``classifier`` layer on every token; loss: cross-entropy, -100 ignored.

    Args:
        config, dtype, param_dtype, rngs, sharding: as :class:`GPT2Model`.

    Example:
        >>> model = GPT2ForTokenClassification(tiny_config(num_labels=4), rngs=nnx.Rngs(0))
        >>> model(jnp.array([[1, 2]])).logits.shape
        (1, 2, 4)
    """

    head = "token_classification"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        super().__init__(config)
        config = self.config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.classifier_dropout_prob, rngs=rngs)
        self.classifier = nnx.Linear(
            config.n_embd,
            config.num_labels,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_normal(config.initializer_range),
            rngs=rngs,
        )
        _annotate(self, sharding)

    def __call__(
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
        *,
        deterministic: bool | None = None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids,
            past_key_values,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            deterministic=deterministic,
        )
        h = self.dropout(out.last_hidden_state, deterministic=deterministic)
        logits = self.classifier(h)  # (B, T, num_labels)
        loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            n = self.config.num_labels
            _check_labels(labels, n, "labels")
            loss = cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return _result(result, return_dict)


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 with ``qa_outputs`` (C -> 2) giving span start/end logits per token.

    Loss: mean of the start and end cross-entropies; positions are clamped to [0, T] and T is
    ignored (transformers' rule for answers outside the window).

    Args:
        config, dtype, param_dtype, rngs, sharding: as :class:`GPT2Model`.

    Example:
        >>> model = GPT2ForQuestionAnswering(tiny_config(), rngs=nnx.Rngs(0))
        >>> out = model(jnp.array([[1, 2, 3]]), start_positions=jnp.array([0]),
        ...             end_positions=jnp.array([2]))
        >>> out.start_logits.shape
        (1, 3)
    """

    head = "question_answering"

    def __init__(
        self,
        config: GPT2Config,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        sharding: Any = None,
    ) -> None:
        super().__init__(config)
        config = self.config
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qa_outputs = nnx.Linear(
            config.n_embd,
            2,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=_normal(config.initializer_range),
            rngs=rngs,
        )
        _annotate(self, sharding)

    def __call__(
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
        *,
        deterministic: bool | None = None,
    ):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids,
            None,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            deterministic=deterministic,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start_logits.shape[1]
            sp = _as_int_array(start_positions, "start_positions")
            ep = _as_int_array(end_positions, "end_positions")
            sp = jnp.clip(sp.reshape(-1), 0, T)  # T = outside the window: ignored
            ep = jnp.clip(ep.reshape(-1), 0, T)
            loss = (
                cross_entropy(start_logits, sp, ignore_index=T)
                + cross_entropy(end_logits, ep, ignore_index=T)
            ) / 2
        result = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _result(result, return_dict)


#: head name -> class, as ``gpt2_core.naming.HEADS``.
MODEL_CLASSES: dict[str, type[GPT2PreTrainedModel]] = {
    "base": GPT2Model,
    "lm": GPT2LMHeadModel,
    "double_heads": GPT2DoubleHeadsModel,
    "sequence_classification": GPT2ForSequenceClassification,
    "token_classification": GPT2ForTokenClassification,
    "question_answering": GPT2ForQuestionAnswering,
}

# transformers' Flax class names, for users porting code
FlaxGPT2Model = GPT2Model
FlaxGPT2LMHeadModel = GPT2LMHeadModel
FlaxGPT2DoubleHeadsModel = GPT2DoubleHeadsModel
FlaxGPT2ForSequenceClassification = GPT2ForSequenceClassification
FlaxGPT2ForTokenClassification = GPT2ForTokenClassification
FlaxGPT2ForQuestionAnswering = GPT2ForQuestionAnswering

__all__: Sequence[str] = [
    "ACT2FN",
    "GPT2Attention",
    "GPT2Block",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2LMHeadModel",
    "GPT2MLP",
    "GPT2Model",
    "GPT2PreTrainedModel",
    "GPT2SequenceSummary",
    "MODEL_CLASSES",
    "StaticCache",
    "checked",
    "cross_entropy",
]
