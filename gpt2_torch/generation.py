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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from gpt2_core.generation import (
    BEAM_NEG,
    banned_ngram_tokens,
    beam_filler,
    prepare_inputs,
    prompt_position_ids,
)
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.outputs import ModelOutput
from gpt2_torch import _cpu_kernels

if TYPE_CHECKING:
    from gpt2_torch.modeling import GPT2PreTrainedModel

logger = logging.getLogger(__name__)

_compiled_step: Callable | None = None


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


def _decode_step(
    model: GPT2PreTrainedModel,
    head_w: torch.Tensor,
    cache: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache_position: torch.Tensor,
    slot_mask: torch.Tensor,
    encoder_inputs: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> torch.Tensor:
    """One token per row through the model's own forward into the static cache (written in
    place at ``cache_position``); logits (B, V) for the next token.

    ``slot_mask`` (B, L) is 0 at the prompt's left pads; the forward adds "nothing after this
    slot". ``encoder_inputs`` are (encoder_hidden_states, encoder_attention_mask).
    """
    enc_states, enc_mask = encoder_inputs
    out = model.transformer(
        input_ids,
        past_key_values=cache,
        attention_mask=slot_mask,
        position_ids=position_ids,
        cache_position=cache_position,
        encoder_hidden_states=enc_states,
        encoder_attention_mask=enc_mask,
        use_cache=True,
        return_dict=True,
    )
    return _lm_logits(model, out.last_hidden_state[:, -1], head_w)  # (B, V)


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

    def __init__(
        self,
        model: GPT2PreTrainedModel,
        batch: int,
        max_length: int,
        prompt_mask: torch.Tensor,
        compile: bool,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        device = model.lm_head.weight.device
        dtype = model.transformer.wpe.weight.dtype  # (not the head's: it may be int8)
        # the fused CPU step reads bf16 weights but keeps its cache (and sums) in fp32
        fused_bf16 = (
            dtype == torch.bfloat16
            and not compile
            and device.type == "cpu"
            and encoder_hidden_states is None
            and _cpu_kernels.core.active()
        )
        cache_dtype = _cpu_kernels.CACHE_DTYPE if fused_bf16 else dtype
        self.cache = _static_cache().allocate(model.config, batch, max_length, cache_dtype, device)
        self._compile = compile
        self._head_w: torch.Tensor | None = None
        T0 = prompt_mask.shape[1]
        # (B, L): the prompt's left pads are never attended to; every generated slot is
        self.slot_mask = torch.ones(batch, max_length, dtype=torch.long, device=device)
        self.slot_mask[:, :T0] = prompt_mask
        # the fused kernel's additive form of it, (B, 1, 1, L): min / 2 keeps a fully padded
        # row finite and uniform, as the model's forward does
        self.pad_bias = torch.zeros(batch, 1, 1, max_length, dtype=dtype, device=device)
        self.pad_bias.masked_fill_(
            self.slot_mask[:, None, None, :] == 0, torch.finfo(dtype).min / 2
        )
        self.prompt_positions = torch.as_tensor(
            prompt_position_ids(prompt_mask.cpu().numpy()), device=device
        )
        self.next_position = prompt_mask.long().sum(-1, keepdim=True)  # (B, 1)
        self.prompt_mask = prompt_mask
        self.encoder_inputs: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if encoder_hidden_states is not None:
            if not model.config.add_cross_attention:
                raise ValueError("encoder_hidden_states need config.add_cross_attention=True")
            self.encoder_inputs = (
                encoder_hidden_states.to(device, dtype),
                None if encoder_attention_mask is None else encoder_attention_mask.to(device),
            )
        self.length = 0
        self.step_fn = _get_step(compile)
        # the fused single-token kernel (CPU, fp32, eval); otherwise the torch modules
        self.fused: _cpu_kernels.DecodeStep | None = None
        if not compile and encoder_hidden_states is None and device.type == "cpu":
            reason = _cpu_kernels.DecodeStep.unsupported_reason(model, self.cache, batch)
            if reason is None:
                self.fused = _cpu_kernels.DecodeStep(model, self.cache, batch)
            else:
                logger.debug("generate: torch modules for decoding (%s)", reason)
        # the prompt through the kernel's prefill too, where torch's own products are slower
        # (int8, bf16: gpt2_core.cpu_kernels.kernel_prefill)
        self.fused_prompt = self.fused is not None and _cpu_kernels.core.kernel_prefill(
            _cpu_kernels.weight_dtype(model), batch * T0
        )
        if self.fused is None and cache_dtype != dtype:  # the modules want the model's dtype
            self.cache = _static_cache().allocate(model.config, batch, max_length, dtype, device)

    @property
    def head_w(self) -> torch.Tensor:
        """The LM head matrix of the torch path (:func:`_lm_head_matrix`), made on first use:
        for a bf16 model it is a transposed copy (77 MB for GPT-2 small, ~0.1 s here), which a
        generation whose prompt and steps all run on the kernel never needs."""
        if self._head_w is None:
            self._head_w = _lm_head_matrix(self.model, self._compile)
        return self._head_w

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T0) with the model's own forward, then copy its keys/values into
        the first T0 slots of the cache: the prompt pass keeps SDPA's causal kernel and attends
        over T0 keys only, not over the whole buffer. Logits (B, V) of the last position.

        A bf16 model on a CPU without native bf16 products, and an int8 model, instead run
        the prompt through the fused kernel's prefill (``fused_prompt``): the same causal
        computation in one call, each weight widened once for all B * T0 tokens (torch's
        emulated bf16 GEMM is ~16x slower than fp32 there; its int8 modules dequantize each
        weight per call)."""
        T0 = input_ids.shape[1]
        if self.fused_prompt:
            logits = self.fused.prefill(input_ids, self.prompt_positions, self.pad_bias)
            self.length = T0
            return logits
        enc_states, enc_mask = self.encoder_inputs
        out = self.model.transformer(
            input_ids,
            attention_mask=self.prompt_mask,
            position_ids=self.prompt_positions,
            encoder_hidden_states=enc_states,
            encoder_attention_mask=enc_mask,
            use_cache=True,
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
            logits = self.step_fn(
                self.model,
                self.head_w,
                self.cache,
                tokens[:, None],
                self.next_position,
                cache_position,
                self.slot_mask,
                self.encoder_inputs,
            )
        self.next_position = self.next_position + 1
        self.length += 1
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        self.cache.reorder(index)
        self.next_position = self.next_position.index_select(0, index)
        self.pad_bias = self.pad_bias.index_select(0, index)
        self.slot_mask = self.slot_mask.index_select(0, index)
        self.encoder_inputs = tuple(
            None if t is None else t.index_select(0, index) for t in self.encoder_inputs
        )


# ----------------------------------------------------------------------------- logits processors
def process_logits(
    input_ids: torch.Tensor,
    scores: torch.Tensor,
    gen: GenerationConfig,
    new_tokens: int,
    min_new_tokens: int,
) -> torch.Tensor:
    """transformers' logits processors in its order (repetition penalty, no-repeat n-grams,
    EOS banned before ``min_new_tokens``); ``input_ids`` (R, T) every token so far, ``scores``
    (R, V). The numpy reference is :func:`gpt2_core.generation.process_logits`."""
    if gen.repetition_penalty != 1.0:  # CTRL: divide positive, multiply negative scores
        score = torch.gather(scores, 1, input_ids)
        p = gen.repetition_penalty
        scores = scores.scatter(1, input_ids, torch.where(score < 0, score * p, score / p))
    if gen.no_repeat_ngram_size > 0:
        scores = scores.clone()
        banned = banned_ngram_tokens(input_ids.cpu().numpy(), gen.no_repeat_ngram_size)
        for i, row in enumerate(banned):
            scores[i, row] = -float("inf")
    if gen.eos_token_ids and new_tokens < min_new_tokens:
        scores = scores.clone()
        scores[:, gen.eos_token_ids] = -float("inf")
    return scores


def warp_logits(
    scores: torch.Tensor, gen: GenerationConfig, min_tokens_to_keep: int = 1
) -> torch.Tensor:
    """The sampling warpers in transformers' order: temperature, top-k, top-p (R, V)."""
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
def _static_cache() -> type:
    """:class:`gpt2_torch.modeling.StaticCache` (imported late: modeling imports this module)."""
    from gpt2_torch.modeling import StaticCache

    return StaticCache


class GenerationMixin:
    """Adds ``generate`` to a PyTorch GPT-2 model with an LM head (as in gpt2_tf and gpt2_flax)."""

    def generate(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        generation_config: GenerationConfig | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor | GenerateOutput:
        """Generate continuations; returns prompt + new ids (B * num_return_sequences, T + new).

        A method form of :func:`generate`, which documents every option (``max_new_tokens``,
        ``do_sample``, ``num_beams``, ``compile``, ``return_dict_in_generate`` ...).

        Example:
            >>> model.generate([[464, 3290]], max_new_tokens=5)          # doctest: +SKIP
            >>> model.generate(ids, attention_mask=mask, num_beams=4, num_return_sequences=2,
            ...                max_new_tokens=20, no_repeat_ngram_size=3)  # doctest: +SKIP
        """
        return generate(
            self,
            input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
            streamer=streamer,
            **kwargs,
        )


def _numpy(x: Any) -> Any:
    """A torch tensor as numpy for :func:`gpt2_core.generation.prepare_inputs`; else ``x``."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


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
            model,
            input_ids,
            attention_mask,
            generation_config,
            streamer,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            compile=compile,
            **kwargs,
        )
    # inference tensors cannot be saved for backward: return ordinary (cheap) copies so that the
    # ids can feed a training step (e.g. fine-tuning on samples)
    sequences = sequences.clone()
    if return_dict_in_generate:
        return GenerateOutput(
            sequences=sequences, sequences_scores=None if scores is None else scores.clone()
        )
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

    ids, mask = prepare_inputs(_numpy(input_ids), _numpy(attention_mask), gen, cfg.vocab_size)
    ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    B, T0 = ids.shape
    new_tokens = gen.max_new_tokens_for(T0, cfg.n_positions)
    if new_tokens == 0:
        return ids, None
    max_length = T0 + new_tokens
    min_new = gen.min_new_tokens_for(T0)
    if streamer is not None and (B != 1 or gen.num_beams > 1 or gen.num_return_sequences > 1):
        raise ValueError("streaming supports one prompt, one sequence and no beam search")
    generator = None
    if gen.do_sample and gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)

    enc = None
    if encoder_hidden_states is not None:
        if encoder_hidden_states.shape[0] != B:
            raise ValueError(
                f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, input_ids {B}"
            )
        enc = (encoder_hidden_states, encoder_attention_mask)
    # every row is repeated num_beams (beam search) or num_return_sequences (sampling) times
    copies = gen.num_beams if gen.num_beams > 1 else gen.num_return_sequences
    if copies > 1:
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)
        if enc is not None:
            enc = tuple(None if t is None else t.repeat_interleave(copies, dim=0) for t in enc)
    decoder = _Decoder(model, ids.shape[0], max_length, mask, compile, *(enc or ()))
    if gen.num_beams > 1:
        sequences, scores = _beam_search(decoder, ids, gen, max_length, min_new)
    else:
        sequences, scores = (
            _sample(decoder, ids, gen, max_length, min_new, generator, streamer),
            None,
        )
    return sequences, scores


class GenerateOutput(ModelOutput):
    """``generate(..., return_dict_in_generate=True)``: sequences and beam scores (as transformers)."""

    FIELDS = ("sequences", "sequences_scores")


def _sample(decoder, ids, gen, max_length, min_new, generator, streamer):
    """Greedy (argmax) or multinomial sampling, one token per row per step."""
    B, T0 = ids.shape
    pad = gen.effective_pad_token_id
    eos = torch.tensor(gen.eos_token_ids, device=ids.device) if gen.eos_token_ids else None
    out = torch.full((B, max_length), pad, dtype=torch.long, device=ids.device)
    out[:, :T0] = ids
    unfinished = torch.ones(B, dtype=torch.long, device=ids.device)
    if streamer is not None:
        streamer.put(ids.cpu())
    logits = decoder.prefill(ids)
    cur = T0
    while True:
        scores = process_logits(out[:, :cur], logits.float(), gen, cur - T0, min_new)
        if gen.do_sample:
            probs = F.softmax(warp_logits(scores, gen), dim=-1)
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


# ----------------------------------------------------------------------------- beam search
def _gather_beams(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t (B, K, ...) gathered along the beam axis by idx (B, K')."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def init_beam_state(
    input_ids: torch.Tensor, num_beams: int, max_length: int, filler: int
) -> dict[str, torch.Tensor]:
    """The state before the first step; ``input_ids`` (B * K, T0) holds each prompt K times.
    transformers' names; the numpy reference is :func:`gpt2_core.generation.init_beam_state`."""
    R, T0 = input_ids.shape
    B, K, device = R // num_beams, num_beams, input_ids.device
    running_sequences = torch.full((B, K, max_length), filler, dtype=torch.long, device=device)
    running_sequences[:, :, :T0] = input_ids.view(B, K, T0)
    running_beam_scores = torch.zeros((B, K), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = BEAM_NEG  # only the first beam expands at step one
    running_beam_indices = torch.full((B, K, max_length - T0), -1, dtype=torch.long, device=device)
    return {
        "running_sequences": running_sequences,
        "running_beam_scores": running_beam_scores,
        "running_beam_indices": running_beam_indices,
        "sequences": running_sequences.clone(),
        "beam_scores": torch.full((B, K), BEAM_NEG, dtype=torch.float, device=device),
        "beam_indices": running_beam_indices.clone(),
        "is_sent_finished": torch.zeros((B, K), dtype=torch.bool, device=device),
        "is_early_stop_heuristic_unsatisfied": torch.ones((B, 1), dtype=torch.bool, device=device),
        "next_token_hits_stopping_criteria": torch.zeros(
            (B, 2 * K), dtype=torch.bool, device=device
        ),
    }


def beam_step(
    state: dict[str, torch.Tensor],
    log_probs: torch.Tensor,
    cur_len: int,
    prompt_len: int,
    max_length: int,
    gen: GenerationConfig,
) -> dict[str, torch.Tensor]:
    """One step of transformers 4.57's vectorised beam search (``GenerationMixin._beam_search``).

    ``log_probs`` (B * K, V) are the processed log-probabilities of the running beams' next
    token; ``cur_len`` tokens are in each running sequence. A new state; the numpy reference
    is :func:`gpt2_core.generation.beam_step`.
    """
    B, K = state["running_beam_scores"].shape
    V = log_probs.shape[-1]
    device = log_probs.device
    eos = gen.eos_token_ids
    lp, es = gen.length_penalty, gen.early_stopping
    beams_to_keep = max(2, 1 + len(eos)) * K  # enough that K survive if the best ones all end
    top_num_beam_mask = torch.arange(beams_to_keep, device=device) < K

    # top-k continuations over all beams
    scores = log_probs.view(B, K, V) + state["running_beam_scores"][:, :, None]
    topk_log_probs, topk_indices = torch.topk(scores.reshape(B, K * V), k=beams_to_keep)
    topk_beam = topk_indices // V
    topk_ids = topk_indices % V
    topk_running_sequences = _gather_beams(state["running_sequences"], topk_beam)
    topk_running_sequences[:, :, cur_len] = topk_ids
    topk_running_beam_indices = _gather_beams(state["running_beam_indices"], topk_beam)
    batch_offset = torch.arange(B, device=device).view(-1, 1) * K
    topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beam + batch_offset

    # which candidates stop here (max length or EOS)
    hits = torch.full((B, beams_to_keep), cur_len + 1 >= max_length, device=device)
    if eos:
        hits = hits | torch.isin(topk_ids, torch.tensor(eos, device=device))
    # the best K unfinished candidates keep running
    topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * BEAM_NEG
    nxt = torch.topk(topk_running_log_probs, k=K)[1]
    new = dict(state)
    new["running_sequences"] = _gather_beams(topk_running_sequences, nxt)
    new["running_beam_scores"] = _gather_beams(topk_running_log_probs, nxt)
    new["running_beam_indices"] = _gather_beams(topk_running_beam_indices, nxt)

    # finished candidates among the top K may enter the finished set
    just_finished = hits & top_num_beam_mask[None, :]
    fin = topk_log_probs / ((cur_len + 1 - prompt_len) ** lp)
    full = torch.all(state["is_sent_finished"], dim=-1, keepdim=True) & (es is True)
    fin = fin + full.to(torch.float32) * BEAM_NEG
    fin = fin + (~state["is_early_stop_heuristic_unsatisfied"]).to(torch.float32) * BEAM_NEG
    fin = fin + (~just_finished).to(torch.float32) * BEAM_NEG
    merged_scores = torch.cat((state["beam_scores"], fin), dim=1)
    best = torch.topk(merged_scores, k=K)[1]
    new["sequences"] = _gather_beams(
        torch.cat((state["sequences"], topk_running_sequences), dim=1), best
    )
    new["beam_scores"] = _gather_beams(merged_scores, best)
    new["beam_indices"] = _gather_beams(
        torch.cat((state["beam_indices"], topk_running_beam_indices), dim=1), best
    )
    new["is_sent_finished"] = _gather_beams(
        torch.cat((state["is_sent_finished"], just_finished), dim=1), best
    )

    # can a running beam still beat the worst finished one?
    if es == "never" and lp > 0.0:
        best_len = max_length - prompt_len
    else:
        best_len = cur_len + 1 - prompt_len
    best_running = new["running_beam_scores"][:, :1] / (best_len**lp)
    worst_finished = torch.where(
        new["is_sent_finished"], torch.min(new["beam_scores"], dim=1, keepdim=True)[0], BEAM_NEG
    )
    new["is_early_stop_heuristic_unsatisfied"] = state[
        "is_early_stop_heuristic_unsatisfied"
    ] & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
    new["next_token_hits_stopping_criteria"] = hits
    return new


def beam_search_finished(state: dict[str, torch.Tensor], gen: GenerationConfig) -> bool:
    """transformers' ``_beam_search_has_unfinished_sequences``, negated."""
    improvement_possible = bool(state["is_early_stop_heuristic_unsatisfied"].any())
    open_beam = not (bool(state["is_sent_finished"].all()) and gen.early_stopping is True)
    valid_continuations = not bool(state["next_token_hits_stopping_criteria"].all())
    return not (improvement_possible and open_beam and valid_continuations)


def finalize_beams(
    state: dict[str, torch.Tensor], num_return_sequences: int, prompt_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``num_return_sequences`` hypotheses per prompt, cut after the longest one:
    sequences (B * n, T0 + new) and their scores (B * n,)."""
    n = num_return_sequences
    B, K, L = state["sequences"].shape
    sequences = state["sequences"][:, :n].reshape(B * n, L)
    scores = state["beam_scores"][:, :n].reshape(B * n)
    generated = int((state["beam_indices"][:, :n] >= 0).sum(dim=-1).max())
    return sequences[:, : prompt_len + generated], scores


def _beam_search(decoder, flat_ids, gen, max_length, min_new):
    """transformers 4.57's beam search: ``flat_ids`` (batch * num_beams, T0) holds each prompt
    num_beams times. Returns the sequences (batch * num_return_sequences, T) and their scores."""
    T0 = flat_ids.shape[1]
    state = init_beam_state(flat_ids, gen.num_beams, max_length, beam_filler(gen))
    cur_len = T0
    logits = decoder.prefill(flat_ids)
    while True:
        running = state["running_sequences"][:, :, :cur_len].reshape(-1, cur_len)
        log_probs = process_logits(
            running, F.log_softmax(logits.float(), dim=-1), gen, cur_len - T0, min_new
        )
        state = beam_step(state, log_probs, cur_len, T0, max_length, gen)
        cur_len += 1
        if beam_search_finished(state, gen):
            break
        # the cache follows the surviving beams, then the chosen tokens go in
        decoder.reorder(state["running_beam_indices"][..., cur_len - 1 - T0].reshape(-1))
        logits = decoder.step(state["running_sequences"][:, :, cur_len - 1].reshape(-1))
    return finalize_beams(state, gen.num_return_sequences, T0)
