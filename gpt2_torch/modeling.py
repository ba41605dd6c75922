"""GPT-2 in PyTorch: the base model and its six heads.

Behaviour follows transformers 4.57.6's PyTorch GPT-2 on its *eager* attention path (the
reference of this project), while running ``F.scaled_dot_product_attention`` by default. Unlike
transformers' SDPA path, every config flag is honoured there too: ``scale_attn_by_inverse_layer_idx``
goes into SDPA's ``scale`` and ``reorder_and_upcast_attn`` runs the attention in float32.

Attribute names are the canonical weight names (``wte``, ``wpe``, ``h.{i}.ln_1``,
``attn.c_attn`` (fused q/k/v), ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_f``;
heads under ``transformer.``), so ``model.state_dict()`` *is* the canonical state dict.

Shape legend used in comments:
    B = batch, T = query length, S = key length (cached + new, or the static cache capacity),
    H = heads, D = head dim, C = n_embd, V = vocab size, N = number of choices (double heads).

Masks are additive float tensors (0 = attend). Like transformers we use ``finfo(dtype).min``
instead of ``-inf`` so that a fully masked row (a left-pad query) never produces NaN; padded keys
get ``min / 2`` so that, in a fully masked row, the causally visible keys still win over the
future ones -- which reproduces transformers' eager output bit for bit in spirit (uniform
attention over the visible pads) instead of SDPA's NaN.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gpt2_core import checkpoint as ckpt
from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.generation import attention_scale, problem_type
from gpt2_core.generation_config import GENERATION_CONFIG_NAME, GenerationConfig
from gpt2_core.inputs import check_ids_shape
from gpt2_core.outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from gpt2_torch._framework import FrameworkMixin
from gpt2_torch.generation import GenerationMixin

logger = logging.getLogger(__name__)

# a per-layer cache entry: (k, v) or, with cross-attention, (k, v, cross_k, cross_v); each (B, H, S, D)
LayerPast = tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------- activations
def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # gelu_new / gelu_fast / gelu_pytorch_tanh are all the tanh approximation
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); F.gelu computes it in one fused kernel.
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": F.gelu,  # exact erf GELU
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called ``name`` (every key of ``gpt2_core.config.ACTIVATIONS``)."""
    try:
        return ACT2FN[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACT2FN)}") from None


# ----------------------------------------------------------------------------- building blocks
class Conv1D(nn.Module):
    """GPT-2's "Conv1D": a linear layer whose weight is stored (in, out), the transpose of nn.Linear.

    Kept (rather than nn.Linear) so that the parameters have exactly the canonical layout and
    loading is a plain copy.

    Args:
        nf: output features.
        nx: input features.
    """

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.shape[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)  # (B*T, nf)
        return x.view(size_out)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim (``weight`` / ``bias``); torch's own kernel already keeps
    its statistics in float32 under autocast.

    Args:
        dim: normalised size.
        epsilon: ``config.layer_norm_epsilon``.
    """

    def __init__(self, dim: int, epsilon: float) -> None:
        super().__init__(dim, eps=epsilon)


@dataclass
class StaticCache:
    """A preallocated key/value cache: one ``(B, H, max_length, D)`` buffer per layer.

    Decoding writes the new keys/values into the buffers in place (``index_copy_`` at
    ``cache_position``) and attends over the whole buffer with an additive mask, so the shapes
    never change from step to step (which is what makes ``torch.compile`` of the step pay off).
    The cache is an explicit value: pass it to ``forward(past_key_values=cache,
    cache_position=...)`` and keep the returned one; modules hold no state.

    Example:
        >>> cache = StaticCache.allocate(model.config, batch_size=1, max_length=32)
        >>> out = model(ids, past_key_values=cache, cache_position=torch.arange(ids.shape[1]))
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        config: GPT2Config,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> StaticCache:
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, H, L, D)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        return cls(keys, values)

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def reorder(self, index: torch.Tensor) -> StaticCache:
        """Reorder the batch rows (beam search): row i becomes old row ``index[i]``. In place
        here (the buffers are preallocated); returns the cache, as the functional backends."""
        for buf in (*self.keys, *self.values):
            buf.copy_(buf.index_select(0, index))
        return self


def flash_attention_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why FlashAttention-2 cannot run here (None when it can): the package, CUDA, fp16/bf16."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install flash-attn)"
    if torch.device(device).type != "cuda":
        return f"it needs a CUDA device, the model is on {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it needs fp16 or bf16 weights, the model is {dtype} (from_pretrained(dtype=...))"
    return None


def _attn_implementation(config: GPT2Config) -> str:
    """The config's attn_implementation for this backend (default sdpa), refusing the ones
    PyTorch cannot run or that cannot honour the config's flags."""
    impl = config.attn_implementation or "sdpa"
    if impl not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(
            f"attn_implementation={impl!r} is not available in gpt2_torch; use "
            "'eager', 'sdpa' or 'flash_attention_2'"
        )
    if impl == "flash_attention_2" and config.reorder_and_upcast_attn:
        raise ValueError(
            "attn_implementation='flash_attention_2' cannot honour "
            "reorder_and_upcast_attn=True (float32 QK^T and softmax); use 'sdpa' "
            "or 'eager'"
        )
    return impl


class GPT2Attention(nn.Module):
    """Multi-head causal self-attention (or cross-attention) with a fused q/k/v projection.

    Args:
        config: the model config; reads ``scale_attn_weights``,
            ``scale_attn_by_inverse_layer_idx``, ``reorder_and_upcast_attn`` and dropouts.
        is_cross_attention: build ``q_attn`` + a k/v-only ``c_attn`` for attending to an encoder.
        layer_idx: index of the block (for ``scale_attn_by_inverse_layer_idx``).
    """

    def __init__(
        self, config: GPT2Config, is_cross_attention: bool = False, layer_idx: int = 0
    ) -> None:
        super().__init__()
        self.embed_dim = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = config.head_dim
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        # the combined scale, so that SDPA applies the same flags as the eager path
        self.scale = attention_scale(config, layer_idx)
        self.attn_implementation = _attn_implementation(config)
        if is_cross_attention:
            self.c_attn = Conv1D(2 * self.embed_dim, self.embed_dim)  # k, v from the encoder
            self.q_attn = Conv1D(self.embed_dim, self.embed_dim)
        else:
            self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)  # fused q, k, v
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, H, T, D)
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, H, T, D) -> (B, T, C)
        return x.transpose(1, 2).reshape(*x.shape[:1], x.shape[2], self.embed_dim)

    def _eager_attention(self, q, k, v, mask, head_mask):
        """Explicit softmax(QK^T) V; returns the output (B, H, T, D) and the weights (B, H, T, S)."""
        if self.reorder_and_upcast_attn:
            # transformers' _upcast_and_reordered_attn: QK^T in float32 with the scale folded in
            B, H, T, D = q.shape
            S = k.shape[-2]
            with torch.autocast(q.device.type, enabled=False):
                w = torch.baddbmm(
                    torch.empty(B * H, T, S, dtype=torch.float32, device=q.device),
                    q.reshape(-1, T, D).float(),
                    k.transpose(-1, -2).reshape(-1, D, S).float(),
                    beta=0,
                    alpha=self.scale,
                ).view(B, H, T, S)
        else:
            w = torch.matmul(q, k.transpose(-1, -2))  # (B, H, T, S)
            if self.scale_attn_weights:
                w = w / math.sqrt(v.shape[-1])
            if self.scale_attn_by_inverse_layer_idx:
                w = w / float(self.layer_idx + 1)
        if mask is not None:
            w = w + mask
        w = F.softmax(w, dim=-1).type(v.dtype)
        w = self.attn_dropout(w)
        if head_mask is not None:
            w = w * head_mask
        return torch.matmul(w, v), w

    def _fused_attention(self, q, k, v, mask, is_causal: bool, static_cache: bool):
        """The fused kernel of ``attn_implementation`` (no weights materialised): SDPA, or
        FlashAttention-2 (the flash-attn package; unpadded only) outside the static cache."""
        dropout = self.attn_dropout.p if self.training else 0.0
        if self.attn_implementation == "flash_attention_2" and not static_cache:
            reason = flash_attention_unavailable(q.device, q.dtype)
            if reason:
                raise RuntimeError(f"attn_implementation='flash_attention_2': {reason}")
            if mask is not None:
                raise ValueError(
                    "attn_implementation='flash_attention_2' runs unpadded causal attention only: "
                    "got an attention mask with padding (or a past without a static cache), a "
                    "head_mask or output_attentions; use attn_implementation='sdpa' for those"
                )
            from flash_attn import flash_attn_func

            out = flash_attn_func(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                dropout_p=dropout,
                softmax_scale=self.scale,
                causal=is_causal and not self.is_cross_attention,
            )  # (B, T, H, D)
            return out.transpose(1, 2)  # (B, H, T, D)
        if self.reorder_and_upcast_attn and q.dtype != torch.float32:
            # the flag promises float32 scores and softmax: compute the whole attention in fp32
            return F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=None if mask is None else mask.float(),
                dropout_p=dropout,
                is_causal=is_causal,
                scale=self.scale,
            ).to(q.dtype)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=self.scale
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        layer_past: LayerPast | None = None,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        cache_position: torch.Tensor | None = None,
        is_causal: bool = False,
        static_cache: bool = False,
    ) -> tuple[torch.Tensor, LayerPast | None, torch.Tensor | None]:
        """Attention output (B, T, C), the present (k, v) if ``use_cache``, the weights if asked.

        Self-attention: ``layer_past`` is ``(k, v)`` of earlier positions, concatenated with the
        new ones, or (``static_cache``) preallocated buffers written in place at
        ``cache_position``. Cross-attention: ``layer_past`` holds the encoder's (k, v), reused.
        """
        if self.is_cross_attention:
            q = self._split_heads(self.q_attn(hidden_states))
            if layer_past is not None:
                k, v = layer_past  # the encoder's keys/values never change: reuse them
            else:
                k, v = self.c_attn(encoder_hidden_states).split(self.embed_dim, dim=2)
                k, v = self._split_heads(k), self._split_heads(v)  # (B, H, S_enc, D)
            mask = encoder_attention_mask
        else:
            q, k, v = self.c_attn(hidden_states).split(self.embed_dim, dim=2)
            q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
            if layer_past is not None:
                past_k, past_v = layer_past[0], layer_past[1]
                if static_cache:
                    # write the new positions into the preallocated (B, H, L, D) buffers
                    past_k.index_copy_(2, cache_position, k)
                    past_v.index_copy_(2, cache_position, v)
                    k, v = past_k, past_v
                else:
                    k = torch.cat((past_k, k), dim=-2)  # (B, H, S, D)
                    v = torch.cat((past_v, v), dim=-2)
            mask = attention_mask
        present = (k, v) if use_cache else None

        # The CPU flash SDPA kernel's backward is wrong for rows whose visible keys are all
        # padding (left-pad queries): 0.68 max|diff| on wte's gradient against transformers'
        # eager path (tests/parity). With a padding mask and gradients, take the eager path.
        grad_with_mask = mask is not None and torch.is_grad_enabled() and q.requires_grad
        flash = self.attn_implementation == "flash_attention_2" and not static_cache
        if flash and (head_mask is not None or output_attentions):
            raise ValueError(
                "attn_implementation='flash_attention_2' runs unpadded causal attention only: "
                "got an attention mask with padding (or a past without a static cache), a "
                "head_mask or output_attentions; use attn_implementation='sdpa' for those"
            )
        weights = None
        if not flash and (
            output_attentions
            or head_mask is not None
            or grad_with_mask
            or self.attn_implementation == "eager"
        ):
            out, weights = self._eager_attention(q, k, v, mask, head_mask)
            if not output_attentions:
                weights = None
        else:
            out = self._fused_attention(q, k, v, mask, is_causal, static_cache)
        out = self._merge_heads(out)  # (B, T, C)
        out = self.resid_dropout(self.c_proj(out))
        return out, present, weights


class GPT2MLP(nn.Module):
    """Position-wise feed-forward: c_fc -> activation -> c_proj -> dropout.

    Args:
        intermediate_size: width of the hidden layer (``config.inner_dim``).
        config: the model config (``activation_function``, ``resid_pdrop``).
    """

    def __init__(self, intermediate_size: int, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, intermediate_size)
        self.act = get_activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)) [+ crossattn(ln_cross_attn(x))] + mlp(ln_2(x)).

    Args:
        config: the model config.
        layer_idx: index of this block.
    """

    def __init__(self, config: GPT2Config, layer_idx: int = 0) -> None:
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = LayerNorm(C, eps)
        self.attn = GPT2Attention(config, layer_idx=layer_idx)
        self.ln_2 = LayerNorm(C, eps)
        self.add_cross_attention = config.add_cross_attention
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(
                config, is_cross_attention=True, layer_idx=layer_idx
            )
            self.ln_cross_attn = LayerNorm(C, eps)
        self.mlp = GPT2MLP(config.inner_dim, config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        layer_past: LayerPast | None = None,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        cache_position: torch.Tensor | None = None,
        is_causal: bool = False,
        static_cache: bool = False,
    ) -> tuple[torch.Tensor, LayerPast | None, torch.Tensor | None, torch.Tensor | None]:
        """Returns (hidden (B, T, C), present, self-attention weights, cross-attention weights)."""
        self_past = None if layer_past is None else layer_past[:2]
        attn_out, present, self_w = self.attn(
            self.ln_1(hidden_states),
            self_past,
            attention_mask,
            head_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            cache_position=cache_position,
            is_causal=is_causal,
            static_cache=static_cache,
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
                layer_past[2:4] if layer_past is not None and len(layer_past) == 4 else None
            )
            cross_out, cross_present, cross_w = self.crossattention(
                self.ln_cross_attn(hidden_states),
                cross_past,
                None,
                head_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                use_cache=use_cache,
                output_attentions=output_attentions,
            )
            hidden_states = hidden_states + cross_out
            if present is not None:
                present = (
                    present + cross_present
                )  # (k, v, cross_k, cross_v), transformers' legacy layout
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, present, self_w, cross_w


class GPT2SequenceSummary(nn.Module):
    """The multiple-choice head of GPT2DoubleHeadsModel: pick a token, project, activate.

    Args:
        config: reads ``summary_type`` (last / first / mean / cls_index), ``summary_use_proj``,
            ``summary_proj_to_labels``, ``summary_activation``, ``summary_first_dropout`` and
            ``summary_last_dropout``.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.summary_type = config.summary_type
        self.summary: nn.Module = nn.Identity()
        if config.summary_use_proj:
            self.summary = nn.Linear(config.n_embd, naming.summary_out_features(config))
        act = config.summary_activation
        self.activation = get_activation(act) if act else (lambda x: x)
        p1, p2 = config.summary_first_dropout, config.summary_last_dropout
        self.first_dropout = nn.Dropout(p1) if p1 > 0 else nn.Identity()
        self.last_dropout = nn.Dropout(p2) if p2 > 0 else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, cls_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden_states (B, N, T, C), cls_index (B, N) -> (B, N, out)."""
        if self.summary_type == "last":
            output = hidden_states[:, -1]
        elif self.summary_type == "first":
            output = hidden_states[:, 0]
        elif self.summary_type == "mean":
            output = hidden_states.mean(dim=1)
        else:  # cls_index; default: the last token
            if cls_index is None:
                cls_index = torch.full_like(
                    hidden_states[..., :1, :], hidden_states.shape[-2] - 1, dtype=torch.long
                )
            else:
                _check_ids("mc_token_ids", cls_index, hidden_states.shape[-2])
                cls_index = cls_index.unsqueeze(-1).unsqueeze(-1)  # (B, N, 1, 1)
                cls_index = cls_index.expand(
                    (-1,) * (cls_index.dim() - 1) + (hidden_states.size(-1),)
                )
            output = hidden_states.gather(-2, cls_index).squeeze(-2)  # (B, N, C)
        output = self.first_dropout(output)
        output = self.activation(self.summary(output))
        return self.last_dropout(output)


# ----------------------------------------------------------------------------- input checks
def _check_ids(name: str, ids: torch.Tensor, upper: int) -> None:
    """Integer ids in [0, upper): checked before any gather (not every device's gather checks)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ids.numel() and torch.compiler.is_compiling():
        # no data-dependent Python branch (a Dynamo graph break): an in-graph assertion instead
        torch._assert_async(
            ((ids >= 0) & (ids < upper)).all(), f"{name} contains ids outside [0, {upper})"
        )
    elif ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains {bad}, outside [0, {upper})")


def _padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B, 1, 1, S) additive bias: 0 to attend, finfo.min / 2 for padding."""
    keep = attention_mask[:, None, None, :].to(torch.bool)
    pad_value = torch.finfo(dtype).min / 2
    return torch.zeros((), dtype=dtype, device=keep.device).masked_fill(~keep, pad_value)


def _causal_bias(cache_position: torch.Tensor, key_length: int, dtype: torch.dtype) -> torch.Tensor:
    """(T, S) additive causal bias: key s is visible from the query at slot p iff s <= p."""
    keys = torch.arange(key_length, device=cache_position.device)
    visible = keys[None, :] <= cache_position[:, None]
    return torch.zeros((), dtype=dtype, device=keys.device).masked_fill(
        ~visible, torch.finfo(dtype).min
    )


def build_attention_bias(
    attention_mask: torch.Tensor | None,
    cache_position: torch.Tensor,
    key_length: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The additive self-attention mask (B|1, 1, T, S): causal (finfo.min) + padding (min / 2).

    Padded keys get half the minimum so that a fully masked row (a left-pad query) attends
    uniformly to its visible pads, as transformers' eager path does, instead of giving NaN.
    """
    bias = _causal_bias(cache_position, key_length, dtype)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        # min + min/2 stays finite in fp32/bf16 and becomes -inf in fp16: both give weight 0
        bias = torch.maximum(
            bias + _padding_bias(attention_mask, dtype), bias.new_tensor(torch.finfo(dtype).min)
        )
    return bias


def encoder_attention_bias(
    encoder_attention_mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(B, S_enc) or (B, T, S_enc) 0/1 mask -> additive (B, 1, 1|T, S_enc), transformers' rule."""
    m = encoder_attention_mask.to(dtype)
    m = m[:, None, None, :] if m.dim() == 2 else m[:, None, :, :]
    return (1.0 - m) * torch.finfo(dtype).min  # transformers' invert_attention_mask


# ----------------------------------------------------------------------------- models
class GPT2PreTrainedModel(FrameworkMixin, nn.Module):
    """Shared plumbing: config, from_pretrained / save_pretrained. Init, weight tying,
    ``device`` / ``dtype`` and activation checkpointing come from
    :class:`gpt2_torch._framework.FrameworkMixin`; ``state_dict`` from ``nn.Module``.

    Subclasses set ``_head`` (a :data:`gpt2_core.naming.HEADS` key).
    """

    _head = "base"
    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a gpt2_core.GPT2Config, got {type(config).__name__}")
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
        self.gradient_checkpointing = False

    @classmethod
    def from_config(cls, config: GPT2Config) -> GPT2PreTrainedModel:
        """A randomly initialised model (transformers' init) from a config."""
        return cls(config)

    @classmethod
    def from_state_dict(
        cls, config: GPT2Config, state_dict: Any, *, strict: bool = True
    ) -> GPT2PreTrainedModel:
        """A model built from ``config`` and filled from a canonical state dict (HF PyTorch
        names and layouts); raises ``CheckpointError`` naming bad keys when ``strict``."""
        from gpt2_torch import weights

        model = cls(config)
        weights.load_canonical(model, state_dict, strict=strict)
        return model.eval()

    def get_input_embeddings(self) -> nn.Embedding:
        base = self if isinstance(self, GPT2Model) else self.transformer
        return base.wte

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count, tied weights once."""
        seen: dict[int, int] = {}
        for name, p in self.named_parameters():  # named_parameters already dedups shared params
            if exclude_embeddings and name.endswith(("wte.weight", "wpe.weight")):
                continue
            seen[id(p)] = p.numel()
        return sum(seen.values())

    # -- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: GPT2Config | None = None,
        dtype: torch.dtype | str | None = torch.float32,
        device: torch.device | str = "cpu",
        prefer: str | None = None,
        strict: bool = True,
        quantize: str | None = None,
        **config_overrides: Any,
    ) -> GPT2PreTrainedModel:
        """Load a checkpoint directory (or hub id) in any of transformers' formats.

        Reads model.safetensors (also sharded), pytorch_model.bin, tf_model.h5 or
        flax_model.msgpack, with or without the ``transformer.`` prefix. A base-model checkpoint
        loads into a head model: the new head is initialised (HF's init) and listed in
        ``model.load_report.newly_initialized``. The model is built on the meta device and the
        checkpoint tensors are assigned directly, so there is no random-initialisation pass.

        Args:
            name_or_path: a directory, or a hub id / preset name (needs huggingface_hub).
            config: use this config instead of the directory's config.json.
            dtype: parameter dtype (default float32, as transformers); ``"auto"`` keeps the
                checkpoint's own dtype.
            device: where to put the parameters.
            prefer: read this format when several are present ("safetensors", "pytorch", "tf", "flax").
            strict: raise :class:`gpt2_core.naming.CheckpointError` on missing / unexpected /
                mis-shaped weights (default); False only logs them.
            quantize: ``"int8"`` (or ``dtype="int8"``): int8 weight-only quantization, see
                :mod:`gpt2_torch.quantize`.
            **config_overrides: config fields to change (e.g. ``attn_pdrop=0.0``), including
                ``attn_implementation``: "sdpa" (default), "eager" (explicit softmax(QK^T)V,
                transformers' reference path) or "flash_attention_2" (needs the flash-attn
                package, a CUDA device and fp16/bf16 weights, else a RuntimeError; unpadded
                inputs only; decoding steps over generate's static cache run SDPA).

        Example:
            >>> model = GPT2LMHeadModel.from_pretrained("path/to/gpt2")
            >>> model = GPT2ForSequenceClassification.from_pretrained("path/to/gpt2", num_labels=3)
        """
        from gpt2_torch import quantize as Q
        from gpt2_torch import weights

        dtype, quantize = Q.resolve(dtype, quantize)
        np_dtype = None if dtype in (None, "auto") else dtype
        config, state_dict, report = ckpt.load_pretrained(
            name_or_path,
            cls._head,
            config=config,
            dtype=np_dtype,
            prefer=prefer,
            strict=strict,
            # safetensors: torch adopts the copy-on-write map as it is (no copy); a cast or
            # an unaligned tensor is copied block by block, each source block released
            mmap="private",
            **config_overrides,
        )
        with torch.device("meta"), weights.skip_init():
            model = cls(config)
        weights.load_canonical(
            model, state_dict, assign=True, consume=True, init_missing=True, strict=strict
        )
        _materialize_missing(model, dtype=weights.torch_dtype_of(state_dict))
        model.to(device)
        if config.attn_implementation == "flash_attention_2":
            reason = flash_attention_unavailable(torch.device(device), model.dtype)
            if reason:
                raise RuntimeError(f"attn_implementation='flash_attention_2': {reason}")
        model.load_report = report
        gen_path = Path(name_or_path) / GENERATION_CONFIG_NAME
        if gen_path.is_file():
            model.generation_config = GenerationConfig.from_pretrained(gen_path)
        model.eval()  # as transformers: a loaded model starts in eval mode (dropout off)
        return Q.quantize_model(model, quantize) if quantize else model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        dtype: Any = None,
        formats: Sequence[str] = ("safetensors",),
    ) -> list[Path]:
        """Write config.json and the weights (model.safetensors by default) that transformers loads.

        Args:
            save_directory: target directory (created).
            max_shard_size: shard safetensors files past this size ("5GB", "200MB", bytes).
            dtype: cast floating weights before writing ("fp16", "bf16", ...).
            formats: any of "safetensors", "pytorch", "tf", "flax".
        """
        from gpt2_torch import quantize, weights

        quantize.refuse_save(self)
        written = ckpt.save_pretrained(
            weights.to_canonical(self),
            self.config,
            save_directory,
            self._head,
            max_shard_size=max_shard_size,
            dtype=dtype,
            formats=tuple(formats),
        )
        self.generation_config.save_pretrained(save_directory)
        return written


def _materialize_missing(model: GPT2PreTrainedModel, dtype: torch.dtype) -> None:
    """Give parameters still on the meta device (new head weights) real storage and HF's init."""
    for module in model.modules():
        direct = list(module.parameters(recurse=False))
        if any(p.is_meta for p in direct):
            module.to_empty(device="cpu", recurse=False)
            module.to(dtype)
            with torch.no_grad():
                model._init_weights(module)
    model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters were not loaded: {left}")


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 transformer: embeddings, ``n_layer`` blocks and the final LayerNorm.

    Args:
        config: a :class:`gpt2_core.GPT2Config`.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2Model(tiny_config())
        >>> out = model(torch.tensor([[1, 2, 3]]))
        >>> out.last_hidden_state.shape
        torch.Size([1, 3, 36])
    """

    _head = "base"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        if type(self) is GPT2Model:
            self.post_init()

    def _head_masks(self, head_mask: torch.Tensor | None) -> list[torch.Tensor | None]:
        """(H,) or (n_layer, H) keep-mask -> per layer (1|B, H, 1, 1), as transformers."""
        if head_mask is None:
            return [None] * self.config.n_layer
        if head_mask.dim() == 1:  # the same heads in every layer
            head_mask = head_mask[None, None, :, None, None].expand(
                self.config.n_layer, -1, -1, -1, -1
            )
        elif head_mask.dim() == 2:  # per layer
            head_mask = head_mask[:, None, :, None, None]
        if head_mask.dim() != 5 or head_mask.shape[0] != self.config.n_layer:
            raise ValueError(
                f"head_mask must be (n_head,) or (n_layer, n_head), got {tuple(head_mask.shape)}"
            )
        head_mask = head_mask.to(self.wpe.weight.dtype)
        return list(head_mask)

    def _flatten_inputs(self, input_ids, inputs_embeds):
        """Check the ids / embeddings and fold leading dims: (..., T) -> (B, T); returns
        ``(input_ids, inputs_embeds, input_shape)`` (the caller's shape, without C)."""
        cfg = self.config
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError(
                "You cannot specify both input_ids and inputs_embeds at the same time: pass either one"
            )
        if input_ids is not None:
            _check_ids("input_ids", input_ids, cfg.vocab_size)
            check_ids_shape(tuple(input_ids.shape))
            input_shape = input_ids.shape
            input_ids = input_ids.reshape(-1, input_shape[-1])  # (B, T); double heads: (B*N, T)
        elif inputs_embeds is not None:
            check_ids_shape(tuple(inputs_embeds.shape[:-1]), "inputs_embeds")
            if inputs_embeds.dim() < 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {cfg.n_embd}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            input_shape = inputs_embeds.shape[:-1]
            inputs_embeds = inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:])  # (B, T, C)
        else:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        return input_ids, inputs_embeds, input_shape

    def _read_cache(self, past_key_values, B: int, T: int, cache_position):
        """The per-layer pasts, the past length, the key length S and the slots of the new
        tokens; ``static`` when ``past_key_values`` is a :class:`StaticCache`."""
        cfg = self.config
        static = isinstance(past_key_values, StaticCache)
        if static:
            if cache_position is None:
                raise ValueError("a StaticCache needs cache_position (the slots of the new tokens)")
            if past_key_values.batch_size != B:
                raise ValueError(f"StaticCache holds batch {past_key_values.batch_size}, got {B}")
            layer_pasts: Sequence[LayerPast | None] = list(
                zip(past_key_values.keys, past_key_values.values)
            )
            past_length, key_length = 0, past_key_values.max_length
        elif past_key_values is not None:
            if len(past_key_values) != cfg.n_layer:
                raise ValueError(
                    f"past_key_values has {len(past_key_values)} layers, "
                    f"the model has {cfg.n_layer}"
                )
            layer_pasts = past_key_values
            past_length = past_key_values[0][0].shape[-2]
            key_length = past_length + T
        else:
            layer_pasts = [None] * cfg.n_layer
            past_length, key_length = 0, T
        if cache_position is None:
            cache_position = torch.arange(
                past_length, past_length + T, device=self.wte.weight.device
            )
        return layer_pasts, past_length, key_length, cache_position, static

    def _embed(
        self, input_ids, inputs_embeds, position_ids, token_type_ids, cache_position, T: int
    ) -> torch.Tensor:
        """wte(ids) + wpe(positions) [+ wte(token types)], then dropout: (B, T, C)."""
        cfg = self.config
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0)  # (1, T)
        else:
            position_ids = position_ids.reshape(-1, T)
        _check_ids("position_ids", position_ids, cfg.n_positions)  # also catches T > n_positions
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        hidden_states = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            token_type_ids = token_type_ids.reshape(-1, T)
            _check_ids("token_type_ids", token_type_ids, cfg.vocab_size)
            hidden_states = hidden_states + self.wte(token_type_ids)
        return self.drop(hidden_states)

    def _attention_masks(
        self,
        attention_mask,
        encoder_hidden_states,
        encoder_attention_mask,
        B: int,
        T: int,
        past_length: int,
        key_length: int,
        cache_position,
        static: bool,
        dtype: torch.dtype,
        use_fused: bool,
    ):
        """The self-attention bias (B|1, 1, T, S) or None with ``is_causal`` (SDPA's own causal
        kernel), and the encoder bias (B, 1, 1|T, S_enc) or None."""
        if attention_mask is not None:
            attention_mask = attention_mask.reshape(B, -1)
            if attention_mask.shape[1] != key_length:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} positions but "
                    f"past + new tokens are {key_length}"
                )
            if not static and bool(attention_mask.all()):
                attention_mask = None  # nothing padded: keep SDPA's fast causal path
        is_causal = False
        if attention_mask is None and not static and (T == 1 or (use_fused and past_length == 0)):
            bias = None  # one query sees every cached key; or SDPA's own causal kernel
            is_causal = T > 1
        else:
            bias = build_attention_bias(attention_mask, cache_position, key_length, dtype)
        encoder_bias = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_bias = encoder_attention_bias(encoder_attention_mask, dtype)
        return bias, is_causal, encoder_bias

    def _run_blocks(
        self,
        hidden_states,
        layer_pasts,
        bias,
        is_causal,
        head_masks,
        encoder_hidden_states,
        encoder_bias,
        cache_position,
        static: bool,
        use_cache: bool,
        output_attentions: bool,
        output_hidden_states: bool,
    ):
        """Every block in turn; returns (hidden, presents, all hidden states, self / cross
        attention weights), the last three None when not asked for."""
        presents: list[LayerPast] | None = [] if use_cache else None
        all_hidden: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_self: tuple[torch.Tensor, ...] | None = () if output_attentions else None
        all_cross: tuple[torch.Tensor, ...] | None = (
            ()
            if output_attentions
            and self.config.add_cross_attention
            and encoder_hidden_states is not None
            else None
        )
        for block, layer_past, layer_head_mask in zip(self.h, layer_pasts, head_masks):
            if all_hidden is not None:
                all_hidden = all_hidden + (hidden_states,)
            args = (
                hidden_states,
                layer_past,
                bias,
                layer_head_mask,
                encoder_hidden_states,
                encoder_bias,
                use_cache,
                output_attentions,
                cache_position,
                is_causal,
                static,
            )
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden_states, present, self_w, cross_w = checkpoint(
                    block, *args, use_reentrant=False
                )
            else:
                hidden_states, present, self_w, cross_w = block(*args)
            if presents is not None:
                presents.append(present)
            if all_self is not None:
                all_self = all_self + (self_w,)
                if all_cross is not None:
                    all_cross = all_cross + (cross_w,)
        return hidden_states, presents, all_hidden, all_self, all_cross

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Sequence[LayerPast] | StaticCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """Run the transformer.

        Args:
            input_ids: (B, T) token ids (or (B, N, T); leading dims are flattened).
            past_key_values: a tuple over layers of (k, v) (B, H, S_past, D) [+ cross (k, v)],
                as returned with ``use_cache``, or a :class:`StaticCache` (then pass
                ``cache_position`` and a (B, L) ``attention_mask`` over its slots, or none).
            attention_mask: (B, S) 1 = attend, 0 = padding, covering past and new tokens.
            token_type_ids: (B, T) ids embedded through ``wte`` and added.
            position_ids: (B, T) positions; default ``past_length + arange(T)`` (use
                ``attention_mask.cumsum(-1) - 1`` for left padding).
            head_mask: (H,) or (n_layer, H), 1 = keep the head (runs the eager path).
            inputs_embeds: (B, T, C) instead of ``input_ids``.
            encoder_hidden_states / encoder_attention_mask: cross-attention inputs.
            use_cache: return ``past_key_values`` (default ``config.use_cache``).
            output_attentions / output_hidden_states / return_dict: as transformers.
            cache_position: (T,) slots of the new tokens in the key sequence.
        """
        cfg = self.config
        output_attentions = (
            cfg.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        explicit_cache = bool(use_cache)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.use_return_dict if return_dict is None else return_dict
        if self.gradient_checkpointing and self.training and use_cache:
            if explicit_cache:  # the config default is dropped silently
                logger.warning(
                    "use_cache=True is incompatible with gradient checkpointing; "
                    "setting use_cache=False"
                )
            use_cache = False

        input_ids, inputs_embeds, input_shape = self._flatten_inputs(input_ids, inputs_embeds)
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        dtype = self.wpe.weight.dtype if inputs_embeds is None else inputs_embeds.dtype
        layer_pasts, past_length, key_length, cache_position, static = self._read_cache(
            past_key_values, B, T, cache_position
        )
        hidden_states = self._embed(
            input_ids, inputs_embeds, position_ids, token_type_ids, cache_position, T
        )
        use_fused = (
            not output_attentions
            and head_mask is None
            and self.h[0].attn.attn_implementation != "eager"
        )  # eager needs a causal bias
        bias, is_causal, encoder_bias = self._attention_masks(
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            B,
            T,
            past_length,
            key_length,
            cache_position,
            static,
            dtype,
            use_fused,
        )
        hidden_states, presents, all_hidden, all_self, all_cross = self._run_blocks(
            hidden_states,
            layer_pasts,
            bias,
            is_causal,
            self._head_masks(head_mask),
            encoder_hidden_states,
            encoder_bias,
            cache_position,
            static,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(*input_shape, cfg.n_embd)  # (B, [N,] T, C)
        if all_hidden is not None:
            all_hidden = all_hidden + (hidden_states,)

        past_out: Any = None
        if use_cache:
            past_out = past_key_values if static else tuple(presents)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            past_key_values=past_out,
            hidden_states=all_hidden,
            attentions=all_self,
            cross_attentions=all_cross,
        )
        return out if return_dict else out.to_tuple()


def _check_labels(
    name: str, labels: torch.Tensor, num_classes: int, ignore_index: int = -100
) -> None:
    """Class ids in [0, num_classes) or ``ignore_index``, checked before the loss (torch's
    cross_entropy raises an IndexError on CPU and a device-side assert on CUDA)."""
    if not labels.numel():
        return
    ok = (labels == ignore_index) | ((labels >= 0) & (labels < num_classes))
    if torch.compiler.is_compiling():  # no data-dependent Python branch, as _check_ids
        torch._assert_async(ok.all(), f"{name} must be in [0, {num_classes}) or {ignore_index}")
    elif not bool(ok.all()):
        bad = int(labels[~ok].flatten()[0])
        raise ValueError(
            f"{name} contains {bad}: use ids in [0, {num_classes}) or {ignore_index} to ignore"
        )


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: labels are shifted inside, -100 is ignored, mean over the rest."""
    _check_labels("labels", labels, logits.shape[-1])
    shift_logits = logits[..., :-1, :].float()  # (..., T-1, V); float32 as transformers' loss
    shift_labels = labels[..., 1:].to(logits.device)
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
    )


class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with the language-modelling head (tied to ``wte`` unless ``tie_word_embeddings=False``).

    Args:
        config: a :class:`gpt2_core.GPT2Config`.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2LMHeadModel(tiny_config()).eval()
        >>> ids = torch.tensor([[5, 6, 7]])
        >>> out = model(ids, labels=ids)
        >>> out.logits.shape, out.loss.shape
        (torch.Size([1, 3, 257]), torch.Size([]))
        >>> model.generate(ids, max_new_tokens=4).shape
        torch.Size([1, 7])
    """

    _head = "lm"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def _lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM logits (..., V) = ``lm_head(hidden)``; when tied, ``lm_head.weight`` *is*
        ``wte.weight`` (one Parameter, see :meth:`tie_weights`)."""
        return self.lm_head(hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Sequence[LayerPast] | StaticCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> CausalLMOutputWithCrossAttentions | tuple:
        """Logits (B, T, V) and, with ``labels`` (B, T), the shifted LM loss (-100 ignored).

        ``logits_to_keep=k`` computes logits for the last k positions only (0 = all).
        Other arguments: see :meth:`GPT2Model.forward`.
        """
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            input_ids,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        hidden = base.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self._lm_logits(hidden[:, keep, :])
        loss = _lm_loss(logits, labels) if labels is not None else None
        out = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
            cross_attentions=base.cross_attentions,
        )
        return out if return_dict else out.to_tuple()


class GPT2DoubleHeadsModel(GenerationMixin, GPT2PreTrainedModel):
    """GPT-2 with an LM head and a multiple-choice head (RocStories / SWAG style).

    Inputs are (B, N, T): N choices per example; ``mc_token_ids`` (B, N) picks the token whose
    hidden state is classified (default: the last). The model's config has ``num_labels = 1``
    (as transformers), set on a copy: the caller's config is not changed.

    Args:
        config: a :class:`gpt2_core.GPT2Config` (``summary_*`` fields shape the choice head).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2DoubleHeadsModel(tiny_config()).eval()
        >>> ids = torch.randint(0, 257, (2, 3, 5))
        >>> out = model(ids, mc_token_ids=torch.full((2, 3), 4), mc_labels=torch.tensor([0, 2]))
        >>> out.logits.shape, out.mc_logits.shape
        (torch.Size([2, 3, 5, 257]), torch.Size([2, 3]))
    """

    _head = "double_heads"

    def __init__(self, config: GPT2Config) -> None:
        # transformers sets num_labels = 1 on the config it is given; we set it on a copy, so
        # the caller's config is left as it was
        if isinstance(config, GPT2Config) and config.num_labels != 1:
            config = config.copy(num_labels=1)
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.multiple_choice_head = GPT2SequenceSummary(config)
        self.post_init()

    def _lm_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """LM logits (..., V) = ``lm_head(hidden)``; when tied, ``lm_head.weight`` *is*
        ``wte.weight`` (one Parameter, see :meth:`tie_weights`)."""
        return self.lm_head(hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Sequence[LayerPast] | StaticCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mc_token_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mc_labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> GPT2DoubleHeadsModelOutput | tuple:
        """LM logits (B, N, T, V), choice logits (B, N); ``loss`` (LM) and ``mc_loss`` (CE over N)."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        hidden = base.last_hidden_state  # (B, N, T, C)
        lm_logits = self._lm_logits(hidden)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)  # (B, N)
        mc_loss = None
        if mc_labels is not None:
            _check_labels("mc_labels", mc_labels, mc_logits.size(-1))
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.size(-1)), mc_labels.view(-1))
        lm_loss = _lm_loss(lm_logits, labels) if labels is not None else None
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


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a linear classifier (``score``, no bias) on the last non-pad token.

    The pooled token is ``argmax(arange(T) * (input_ids != pad_token_id))``: the rightmost
    non-pad token, right for both left and right padding. Without ``config.pad_token_id`` the
    last position is used and batches > 1 raise (as transformers).

    Args:
        config: a :class:`gpt2_core.GPT2Config` (``num_labels``, ``pad_token_id``, ``problem_type``).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForSequenceClassification(tiny_config(num_labels=3, pad_token_id=0)).eval()
        >>> out = model(torch.tensor([[5, 6, 0], [7, 8, 9]]), labels=torch.tensor([1, 2]))
        >>> out.logits.shape, model.config.problem_type
        (torch.Size([2, 3]), 'single_label_classification')
    """

    _head = "sequence_classification"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, self.config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Sequence[LayerPast] | StaticCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> SequenceClassifierOutputWithPast | tuple:
        """Pooled logits (B, num_labels); loss by ``config.problem_type`` (inferred and stored)."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        logits = self.score(base.last_hidden_state)  # (B, T, num_labels)
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ValueError(
                "cannot pool a batch > 1 without config.pad_token_id (which marks padding)"
            )
        if pad is None:
            last = torch.full((B,), -1, device=logits.device, dtype=torch.long)
        elif input_ids is not None:
            non_pad = (input_ids != pad).to(logits.device, torch.int32)
            idx = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (idx * non_pad).argmax(-1)  # rightmost non-pad token; 0 if all are pads
        else:
            logger.warning(
                "%s cannot detect padding in inputs_embeds; pooling the last position",
                type(self).__name__,
            )
            last = torch.full((B,), -1, device=logits.device, dtype=torch.long)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)

        loss = None
        if labels is not None:
            loss = self._classification_loss(pooled, labels)
        out = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=base.past_key_values,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict else out.to_tuple()

    def _classification_loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        labels = labels.to(pooled.device)
        # inferred once and stored, as transformers
        cfg.problem_type = problem_type(cfg, labels.dtype in (torch.long, torch.int))
        if cfg.problem_type == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(pooled.squeeze(), labels.squeeze().to(pooled.dtype))
            return F.mse_loss(pooled, labels.to(pooled.dtype))
        if cfg.problem_type == "single_label_classification":
            _check_labels("labels", labels, self.config.num_labels)
            return F.cross_entropy(pooled.view(-1, self.config.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 with a per-token linear classifier (dropout ``classifier_dropout_prob`` first).

    Args:
        config: a :class:`gpt2_core.GPT2Config` (``num_labels``, ``classifier_dropout``).

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForTokenClassification(tiny_config(num_labels=4)).eval()
        >>> model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[0, 3, -100]])).logits.shape
        torch.Size([1, 3, 4])
    """

    _head = "token_classification"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: Sequence[LayerPast] | StaticCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.Tensor | None = None,
    ) -> TokenClassifierOutput | tuple:
        """Logits (B, T, num_labels); cross-entropy over tokens with ``labels`` (-100 ignored)."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
        )
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = None
        if labels is not None:
            _check_labels("labels", labels, self.config.num_labels)
            loss = F.cross_entropy(
                logits.view(-1, self.config.num_labels), labels.to(logits.device).view(-1)
            )
        out = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=base.hidden_states, attentions=base.attentions
        )
        return out if return_dict else out.to_tuple()


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 with a span head (``qa_outputs``: start and end logits per token).

    Args:
        config: a :class:`gpt2_core.GPT2Config`.

    Example:
        >>> from gpt2_core.init import tiny_config
        >>> model = GPT2ForQuestionAnswering(tiny_config()).eval()
        >>> out = model(torch.tensor([[1, 2, 3, 4]]), start_positions=torch.tensor([1]),
        ...             end_positions=torch.tensor([2]))
        >>> out.start_logits.shape
        torch.Size([1, 4])
    """

    _head = "question_answering"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        """Start/end logits (B, T); loss = mean of the two CEs, positions clamped to [0, T] (T ignored)."""
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        base = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.qa_outputs(base.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            # positions outside the sequence are clamped to T and ignored, as transformers
            ignored = start_logits.size(1)
            start_positions = start_positions.to(start_logits.device).clamp(0, ignored)
            end_positions = end_positions.to(end_logits.device).clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
            ) / 2
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=base.hidden_states,
            attentions=base.attentions,
        )
        return out if return_dict else out.to_tuple()


#: head name -> class, for conversion code that picks a model by head.
MODEL_CLASSES: dict[str, type[GPT2PreTrainedModel]] = {
    "base": GPT2Model,
    "lm": GPT2LMHeadModel,
    "double_heads": GPT2DoubleHeadsModel,
    "sequence_classification": GPT2ForSequenceClassification,
    "token_classification": GPT2ForTokenClassification,
    "question_answering": GPT2ForQuestionAnswering,
}
