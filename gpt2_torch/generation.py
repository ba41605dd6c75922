"""Text generation for the PyTorch GPT-2: greedy, sampling and beam search over a static KV cache.

Semantics are transformers 4.57.6's ``generate`` for a decoder-only model: the same logits
processors in the same order (repetition penalty, no-repeat n-grams, min new tokens, then the
temperature / top-k / top-p warpers when sampling), the same finished-sequence padding, the same
position ids for left-padded batches (``cumsum(mask) - 1``, pads filled with 1), and a port of its
vectorised beam search (scores, length penalty, early stopping), so outputs match token for token.

What differs is the engine: the prompt is run once into a *preallocated* cache of shape
(B, H, max_length, D) per layer, then each step writes one slot in place and attends over the
whole buffer with an additive mask. Shapes never change, so the single-token step can be
``torch.compile``d (``compile=True``) without recompiling per length. Only the last position's
logits are computed, with a transposed copy of the LM head that is ~2x faster on CPU for one
row.

Shape legend: B = batch rows (prompts x beams / return sequences), T0 = prompt length,
L = max_length (cache capacity), V = vocab size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpt2_core.generation_config import GenerationConfig
from gpt2_core.inputs import check_prompt_shape
from gpt2_core.outputs import ModelOutput
from gpt2_torch import _cpu_kernels
from gpt2_torch.modeling import (
    GPT2PreTrainedModel,
    StaticCache,
    _check_ids,
    encoder_attention_bias,
)

logger = logging.getLogger(__name__)

_compiled_step: Callable | None = None
#: longest prompt of a bf16 model that :meth:`_Decoder.prefill` feeds through the CPU kernel
#: token by token when the CPU has no native bf16 (each token costs one decoding step)
KERNEL_PROMPT_TOKENS = 64


# ----------------------------------------------------------------------------- the model step
def _lm_head_matrix(model: GPT2PreTrainedModel, compile: bool) -> torch.Tensor:
    """The LM head for :func:`_lm_logits`: the (V, C) weight itself where the CPU kernels take
    it (no copy), else a (C, V) matrix for ``h @ W``.

    On CPU a single-row ``h @ W.T`` through torch with W stored (V, C) runs at about half the
    memory bandwidth of ``h @ W`` with a contiguous (C, V) copy, so without the kernels
    generation pays one transpose up front.
    """
    w = model.lm_head.weight
    if not w.is_floating_point():  # int8 (gpt2_torch.quantize): the head module multiplies
        return w
    if w.device.type != "cpu":
        return w.t()
    if not compile and _cpu_kernels.core.active() and w.dtype == torch.float32:
        return w
    return w.t().contiguous()


def _lm_logits(model: GPT2PreTrainedModel, h: torch.Tensor, head_w: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) of the last hidden states (B, C); ``head_w`` from :func:`_lm_head_matrix`."""
    if not head_w.is_floating_point():
        return model.lm_head(h)
    if head_w is model.lm_head.weight:  # (V, C), the kernels' layout
        if _cpu_kernels.usable(h, head_w):
            return _cpu_kernels.linear_nk(h, head_w)  # the weight is read once for all rows
        return F.linear(h, head_w)
    return h @ head_w


def _forward_step(model: GPT2PreTrainedModel, head_w: torch.Tensor, cache: StaticCache,
                  input_ids: torch.Tensor, position_ids: torch.Tensor,
                  cache_position: torch.Tensor, bias: torch.Tensor,
                  encoder: tuple[torch.Tensor, torch.Tensor | None, list] | None = None,
                  ) -> torch.Tensor:
    """Run ``input_ids`` (B, T) through the model into ``cache``; logits (B, V) of the last position.

    ``bias`` is the additive self-attention mask (B, 1|H, T, L). ``encoder`` is
    (encoder_hidden_states, additive encoder mask, per-layer cross (k, v)) for cross-attention.
    No input checks: ``generate`` validated the prompt and produces only in-range ids.
    """
    tr = model.transformer
    h = tr.drop(tr.wte(input_ids) + tr.wpe(position_ids))  # (B, T, C)
    enc_states = enc_bias = None
    for i, (block, k, v) in enumerate(zip(tr.h, cache.keys, cache.values)):
        layer_past: tuple[torch.Tensor, ...] = (k, v)
        if encoder is not None:
            enc_states, enc_bias, cross_kv = encoder
            layer_past = (k, v, *cross_kv[i])  # the encoder's keys/values, computed once
        h = block(h, layer_past, bias, None, enc_states, enc_bias,
                  cache_position=cache_position, static_cache=True)[0]
    h = tr.ln_f(h[:, -1])  # (B, C): only the last position is needed
    return _lm_logits(model, h, head_w)  # (B, V)


def _decode_step(model: GPT2PreTrainedModel, head_w: torch.Tensor, cache: StaticCache,
                 input_ids: torch.Tensor, position_ids: torch.Tensor,
                 cache_position: torch.Tensor, pad_bias: torch.Tensor,
                 encoder: tuple | None = None) -> torch.Tensor:
    """One token per row: the mask is the padding bias plus "nothing after this slot"."""
    slots = torch.arange(pad_bias.shape[-1], device=pad_bias.device)
    bias = pad_bias.masked_fill(slots > cache_position, torch.finfo(pad_bias.dtype).min)
    # SDPA's CPU kernel is ~8x slower with a mask broadcast over heads than with a dense one
    B, H, L = bias.shape[0], model.config.n_head, bias.shape[-1]
    bias = bias.expand(B, H, 1, L).contiguous()  # (B, H, 1, L)
    return _forward_step(model, head_w, cache, input_ids, position_ids, cache_position, bias,
                         encoder)


def _get_step(compile: bool) -> Callable:
    global _compiled_step
    if not compile:
        return _decode_step
    if _compiled_step is None:
        # fixed shapes (the static cache), so dynamic=False gives one graph per (B, L)
        _compiled_step = torch.compile(_decode_step, dynamic=False)
    return _compiled_step


class _Decoder:
    """The prefill + step engine over one static cache (an explicit value, owned per call)."""

    def __init__(self, model: GPT2PreTrainedModel, batch: int, max_length: int,
                 prompt_mask: torch.Tensor, compile: bool,
                 encoder_hidden_states: torch.Tensor | None = None,
                 encoder_attention_mask: torch.Tensor | None = None) -> None:
        self.model = model
        device = model.lm_head.weight.device
        dtype = model.transformer.wpe.weight.dtype  # (not the head's: it may be int8)
        # the fused CPU step reads bf16 weights but keeps its cache (and sums) in fp32
        fused_bf16 = (dtype == torch.bfloat16 and not compile and device.type == "cpu"
                      and encoder_hidden_states is None and _cpu_kernels.core.active())
        cache_dtype = _cpu_kernels.CACHE_DTYPE if fused_bf16 else dtype
        self.cache = StaticCache.allocate(model.config, batch, max_length, cache_dtype, device)
        self.head_w = _lm_head_matrix(model, compile)
        T0 = prompt_mask.shape[1]
        slot_mask = torch.ones(batch, max_length, dtype=torch.long, device=device)
        slot_mask[:, :T0] = prompt_mask
        minimum = torch.finfo(dtype).min
        # (B, 1, 1, L): left pads of the prompt are never attended to (min / 2 keeps a fully
        # padded row finite and uniform, as the model's forward does)
        self.pad_bias = torch.zeros(batch, 1, 1, max_length, dtype=dtype, device=device)
        self.pad_bias.masked_fill_(slot_mask[:, None, None, :] == 0, minimum / 2)
        # positions: cumsum(mask) - 1 with pads at 1 (transformers 4.x); new tokens continue it
        pos = prompt_mask.long().cumsum(-1) - 1
        self.prompt_positions = pos.masked_fill(prompt_mask == 0, 1)
        self.next_position = prompt_mask.long().sum(-1, keepdim=True)  # (B, 1)
        self.prompt_mask = prompt_mask
        self.encoder_inputs = (encoder_hidden_states, encoder_attention_mask)
        self.length = 0
        self.step_fn = _get_step(compile)
        self.encoder = None
        if encoder_hidden_states is not None:
            enc = encoder_hidden_states.to(device, dtype)
            enc_bias = (None if encoder_attention_mask is None
                        else encoder_attention_bias(encoder_attention_mask.to(device), dtype))
            cross_kv = []
            for block in model.transformer.h:
                if not hasattr(block, "crossattention"):
                    raise ValueError("encoder_hidden_states need config.add_cross_attention=True")
                att = block.crossattention
                k, v = att.c_attn(enc).split(att.embed_dim, dim=2)
                cross_kv.append((att._split_heads(k), att._split_heads(v)))  # (B, H, S_enc, D)
            self.encoder = (enc, enc_bias, cross_kv)
        # the fused single-token kernel (CPU, fp32, eval); otherwise the torch modules
        self.fused: _cpu_kernels.DecodeStep | None = None
        if not compile and self.encoder is None and device.type == "cpu":
            reason = _cpu_kernels.DecodeStep.unsupported_reason(model, self.cache, batch)
            if reason is None:
                self.fused = _cpu_kernels.DecodeStep(model, self.cache, batch)
            else:
                logger.debug("generate: torch modules for decoding (%s)", reason)
        self.fused_prompt = fused_bf16 and not _cpu_kernels.core.native_bf16()
        if self.fused is None and cache_dtype != dtype:  # the modules want the model's dtype
            self.cache = StaticCache.allocate(model.config, batch, max_length, dtype, device)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T0) with the model's own forward, then copy its keys/values into
        the first T0 slots of the cache: the prompt pass keeps SDPA's causal kernel and attends
        over T0 keys only, not over the whole buffer. Logits (B, V) of the last position.

        A bf16 model on a CPU without native bf16 products instead feeds a prompt of up to
        :data:`KERNEL_PROMPT_TOKENS` tokens through the fused kernel one token at a time (the
        same causal computation; torch's emulated bf16 GEMM is ~16x slower than fp32 there)."""
        T0 = input_ids.shape[1]
        if self.fused is not None and self.fused_prompt and T0 <= KERNEL_PROMPT_TOKENS:
            for t in range(T0):
                logits = self.fused(input_ids[:, t], self.prompt_positions[:, t], self.pad_bias,
                                    t)
            self.length = T0
            return logits
        enc_states, enc_mask = self.encoder_inputs
        out = self.model.transformer(
            input_ids, attention_mask=self.prompt_mask, position_ids=self.prompt_positions,
            encoder_hidden_states=enc_states, encoder_attention_mask=enc_mask, use_cache=True,
            return_dict=True,
        )
        for k_buf, v_buf, present in zip(self.cache.keys, self.cache.values, out.past_key_values):
            k_buf[:, :, :T0] = present[0]  # (B, H, T0, D)
            v_buf[:, :, :T0] = present[1]
        self.length = T0
        return _lm_logits(self.model, out.last_hidden_state[:, -1], self.head_w)  # (B, V)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row (B,); logits (B, V) for the next one."""
        if self.fused is not None:
            logits = self.fused(tokens, self.next_position, self.pad_bias, self.length)
        else:
            cache_position = torch.tensor([self.length], device=tokens.device)
            logits = self.step_fn(self.model, self.head_w, self.cache, tokens[:, None],
                                  self.next_position, cache_position, self.pad_bias, self.encoder)
        self.next_position = self.next_position + 1
        self.length += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.next_position = self.next_position.index_select(0, index)
        self.pad_bias = self.pad_bias.index_select(0, index)
        if self.encoder is not None:
            enc, enc_bias, cross_kv = self.encoder
            pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
            self.encoder = (pick(enc), pick(enc_bias), [(pick(k), pick(v)) for k, v in cross_kv])


# ----------------------------------------------------------------------------- logits processors
def _repetition_penalty(ids: torch.Tensor, scores: torch.Tensor, penalty: float) -> torch.Tensor:
    # CTRL: tokens already present (prompt included) are divided (if > 0) or multiplied by penalty
    score = torch.gather(scores, 1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, ids, score)


def _banned_ngram_tokens(ids: torch.Tensor, n: int) -> list[list[int]]:
    """Tokens that would complete an n-gram already present in each row (fairseq's rule)."""
    cur_len = ids.shape[1]
    if cur_len + 1 < n:
        return [[] for _ in range(ids.shape[0])]
    banned = []
    for row in ids.tolist():
        seen: dict[tuple[int, ...], list[int]] = {}
        for gram in zip(*[row[i:] for i in range(n)]):
            seen.setdefault(tuple(gram[:-1]), []).append(gram[-1])
        banned.append(seen.get(tuple(row[cur_len + 1 - n:cur_len]), []))
    return banned


def _process(ids: torch.Tensor, scores: torch.Tensor, gen: GenerationConfig, new_len: int,
             min_new: int, eos: torch.Tensor | None, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """transformers' processor list, in its order; ``new_len`` tokens generated so far."""
    if gen.repetition_penalty != 1.0:
        scores = _repetition_penalty(ids, scores, gen.repetition_penalty)
    if gen.no_repeat_ngram_size > 0:
        scores = scores.clone()
        for i, banned in enumerate(_banned_ngram_tokens(ids, gen.no_repeat_ngram_size)):
            scores[i, banned] = -float("inf")
    if eos is not None and new_len < min_new:
        scores = scores.index_fill(1, eos, -float("inf"))
    if gen.do_sample:
        if gen.temperature != 1.0:
            scores = scores / gen.temperature
        if gen.top_k != 0:
            k = min(max(gen.top_k, min_tokens_to_keep), scores.shape[-1])
            kth = torch.topk(scores, k)[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if gen.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(scores, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - gen.top_p)
            remove[..., -min_tokens_to_keep:] = False
            remove = remove.scatter(1, sorted_idx, remove)
            scores = scores.masked_fill(remove, -float("inf"))
    return scores


# ----------------------------------------------------------------------------- entry point
def _as_ids(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer ids, got {arr.dtype}")
        t = torch.as_tensor(arr.astype(np.int64))
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, seq_len), got {tuple(t.shape)}")
    return t


def generate(
    model: GPT2PreTrainedModel,
    input_ids: Any = None,
    attention_mask: Any = None,
    generation_config: GenerationConfig | None = None,
    streamer: Any = None,
    *,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    return_dict_in_generate: bool = False,
    compile: bool = False,
    **kwargs: Any,
) -> torch.Tensor | GenerateOutput:
    """Continue ``input_ids``; returns prompt + new ids, like transformers' ``generate``.

    Args:
        model: a GPT2LMHeadModel (or GPT2DoubleHeadsModel).
        input_ids: (B, T0) prompt ids (tensor, array or nested lists); left-pad batched prompts
            of different lengths. ``None`` starts from ``bos_token_id``.
        attention_mask: (B, T0) 1 for real tokens, 0 for padding. Default: all ones, unless
            ``pad_token_id`` is set, differs from EOS and occurs in the prompt (as transformers).
        generation_config: settings; default ``model.generation_config``. Keyword arguments
            override it: max_new_tokens, max_length, min_new_tokens, min_length, do_sample,
            temperature, top_k, top_p, num_beams, length_penalty, early_stopping,
            num_return_sequences, repetition_penalty, no_repeat_ngram_size, eos_token_id (int or
            list), pad_token_id, bos_token_id, seed, use_cache. Unknown names raise TypeError.
        streamer: gets ``put(prompt)``, ``put(new_token)`` per step and ``end()`` (batch 1, no beams).
        encoder_hidden_states / encoder_attention_mask: (B, S_enc, C) / (B, S_enc) for models
            with ``add_cross_attention``; their keys/values are computed once.
        return_dict_in_generate: return a :class:`GenerateOutput` (``sequences`` and, for beam
            search, ``sequences_scores``) instead of the ids alone.
        compile: ``torch.compile`` the single-token step (pays a one-off compile per shape).

    Returns:
        LongTensor (B * num_return_sequences, T0 + generated). Rows that finish early (EOS) are
        filled with ``pad_token_id``; generation stops when every row has finished.

    Example:
        >>> out = model.generate(ids, max_new_tokens=20)                          # greedy
        >>> out = model.generate(ids, do_sample=True, top_k=40, top_p=0.9, seed=0)
        >>> out = model.generate(ids, num_beams=4, num_return_sequences=2, max_new_tokens=10)
    """
    with torch.inference_mode():
        sequences, scores = _generate(
            model, input_ids, attention_mask, generation_config, streamer,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, compile=compile, **kwargs)
    # inference tensors cannot be saved for backward: return ordinary (cheap) copies so that the
    # ids can feed a training step (e.g. fine-tuning on samples)
    sequences = sequences.clone()
    if return_dict_in_generate:
        return GenerateOutput(sequences=sequences,
                              sequences_scores=None if scores is None else scores.clone())
    return sequences


def _generate(
    model: GPT2PreTrainedModel,
    input_ids: Any = None,
    attention_mask: Any = None,
    generation_config: GenerationConfig | None = None,
    streamer: Any = None,
    *,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    compile: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The body of :func:`generate`, under inference mode."""
    if not hasattr(model, "lm_head"):
        raise TypeError(f"{type(model).__name__} has no LM head; generate needs GPT2LMHeadModel")
    if generation_config is None:
        generation_config = model.generation_config
    gen = GenerationConfig.resolve(generation_config, model.config, **kwargs)
    cfg = model.config
    gen = gen.for_model(cfg.vocab_size, has_prompt=input_ids is not None)
    device = model.lm_head.weight.device

    if input_ids is None:
        if gen.bos_token_id is None:
            raise ValueError("no input_ids and no bos_token_id to start from")
        input_ids = torch.tensor([[gen.bos_token_id]])
    ids = _as_ids(input_ids, "input_ids").to(device)
    check_prompt_shape(tuple(ids.shape))
    _check_ids("input_ids", ids, cfg.vocab_size)
    eos_list = gen.eos_token_ids
    if attention_mask is None:
        pad = gen.pad_token_id
        if pad is not None and pad not in eos_list and bool((ids == pad).any()):
            mask = (ids != pad).long()
        else:
            mask = torch.ones_like(ids)
    else:
        mask = _as_ids(attention_mask, "attention_mask").to(device).long()
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape "
                             f"{tuple(ids.shape)}")
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 and 1")
    if bool((mask[:, -1] == 0).any()):
        logger.warning("right padding detected in a decoder-only model: pad prompts on the left "
                       "(tokenizer padding_side='left') for correct batched generation")

    B, T0 = ids.shape
    new_tokens = gen.max_new_tokens_for(T0, cfg.n_positions)
    if new_tokens == 0:
        return ids, None
    max_length = T0 + new_tokens
    min_new = gen.min_new_tokens_for(T0)
    eos = torch.tensor(eos_list, device=device) if eos_list else None
    if streamer is not None and (B != 1 or gen.num_beams > 1 or gen.num_return_sequences > 1):
        raise ValueError("streaming supports one prompt, one sequence and no beam search")
    generator = None
    if gen.do_sample and gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)

    enc = None
    if encoder_hidden_states is not None:
        if encoder_hidden_states.shape[0] != B:
            raise ValueError(f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, "
                             f"input_ids {B}")
        enc = (encoder_hidden_states, encoder_attention_mask)
    # every row is repeated num_beams (beam search) or num_return_sequences (sampling) times
    copies = gen.num_beams if gen.num_beams > 1 else gen.num_return_sequences
    if copies > 1:
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
        if enc is not None:
            enc = tuple(None if t is None else t.repeat_interleave(copies, dim=0) for t in enc)
    decoder = _Decoder(model, ids.shape[0], max_length, mask, compile, *(enc or ()))
    if gen.num_beams > 1:
        sequences, scores = _beam_search(decoder, ids, gen, max_length, min_new, eos)
    else:
        sequences, scores = _sample(decoder, ids, gen, max_length, min_new, eos, generator,
                                    streamer), None
    return sequences, scores


class GenerateOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)``: sequences and beam scores (as transformers)."""

    FIELDS = ("sequences", "sequences_scores")


def _sample(decoder, ids, gen, max_length, min_new, eos, generator, streamer):
    """Greedy (argmax) or multinomial sampling, one token per row per step."""
    B, T0 = ids.shape
    pad = gen.effective_pad_token_id
    out = torch.full((B, max_length), pad, dtype=torch.long, device=ids.device)
    out[:, :T0] = ids
    unfinished = torch.ones(B, dtype=torch.long, device=ids.device)
    if streamer is not None:
        streamer.put(ids.cpu())
    logits = decoder.prefill(ids)
    cur = T0
    while True:
        scores = _process(out[:, :cur], logits.float(), gen, cur - T0, min_new, eos)
        if gen.do_sample:
            probs = F.softmax(scores, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            nxt = torch.argmax(scores, dim=-1)
        if eos is not None:  # finished rows keep emitting padding
            nxt = nxt * unfinished + pad * (1 - unfinished)
        out[:, cur] = nxt
        cur += 1
        if streamer is not None:
            streamer.put(nxt.cpu())
        if eos is not None:
            unfinished = unfinished & ~torch.isin(nxt, eos)
        if cur >= max_length or not bool(unfinished.any()):
            break
        logits = decoder.step(nxt)
    if streamer is not None:
        streamer.end()
    return out[:, :cur]


def _gather_beams(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, K, ...) gathered along the beam axis by idx (B, K')."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _beam_search(decoder, flat_ids, gen, max_length, min_new, eos):
    """transformers 4.57's vectorised beam search (``GenerationMixin._beam_search``), ported.

    ``flat_ids`` (batch * num_beams, T0) holds each prompt num_beams times. Returns the
    sequences (batch * num_return_sequences, T) and their scores.
    """
    nb = gen.num_beams
    batch, T0 = flat_ids.shape[0] // nb, flat_ids.shape[1]
    vocab = decoder.model.config.vocab_size
    length_penalty, early_stopping = gen.length_penalty, gen.early_stopping
    device = flat_ids.device
    n_eos = 0 if eos is None else eos.shape[0]
    # keep enough candidates that num_beams survive even if the best ones all end here
    beams_to_keep = max(2, 1 + n_eos) * nb
    top_num_beam_mask = torch.cat((torch.ones(nb, dtype=torch.bool),
                                   torch.zeros(beams_to_keep - nb, dtype=torch.bool))).to(device)

    # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`
    # transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`, with
    # pad_token_id already defaulted to the first EOS
    fill = (gen.effective_pad_token_id or gen.eos_token_ids[0]) if eos is not None else -1
    running_sequences = torch.full((batch, nb, max_length), fill, dtype=torch.long, device=device)
    running_sequences[:, :, :T0] = flat_ids.view(batch, nb, T0)
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((batch, nb), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9  # only the first beam expands at step one
    beam_scores = torch.full((batch, nb), -1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    heuristic_unsatisfied = torch.ones((batch, 1), dtype=torch.bool, device=device)
    hits_stop = torch.zeros((batch, nb), dtype=torch.bool, device=device)
    running_beam_indices = torch.full((batch, nb, max_length - T0), -1, dtype=torch.int32,
                                      device=device)
    beam_indices = running_beam_indices.clone()

    cur_len = T0
    logits = decoder.prefill(flat_ids)
    while True:
        flat_running = running_sequences[:, :, :cur_len].reshape(batch * nb, cur_len)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs = _process(flat_running, log_probs, gen, cur_len - T0, min_new, eos)
        log_probs = log_probs.view(batch, nb, vocab) + running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(batch, nb * vocab)

        # c. top-K continuations over all beams
        topk_log_probs, topk_indices = torch.topk(log_probs, k=beams_to_keep)
        topk_beam = topk_indices // vocab
        topk_running_beam_indices = _gather_beams(running_beam_indices, topk_beam)
        topk_running_sequences = _gather_beams(running_sequences, topk_beam)
        topk_ids = topk_indices % vocab
        topk_running_sequences[:, :, cur_len] = topk_ids
        batch_offset = torch.arange(batch, device=device).view(-1, 1) * nb
        topk_running_beam_indices[:, :, cur_len - T0] = (topk_beam + batch_offset).to(torch.int32)

        # d. which candidates stop here (max length or EOS)
        hits_stop = torch.full((batch, beams_to_keep), cur_len + 1 >= max_length, device=device)
        if eos is not None:
            hits_stop = hits_stop | torch.isin(topk_ids, eos)

        # e. the best num_beams unfinished candidates keep running
        topk_running_log_probs = topk_log_probs + hits_stop.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=nb)[1]
        running_sequences = _gather_beams(topk_running_sequences, next_topk)
        running_beam_scores = _gather_beams(topk_running_log_probs, next_topk)
        running_beam_indices = _gather_beams(topk_running_beam_indices, next_topk)

        # f. finished candidates among the top num_beams may enter the finished set
        just_finished = hits_stop & top_num_beam_mask[None, :]
        scores = topk_log_probs / ((cur_len + 1 - T0) ** length_penalty)
        full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        scores = scores + full.to(torch.float32) * -1.0e9
        scores = scores + (~heuristic_unsatisfied).to(torch.float32) * -1.0e9
        scores = scores + (~just_finished) * -1.0e9
        merged_sequences = torch.cat((sequences, topk_running_sequences), dim=1)
        merged_scores = torch.cat((beam_scores, scores), dim=1)
        merged_indices = torch.cat((beam_indices, topk_running_beam_indices), dim=1)
        merged_finished = torch.cat((is_sent_finished, just_finished), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        sequences = _gather_beams(merged_sequences, best)
        beam_scores = _gather_beams(merged_scores, best)
        beam_indices = _gather_beams(merged_indices, best)
        is_sent_finished = _gather_beams(merged_finished, best)

        # g. stopping: can a running beam still beat the worst finished one?
        cur_len += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - T0
        else:
            best_len = cur_len - T0
        best_running = running_beam_scores[:, :1] / (best_len ** length_penalty)
        worst_finished = torch.where(is_sent_finished,
                                     torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        heuristic_unsatisfied = heuristic_unsatisfied & torch.any(
            best_running > worst_finished, dim=-1, keepdim=True)
        improvement_possible = bool(heuristic_unsatisfied.any())
        open_beam = not (bool(is_sent_finished.all()) and early_stopping is True)
        valid_continuations = not bool(hits_stop.all())
        if not (improvement_possible and open_beam and valid_continuations):
            break
        # the cache follows the surviving beams, then the chosen tokens go in
        beam_idx = running_beam_indices[..., cur_len - 1 - T0].reshape(-1).long()
        decoder.reorder(beam_idx)
        logits = decoder.step(running_sequences[:, :, cur_len - 1].reshape(-1))

    n = gen.num_return_sequences
    sequences = sequences[:, :n].reshape(batch * n, max_length)
    scores = beam_scores[:, :n].reshape(batch * n)
    beam_indices = beam_indices[:, :n].reshape(batch * n, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    return sequences[:, :T0 + generated], scores
