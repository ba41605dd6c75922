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

Shape legend: B batch, N choices (double heads), T query length, S key length (past + T),
M static-cache length, H heads, D head dim, C n_embd, F inner dim, V vocab, P n_positions,
L layers.
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

from gpt2_core import outputs as core_outputs
from gpt2_core.config import GPT2Config
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
from gpt2_flax.generation import GenerationMixin

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value skipped by every loss, as torch's CrossEntropyLoss


# ---------------------------------------------------------------------------- activations
def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


#: ``GPT2Config.activation_function`` -> function (the keys of ``gpt2_core.config.ACTIVATIONS``).
ACT2FN = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation, GPT-2's own
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
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


# ---------------------------------------------------------------------------- static KV cache
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """A preallocated key/value cache for compiled decoding (no growing shapes under ``jit``).

    ``keys[i]`` / ``values[i]`` of layer ``i`` have shape (B, H, M, D); ``index`` (an int32
    scalar) counts the filled slots. A forward pass with ``past_key_values=cache`` writes its
    keys/values at ``index`` (``lax.dynamic_update_slice``) and returns the cache advanced by
    T. Its ``attention_mask`` must then cover all M slots (B, M); slots after the current
    position are masked causally, so they may be 1.

    Example:
        >>> cache = KVCache.init(model.config, batch_size=1, max_length=64)
        >>> out = model(ids, past_key_values=cache, attention_mask=jnp.ones((1, 64), jnp.int32))
        >>> out.past_key_values.index  # == ids.shape[1]
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    index: jax.Array

    @classmethod
    def init(cls, config: GPT2Config, batch_size: int, max_length: int,
             dtype: Any = jnp.float32) -> KVCache:
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, H, M, D)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in zeros),
                   index=jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    def reorder(self, batch_indices: jax.Array) -> KVCache:
        """Gather rows along the batch axis (beam search keeps the surviving beams)."""
        return KVCache(keys=tuple(k[batch_indices] for k in self.keys),
                       values=tuple(v[batch_indices] for v in self.values), index=self.index)


# ---------------------------------------------------------------------------- config as static data
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
        checkify.debug_check(jnp.all((x >= 0) & (x < high)),
                             f"{name} out of range: every value must be in [0, {high}) ({what})")
        return
    lo, hi = int(jnp.min(x)), int(jnp.max(x))
    if lo < 0 or hi >= high:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains {bad}, outside [0, {high}) ({what})")


def _embed(table: jax.Array, ids: jax.Array) -> jax.Array:
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
def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_INDEX) -> jax.Array:
    """Mean cross-entropy over the labels that are not ``ignore_index`` (torch semantics).

    ``logits`` (n, K), ``labels`` (n,). All labels ignored gives NaN, as torch's 0/0.
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)


def _check_labels(labels: jax.Array, num_classes: int, name: str,
                  ignore_index: int | None = IGNORE_INDEX) -> None:
    if _is_traced(labels) or labels.size == 0:
        return
    arr = np.asarray(labels)
    if ignore_index is not None:
        arr = arr[arr != ignore_index]
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes}) or {ignore_index} (ignored), "
                         f"got values in [{arr.min()}, {arr.max()}]")


def _result(out: ModelOutput, return_dict: bool):
    return out if return_dict else out.to_tuple()


# ---------------------------------------------------------------------------- modules
def _normal(std: float):
    return nnx.initializers.normal(stddev=std)


class GPT2Attention(nnx.Module):
    """Multi-head causal self-attention (or cross-attention), GPT-2's eager-path semantics.

    ``c_attn`` is fused (C -> 3C for q, k, v; for cross-attention C -> 2C for k, v and a separate
    ``q_attn``). Scores are divided by sqrt(D) (``scale_attn_weights``) and by ``layer_idx + 1``
    (``scale_attn_by_inverse_layer_idx``); ``reorder_and_upcast_attn`` computes QK^T and the
    softmax in float32. Masked scores get ``finfo(dtype).min`` (never -inf alone), so fully
    masked rows (left pads) stay finite, as in transformers.

    Args:
        config: the model configuration.
        layer_idx: index of the block (for ``scale_attn_by_inverse_layer_idx``).
        is_cross_attention: build the cross-attention variant.
        dtype: computation dtype; param_dtype: dtype of the parameters.
        rngs: ``nnx.Rngs`` for initialisation and dropout.

    Example:
        >>> attn = GPT2Attention(tiny_config(), layer_idx=0, rngs=nnx.Rngs(0))
    """

    def __init__(self, config: GPT2Config, layer_idx: int = 0, *, is_cross_attention: bool = False,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        C, std = config.n_embd, config.initializer_range
        proj_std = std / math.sqrt(2 * config.n_layer)  # GPT-2's scaled residual init
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        self.attn_implementation = _attn_implementation(config, dtype)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if is_cross_attention:
            self.c_attn = nnx.Linear(C, 2 * C, kernel_init=_normal(std), **kw)
            self.q_attn = nnx.Linear(C, C, kernel_init=_normal(std), **kw)
        else:
            self.c_attn = nnx.Linear(C, 3 * C, kernel_init=_normal(std), **kw)
        self.c_proj = nnx.Linear(C, C, kernel_init=_normal(proj_std), **kw)
        self.attn_dropout = nnx.Dropout(config.attn_pdrop, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        B, T, _ = x.shape
        return x.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)  # (B, H, T, D)

    def __call__(
        self,
        x: jax.Array,
        *,
        layer_past: tuple[jax.Array, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
        causal: jax.Array | None = None,
        mask_bias: jax.Array | None = None,
        head_mask: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        use_cache: bool = False,
        deterministic: bool | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None, jax.Array]:
        """Returns ``(output (B, T, C), present (k, v) or None, attention probs (B, H, T, S))``.

        ``causal`` (T, S) bool and ``mask_bias`` (B, 1, T, S) additive are built once by
        :class:`GPT2Model`. With ``cache_index`` the ``layer_past`` buffers are a static cache
        (B, H, M, D) written at that index; otherwise keys are concatenated to ``layer_past``.
        """
        B, T, C = x.shape
        if self.is_cross_attention:
            q = self.q_attn(x)
            k, v = jnp.split(self.c_attn(encoder_hidden_states), 2, axis=-1)
        else:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)  # 3 x (B, T, C)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, H, T|S, D)

        present = None
        if not self.is_cross_attention:
            if cache_index is not None:
                k_buf, v_buf = layer_past  # (B, H, M, D)
                start = (0, 0, cache_index, 0)
                k = jax.lax.dynamic_update_slice(k_buf, k.astype(k_buf.dtype), start)
                v = jax.lax.dynamic_update_slice(v_buf, v.astype(v_buf.dtype), start)
            elif layer_past is not None:
                k = jnp.concatenate([layer_past[0].astype(k.dtype), k], axis=2)  # (B, H, S, D)
                v = jnp.concatenate([layer_past[1].astype(v.dtype), v], axis=2)
            if use_cache or cache_index is not None:
                present = (k, v)

        dropout_off = self.attn_dropout.rate == 0 or (
            self.attn_dropout.deterministic if deterministic is None else deterministic)
        if self.attn_implementation != "eager" and head_mask is None and dropout_off:
            out = self._fused_attention(q, k, v, causal, mask_bias)  # (B, H, T, D)
            out = out.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
            out = self.resid_dropout(self.c_proj(out), deterministic=deterministic)
            return out, present, None

        if self.reorder_and_upcast_attn:
            # QK^T in float32 with the scale folded in (torch.baddbmm(alpha=scale) in HF)
            scale = 1.0
            if self.scale_attn_weights:
                scale /= float(self.head_dim) ** 0.5
            if self.scale_attn_by_inverse_layer_idx:
                scale /= float(self.layer_idx + 1)
            scores = jnp.einsum("bhtd,bhsd->bhts", q.astype(jnp.float32), k.astype(jnp.float32))
            scores = scores * scale
        else:
            scores = jnp.einsum("bhtd,bhsd->bhts", q, k)  # (B, H, T, S)
            if self.scale_attn_weights:
                scores = scores / jnp.asarray(float(self.head_dim) ** 0.5, scores.dtype)
            if self.scale_attn_by_inverse_layer_idx:
                scores = scores / jnp.asarray(float(self.layer_idx + 1), scores.dtype)

        min_value = jnp.finfo(scores.dtype).min
        if not self.is_cross_attention and causal is not None:
            scores = jnp.where(causal, scores, min_value)
        if mask_bias is not None:
            # the additive mask also carries the causal part, so future keys of a fully padded
            # row reach min + min = -inf while its past keys stay at min: exactly HF's eager path
            scores = scores + mask_bias.astype(scores.dtype)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        probs = self.attn_dropout(probs, deterministic=deterministic)
        if head_mask is not None:
            probs = probs * head_mask
        out = jnp.einsum("bhts,bhsd->bhtd", probs, v)  # (B, H, T, D)
        out = out.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
        out = self.resid_dropout(self.c_proj(out), deterministic=deterministic)
        return out, present, probs


    def _fused_attention(self, q, k, v, causal, mask_bias):
        """``jax.nn.dot_product_attention`` (XLA's fused path, or cuDNN's flash kernel) with the
        eager path's scale and masks; no probabilities are materialised."""
        scale = 1.0 / float(self.head_dim) ** 0.5 if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        dtype = v.dtype
        if self.reorder_and_upcast_attn:  # the flag promises float32 scores and softmax
            q, k, v = q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32)
        # the eager path's masks as one additive bias, in the scores' dtype: scores + min rounds
        # to min, so masked keys get exactly what the eager path writes
        dt = q.dtype
        bias = None
        if not self.is_cross_attention and causal is not None:
            bias = jnp.where(causal, 0, jnp.finfo(dt).min).astype(dt)[None, None]  # (1, 1, T, S)
        if mask_bias is not None:
            bias = mask_bias.astype(dt) if bias is None else bias + mask_bias.astype(dt)
        impl = "cudnn" if self.attn_implementation == "cudnn" else None
        out = jax.nn.dot_product_attention(
            q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
            bias=bias, scale=scale, implementation=impl)  # (B, T, H, D)
        return out.transpose(0, 2, 1, 3).astype(dtype)  # (B, H, T, D)


def _attn_implementation(config: GPT2Config, dtype: Any) -> str:
    """The config's attn_implementation for Flax (default eager): "sdpa" is
    ``jax.nn.dot_product_attention`` (XLA, any device), "cudnn" its cuDNN kernel (GPU with
    fp16/bf16 compute only); the others are refused, never replaced."""
    impl = config.attn_implementation or "eager"
    if impl not in ("eager", "sdpa", "cudnn"):
        raise ValueError(f"attn_implementation={impl!r} is not available in gpt2_flax; use "
                         "'eager', 'sdpa' (jax.nn.dot_product_attention) or 'cudnn' (GPU)")
    if impl == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError("attn_implementation='cudnn' needs a GPU (JAX runs on "
                             f"{jax.default_backend()!r}); use 'sdpa' or 'eager'")
        if jnp.dtype(dtype) not in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
            raise ValueError("attn_implementation='cudnn' needs fp16 or bf16 compute "
                             f"(dtype={jnp.dtype(dtype).name}); use 'sdpa' or 'eager'")
        if config.reorder_and_upcast_attn:
            raise ValueError("attn_implementation='cudnn' cannot honour reorder_and_upcast_attn"
                             "=True (float32 scores); use 'sdpa' or 'eager'")
    return impl


class GPT2MLP(nnx.Module):
    """``c_fc`` (C -> F) -> activation from the config -> ``c_proj`` (F -> C) -> dropout.

    Args:
        config: the model configuration (``activation_function``, ``n_inner``, ``resid_pdrop``).
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.

    Example:
        >>> mlp = GPT2MLP(tiny_config(), rngs=nnx.Rngs(0))
    """

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        C, F, std = config.n_embd, config.inner_dim, config.initializer_range
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_fc = nnx.Linear(C, F, kernel_init=_normal(std), **kw)
        self.c_proj = nnx.Linear(F, C, kernel_init=_normal(std / math.sqrt(2 * config.n_layer)), **kw)
        self.activation_function = config.activation_function
        self.dropout = nnx.Dropout(config.resid_pdrop, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        h = ACT2FN[self.activation_function](self.c_fc(x))  # (B, T, F)
        return self.dropout(self.c_proj(h), deterministic=deterministic)


def _layer_norm(config: GPT2Config, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as torch, not E[x^2] - mean^2
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, dtype=dtype,
                         param_dtype=param_dtype, use_fast_variance=False, rngs=rngs)


class GPT2Block(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` [``+ crossattention(ln_cross_attn(x))``]
    then ``x + mlp(ln_2(x))``.

    Args:
        config: the model configuration; layer_idx: the block's index.
        dtype, param_dtype, rngs: as :class:`GPT2Attention`.

    Example:
        >>> block = GPT2Block(tiny_config(), layer_idx=1, rngs=nnx.Rngs(0))
    """

    def __init__(self, config: GPT2Config, layer_idx: int = 0, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = _layer_norm(config, **kw)
        self.attn = GPT2Attention(config, layer_idx, **kw)
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(config, layer_idx, is_cross_attention=True, **kw)
            self.ln_cross_attn = _layer_norm(config, **kw)
        self.ln_2 = _layer_norm(config, **kw)
        self.mlp = GPT2MLP(config, **kw)

    def __call__(self, x: jax.Array, *, encoder_hidden_states: jax.Array | None = None,
                 encoder_bias: jax.Array | None = None, deterministic: bool | None = None,
                 head_mask: jax.Array | None = None, **attn_kwargs: Any):
        """Returns ``(x, present, self-attention probs, cross-attention probs or None)``."""
        a, present, attn_probs = self.attn(self.ln_1(x), head_mask=head_mask,
                                           deterministic=deterministic, **attn_kwargs)
        x = x + a
        cross_probs = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states were given but the model has no "
                                 "cross-attention: build it with config.add_cross_attention=True")
            c, _, cross_probs = self.crossattention(
                self.ln_cross_attn(x), encoder_hidden_states=encoder_hidden_states,
                mask_bias=encoder_bias, head_mask=head_mask, deterministic=deterministic)
            x = x + c
        x = x + self.mlp(self.ln_2(x), deterministic=deterministic)
        return x, present, attn_probs, cross_probs


# ---------------------------------------------------------------------------- pretrained base
class GPT2PreTrainedModel(nnx.Module):
    """Shared loading/saving for every GPT-2 module (``from_pretrained``, ``save_pretrained``).

    Subclasses set ``head`` (a key of ``gpt2_core.naming.HEADS``).
    """

    head: str = "base"
    config: GPT2Config

    @classmethod
    def from_config(cls, config: GPT2Config, *, seed: int = 0, **kwargs: Any):
        """A randomly initialised model (transformers' init) from a config."""
        return cls(config, rngs=nnx.Rngs(seed), **kwargs)

    @classmethod
    def from_state_dict(cls, config: GPT2Config, state_dict: dict[str, Any], *,
                        dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                        seed: int = 0, sharding: Any = None, strict: bool = True):
        """Build abstractly (``nnx.eval_shape``: no random init pass) and fill from a canonical
        state dict (HF PyTorch names/layouts); raises ``CheckpointError`` naming bad keys."""
        from gpt2_flax import weights

        abstract = nnx.eval_shape(lambda: cls(config, dtype=dtype, param_dtype=param_dtype,
                                              rngs=nnx.Rngs(seed), sharding=sharding))
        model = weights.materialize(abstract, state_dict, seed=seed, strict=strict)
        model.eval()
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32,
                        param_dtype: Any = jnp.float32, config: GPT2Config | None = None,
                        prefer: str | None = None, seed: int = 0, sharding: Any = None,
                        quantize: str | None = None, **config_overrides: Any):
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

        The model is returned in eval mode (dropout off), as transformers does.

        Example:
            >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2", param_dtype=jnp.bfloat16)
        """
        from gpt2_core.checkpoint import load_pretrained
        from gpt2_flax import quantize as Q

        dtype, quantize = Q.resolve(dtype, quantize)
        config, sd, _report = load_pretrained(name_or_path, cls.head, config=config,
                                              prefer=prefer, **config_overrides)
        dtype, param_dtype = (_jnp_dtype(d, sd) for d in (dtype, param_dtype))
        model = cls.from_state_dict(config, sd, dtype=dtype, param_dtype=param_dtype, seed=seed,
                                    sharding=sharding)
        return Q.quantize_model(model, quantize) if quantize else model

    def state_dict(self) -> dict[str, np.ndarray]:
        """The canonical state dict (HF PyTorch names and layouts, numpy, tied keys included)."""
        from gpt2_flax import weights

        return weights.to_canonical(self)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True):
        """Copy a canonical state dict into this model in place; returns the load report."""
        from gpt2_flax import weights

        return weights.load_canonical(self, state_dict, strict=strict)

    def save_pretrained(self, save_directory: str | os.PathLike, *, flax_msgpack: bool = False,
                        max_shard_size: int | str = "5GB", dtype: Any = None) -> list:
        """Write ``config.json`` + ``model.safetensors`` (and ``flax_model.msgpack`` in
        transformers' Flax layout when ``flax_msgpack``) that transformers loads directly."""
        from gpt2_core.checkpoint import save_pretrained
        from gpt2_flax.quantize import refuse_save

        refuse_save(self)
        formats = ("safetensors", "flax") if flax_msgpack else ("safetensors",)
        return save_pretrained(self.state_dict(), self.config, save_directory, self.head,
                               max_shard_size=max_shard_size, dtype=dtype, formats=formats)

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))


def _annotate(model: nnx.Module, sharding: Any) -> None:
    if sharding is not None:
        from gpt2_flax.sharding import annotate

        annotate(model, sharding)


# ---------------------------------------------------------------------------- base model
class GPT2Model(GPT2PreTrainedModel):
    """The bare GPT-2 transformer: embeddings, ``n_layer`` blocks, final LayerNorm.

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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        self.dtype = dtype
        C, std = config.n_embd, config.initializer_range
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wte = nnx.Embed(config.vocab_size, C, embedding_init=_normal(std), **kw)
        self.wpe = nnx.Embed(config.n_positions, C, embedding_init=_normal(std), **kw)
        self.drop = nnx.Dropout(config.embd_pdrop, rngs=rngs)
        self.h = nnx.List([GPT2Block(config, i, **kw) for i in range(config.n_layer)])
        self.ln_f = _layer_norm(config, **kw)
        _annotate(self, sharding)

    def __call__(
        self,
        input_ids: Any = None,
        past_key_values: tuple | KVCache | None = None,
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
        cfg = self.config
        output_attentions = cfg.output_attentions if output_attentions is None else output_attentions
        if output_attentions and self.h[0].attn.attn_implementation != "eager":
            raise ValueError("output_attentions=True needs attn_implementation='eager' (the fused "
                             f"{self.h[0].attn.attn_implementation!r} path computes no weights)")
        output_hidden_states = (cfg.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict

        # ---- inputs: shapes and ids checked before anything is computed
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            input_ids = _as_int_array(input_ids, "input_ids")
            check_ids_shape(input_ids.shape)
            input_shape = input_ids.shape
            input_ids = input_ids.reshape(-1, input_shape[-1])  # (B, T); double heads: (B*N, T)
        elif inputs_embeds is not None:
            inputs_embeds = jnp.asarray(inputs_embeds)
            check_ids_shape(inputs_embeds.shape[:-1], "inputs_embeds")
            if inputs_embeds.ndim < 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {cfg.n_embd}), "
                                 f"got {inputs_embeds.shape}")
            input_shape = inputs_embeds.shape[:-1]
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        B, T = (input_ids.shape if input_ids is not None else inputs_embeds.shape[:2])
        if T == 0:
            raise ValueError("input sequence is empty (seq_len 0)")

        static_cache = isinstance(past_key_values, KVCache)
        if static_cache:
            cache_index = past_key_values.index
            S = past_key_values.max_length
            past_len: Any = cache_index
            if past_key_values.keys[0].shape[0] != B:
                raise ValueError(f"KVCache batch size {past_key_values.keys[0].shape[0]} != {B}")
            if not _is_traced(cache_index) and int(cache_index) + T > S:
                raise ValueError(f"KVCache is full: index {int(cache_index)} + {T} new tokens > "
                                 f"its length {S}")
        else:
            cache_index = None
            if past_key_values is not None:
                if len(past_key_values) != cfg.n_layer:
                    raise ValueError(f"past_key_values has {len(past_key_values)} layers, "
                                     f"the model {cfg.n_layer}")
                past_len = past_key_values[0][0].shape[2]
            else:
                past_len = 0
            S = past_len + T
            if position_ids is None and cfg.n_positions < S:
                raise ValueError(f"sequence length {S} (past {past_len} + {T} new) exceeds "
                                 f"n_positions={cfg.n_positions}")

        if input_ids is not None:
            _check_range(input_ids, cfg.vocab_size, "input_ids", f"vocab_size={cfg.vocab_size}")
        if token_type_ids is not None:
            token_type_ids = _as_int_array(token_type_ids, "token_type_ids").reshape(-1, T)
            _check_range(token_type_ids, cfg.vocab_size, "token_type_ids",
                         "token types are looked up in wte")
        if position_ids is None:
            position_ids = (past_len + jnp.arange(T, dtype=jnp.int32))[None, :]  # (1, T)
        else:
            position_ids = _as_int_array(position_ids, "position_ids").reshape(-1, T)
        _check_range(position_ids, cfg.n_positions, "position_ids",
                     f"n_positions={cfg.n_positions}")

        # ---- embeddings
        if inputs_embeds is None:
            inputs_embeds = _embed(self.wte.embedding[...], input_ids)  # (B, T, C)
        h = inputs_embeds + _embed(self.wpe.embedding[...], position_ids)
        if token_type_ids is not None:
            h = h + _embed(self.wte.embedding[...], token_type_ids)  # token types reuse wte
        h = h.astype(self.dtype)
        h = self.drop(h, deterministic=deterministic)

        # ---- masks: HF's eager 4-D mask = where(causal & not-pad, 0, min), plus the causal where
        q_pos = past_len + jnp.arange(T)  # absolute slot of each query
        causal = jnp.arange(S)[None, :] <= q_pos[:, None]  # (T, S)
        if attention_mask is not None:
            attention_mask = jnp.asarray(attention_mask).reshape(B, -1)
            if attention_mask.shape[1] != S:
                what = "the cache length" if static_cache else "past + current length"
                raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns but "
                                 f"{what} is {S}")
            keep = causal[None, None] & (attention_mask != 0)[:, None, None, :]  # (B, 1, T, S)
        else:
            keep = causal[None, None]
        score_dtype = jnp.float32 if cfg.reorder_and_upcast_attn else self.dtype
        min_value = jnp.finfo(score_dtype).min
        mask_bias = jnp.where(keep, 0.0, min_value).astype(score_dtype)

        encoder_bias = None
        if encoder_hidden_states is not None and cfg.add_cross_attention:
            enc = jnp.asarray(encoder_hidden_states)
            if encoder_attention_mask is None:
                encoder_attention_mask = jnp.ones(enc.shape[:2], jnp.float32)
            m = jnp.asarray(encoder_attention_mask, jnp.float32)
            m = m[:, None, None, :] if m.ndim == 2 else m[:, None, :, :]  # (B, 1, 1|T, Se)
            encoder_bias = ((1.0 - m) * min_value).astype(score_dtype)

        head_masks = _head_masks(head_mask, cfg.n_layer, cfg.n_head)

        # ---- blocks
        presents: list = []
        all_hidden: tuple = ()
        all_attn: tuple = ()
        all_cross: tuple = ()
        for i, block in enumerate(self.h):
            if output_hidden_states:
                all_hidden += (h,)
            if static_cache:
                layer_past = (past_key_values.keys[i], past_key_values.values[i])
            else:
                layer_past = past_key_values[i] if past_key_values is not None else None
            h, present, attn_probs, cross_probs = block(
                h, layer_past=layer_past, cache_index=cache_index, causal=causal,
                mask_bias=mask_bias, head_mask=head_masks[i],
                encoder_hidden_states=encoder_hidden_states, encoder_bias=encoder_bias,
                use_cache=use_cache, deterministic=deterministic)
            presents.append(present)
            if output_attentions:
                all_attn += (attn_probs,)
                if cfg.add_cross_attention:
                    all_cross += (cross_probs,)

        h = self.ln_f(h)
        h = h.reshape(*input_shape, h.shape[-1])  # back to (B, [N,] T, C)
        if output_hidden_states:
            all_hidden += (h,)

        if static_cache:
            cache = KVCache(keys=tuple(p[0] for p in presents),
                            values=tuple(p[1] for p in presents), index=cache_index + T)
        else:
            cache = tuple(presents)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=h,
            past_key_values=cache if use_cache else None,
            hidden_states=all_hidden if output_hidden_states else None,
            attentions=all_attn if output_attentions else None,
            cross_attentions=all_cross if output_attentions and cfg.add_cross_attention else None,
        )
        return _result(out, return_dict)


def _head_masks(head_mask: Any, n_layer: int, n_head: int) -> list:
    """``head_mask`` (H,) or (L, H) -> per-layer (1, H, 1, 1) multipliers (None: no mask)."""
    if head_mask is None:
        return [None] * n_layer
    hm = jnp.asarray(head_mask)
    if hm.ndim == 1:
        hm = jnp.broadcast_to(hm, (n_layer, hm.shape[0]))
    if hm.ndim != 2 or hm.shape != (n_layer, n_head):
        raise ValueError(f"head_mask must have shape ({n_head},) or ({n_layer}, {n_head}), "
                         f"got {jnp.shape(head_mask)}")
    return [hm[i][None, :, None, None] for i in range(n_layer)]


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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Linear(config.n_embd, config.vocab_size, use_bias=False,
                                      kernel_init=_normal(config.initializer_range), dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        _annotate(self, sharding)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM logits (..., V): ``hidden @ wte^T`` when tied, else ``lm_head(hidden)``."""
        if self.config.tie_word_embeddings:
            wte = self.transformer.wte.embedding[...].astype(hidden.dtype)  # (V, C)
            return jnp.einsum("...c,vc->...v", hidden, wte)
        return self.lm_head(hidden)

    def __call__(self, input_ids=None, past_key_values=None, attention_mask=None,
                 token_type_ids=None, position_ids=None, head_mask=None, inputs_embeds=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
                 use_cache=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, logits_to_keep: int = 0, *, deterministic: bool | None = None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
            inputs_embeds, encoder_hidden_states, encoder_attention_mask, use_cache,
            output_attentions, output_hidden_states, return_dict=True,
            deterministic=deterministic)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[..., -logits_to_keep:, :]
        logits = self.logits(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            V = self.config.vocab_size
            _check_labels(labels, V, "labels")
            # pad labels with -100 on the right and shift left (HF ForCausalLMLoss)
            shifted = jnp.concatenate(
                [labels[..., 1:], jnp.full(labels.shape[:-1] + (1,), IGNORE_INDEX, labels.dtype)],
                axis=-1)
            loss = cross_entropy(logits.reshape(-1, V), shifted.reshape(-1))
        result = CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions,
            cross_attentions=out.cross_attentions)
        return _result(result, return_dict)


class GPT2SequenceSummary(nnx.Module):
    """The multiple-choice head of ``GPT2DoubleHeadsModel``: pool (``summary_type`` cls_index:
    one token per choice; last / first / mean: transformers' axis-1 reduction), dropout, ``summary`` projection
    (``summary_use_proj``; 1 output when ``summary_proj_to_labels``), activation, dropout.

    Args:
        config: the configuration (``summary_*`` fields); dtype, param_dtype, rngs as usual.

    Example:
        >>> s = GPT2SequenceSummary(tiny_config(), rngs=nnx.Rngs(0))
    """

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        self.summary_type = config.summary_type
        if config.summary_use_proj:
            n_out = 1 if config.summary_proj_to_labels else config.n_embd
            self.summary = nnx.Linear(config.n_embd, n_out, dtype=dtype, param_dtype=param_dtype,
                                      kernel_init=_normal(config.initializer_range), rngs=rngs)
        self.summary_activation = config.summary_activation
        self.first_dropout = nnx.Dropout(config.summary_first_dropout, rngs=rngs)
        self.last_dropout = nnx.Dropout(config.summary_last_dropout, rngs=rngs)

    def __call__(self, hidden: jax.Array, cls_index: jax.Array | None = None, *,
                 deterministic: bool | None = None) -> jax.Array:
        # hidden (B, N, T, C). cls_index pools one token per choice -> (B, N, C). "last",
        # "first" and "mean" index axis 1 exactly as transformers does (hidden[:, -1] ...),
        # which for double-heads inputs is the *choice* axis; kept for parity with the reference.
        if self.summary_type == "last":
            x = hidden[:, -1]
        elif self.summary_type == "first":
            x = hidden[:, 0]
        elif self.summary_type == "mean":
            x = hidden.mean(axis=1)
        else:  # cls_index: default is the last token, as transformers
            if cls_index is None:
                cls_index = jnp.full(hidden.shape[:-2], hidden.shape[-2] - 1, jnp.int32)
            x = jnp.take_along_axis(hidden, cls_index[..., None, None], axis=-2)[..., 0, :]
        x = self.first_dropout(x, deterministic=deterministic)
        if hasattr(self, "summary"):
            x = self.summary(x)
        if self.summary_activation:
            x = ACT2FN[self.summary_activation](x)
        return self.last_dropout(x, deterministic=deterministic)


class GPT2DoubleHeadsModel(GPT2PreTrainedModel):
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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transformer = GPT2Model(config, **kw)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Linear(config.n_embd, config.vocab_size, use_bias=False,
                                      kernel_init=_normal(config.initializer_range), **kw)
        self.multiple_choice_head = GPT2SequenceSummary(config, **kw)
        _annotate(self, sharding)

    logits = GPT2LMHeadModel.logits

    def __call__(self, input_ids=None, past_key_values=None, attention_mask=None,
                 token_type_ids=None, position_ids=None, head_mask=None, inputs_embeds=None,
                 mc_token_ids=None, labels=None, mc_labels=None, use_cache=None,
                 output_attentions=None, output_hidden_states=None, return_dict=None, *,
                 deterministic: bool | None = None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
            inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
            deterministic=deterministic)
        hidden = out.last_hidden_state  # (B, N, T, C)
        lm_logits = self.logits(hidden)  # (B, N, T, V)
        if mc_token_ids is not None:
            mc_token_ids = _as_int_array(mc_token_ids, "mc_token_ids")
            _check_range(mc_token_ids, hidden.shape[-2], "mc_token_ids", "sequence length")
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids, deterministic=deterministic)
        mc_logits = jnp.squeeze(mc_logits, -1) if mc_logits.shape[-1] == 1 else mc_logits
        mc_loss = None
        if mc_labels is not None:
            mc_labels = _as_int_array(mc_labels, "mc_labels")
            _check_labels(mc_labels, mc_logits.shape[-1], "mc_labels")
            mc_loss = cross_entropy(mc_logits.reshape(-1, mc_logits.shape[-1]),
                                    mc_labels.reshape(-1))
        lm_loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            V = self.config.vocab_size
            _check_labels(labels, V, "labels")
            lm_loss = cross_entropy(lm_logits[..., :-1, :].reshape(-1, V),
                                    labels[..., 1:].reshape(-1))
        result = GPT2DoubleHeadsModelOutput(
            loss=lm_loss, mc_loss=mc_loss, logits=lm_logits, mc_logits=mc_logits,
            past_key_values=out.past_key_values, hidden_states=out.hidden_states,
            attentions=out.attentions)
        return _result(result, return_dict)


def _classification_loss(config: GPT2Config, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """transformers' problem_type rules: regression (MSE), single-label (CE), multi-label (BCE)."""
    labels = jnp.asarray(labels)
    n = config.num_labels
    problem = config.problem_type
    if problem is None:
        if n == 1:
            problem = "regression"
        elif jnp.issubdtype(labels.dtype, jnp.integer):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        labels = labels.astype(jnp.float32)
        if n == 1:
            return jnp.mean((jnp.squeeze(logits).astype(jnp.float32) - jnp.squeeze(labels)) ** 2)
        return jnp.mean((logits.astype(jnp.float32) - labels) ** 2)
    if problem == "single_label_classification":
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"single-label classification needs integer labels, got {labels.dtype}")
        _check_labels(labels, n, "labels")
        return cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
    # multi-label: mean binary cross-entropy with logits
    x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
    if x.shape != y.shape:
        raise ValueError(f"multi-label labels must have the logits' shape {x.shape}, got {y.shape}")
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.score = nnx.Linear(config.n_embd, config.num_labels, use_bias=False, dtype=dtype,
                                param_dtype=param_dtype,
                                kernel_init=_normal(config.initializer_range), rngs=rngs)
        _annotate(self, sharding)

    def __call__(self, input_ids=None, past_key_values=None, attention_mask=None,
                 token_type_ids=None, position_ids=None, head_mask=None, inputs_embeds=None,
                 labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, deterministic: bool | None = None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        pad = self.config.pad_token_id
        batch = (jnp.shape(input_ids)[0] if input_ids is not None else jnp.shape(inputs_embeds)[0])
        if pad is None and batch != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined "
                             "(set config.pad_token_id)")
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
            inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
            deterministic=deterministic)
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        T = logits.shape[1]
        if pad is None:
            last = jnp.full((batch,), T - 1)
        elif input_ids is not None:
            ids = jnp.asarray(input_ids).reshape(batch, -1)
            last = jnp.argmax(jnp.arange(T) * (ids != pad), axis=-1)  # rightmost non-pad token
        else:
            logger.warning("GPT2ForSequenceClassification: padding is not detected with "
                           "inputs_embeds; pooling the last position")
            last = jnp.full((batch,), T - 1)
        pooled = logits[jnp.arange(batch), last]  # (B, num_labels)
        loss = _classification_loss(self.config, pooled, labels) if labels is not None else None
        result = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, past_key_values=out.past_key_values,
            hidden_states=out.hidden_states, attentions=out.attentions)
        return _result(result, return_dict)


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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.classifier_dropout_prob, rngs=rngs)
        self.classifier = nnx.Linear(config.n_embd, config.num_labels, dtype=dtype,
                                     param_dtype=param_dtype,
                                     kernel_init=_normal(config.initializer_range), rngs=rngs)
        _annotate(self, sharding)

    def __call__(self, input_ids=None, past_key_values=None, attention_mask=None,
                 token_type_ids=None, position_ids=None, head_mask=None, inputs_embeds=None,
                 labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, deterministic: bool | None = None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids, past_key_values, attention_mask, token_type_ids, position_ids, head_mask,
            inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
            deterministic=deterministic)
        h = self.dropout(out.last_hidden_state, deterministic=deterministic)
        logits = self.classifier(h)  # (B, T, num_labels)
        loss = None
        if labels is not None:
            labels = _as_int_array(labels, "labels")
            n = self.config.num_labels
            _check_labels(labels, n, "labels")
            loss = cross_entropy(logits.reshape(-1, n), labels.reshape(-1))
        result = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
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

    def __init__(self, config: GPT2Config, *, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs, sharding: Any = None) -> None:
        self.config = config = _static_config(config)
        self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qa_outputs = nnx.Linear(config.n_embd, 2, dtype=dtype, param_dtype=param_dtype,
                                     kernel_init=_normal(config.initializer_range), rngs=rngs)
        _annotate(self, sharding)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None,
                 position_ids=None, head_mask=None, inputs_embeds=None, start_positions=None,
                 end_positions=None, output_attentions=None, output_hidden_states=None,
                 return_dict=None, *, deterministic: bool | None = None):
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        out = self.transformer(
            input_ids, None, attention_mask, token_type_ids, position_ids, head_mask,
            inputs_embeds, use_cache=False, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
            deterministic=deterministic)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start_logits.shape[1]
            sp = _as_int_array(start_positions, "start_positions")
            ep = _as_int_array(end_positions, "end_positions")
            sp = jnp.clip(sp.reshape(-1), 0, T)  # T = outside the window: ignored
            ep = jnp.clip(ep.reshape(-1), 0, T)
            loss = (cross_entropy(start_logits, sp, ignore_index=T)
                    + cross_entropy(end_logits, ep, ignore_index=T)) / 2
        result = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=out.hidden_states, attentions=out.attentions)
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
    "ACT2FN", "GPT2Attention", "GPT2Block", "GPT2DoubleHeadsModel", "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification", "GPT2ForTokenClassification", "GPT2LMHeadModel", "GPT2MLP",
    "GPT2Model", "GPT2PreTrainedModel", "GPT2SequenceSummary", "KVCache", "MODEL_CLASSES",
    "checked", "cross_entropy",
]
