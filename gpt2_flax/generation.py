"""Compiled generation for the Flax GPT-2: one ``jit``-compiled ``lax.while_loop``.

``model.generate(...)`` takes the same arguments and :class:`gpt2_core.GenerationConfig` as the
other backends (greedy, sampling with temperature / top-k / top-p, beam search with
transformers 4.57 semantics, repetition penalty, no-repeat n-grams, min/max new tokens, several
EOS ids, padding, streamers) and runs the whole decode as a single XLA program:

* the prompt is left-padded to a **bucket** length (a power of two >= 16) and the static KV
  cache (:class:`gpt2_flax.modeling.StaticCache`) gets a bucketed length too, so prompts of 17..32
  tokens share one compiled program (``max_new_tokens`` and ``min_new_tokens`` are traced
  values, not compile-time constants);
* extra left padding changes nothing: keys at pad slots are masked and position ids come from
  the attention mask (``cumsum - 1``, pads set to 1 as transformers 4.x);
* streaming uses an ordered ``io_callback`` from inside the loop, so tokens reach the streamer
  while the program runs.

The compiled function is ``jax.jit``'s cache keyed by (graphdef, options, bucket shapes);
:func:`trace_count` reports how many times it was traced (tests use it to prove that two prompt
lengths in one bucket compile once).

Shape legend: B batch, K candidates kept per step, R rows (B, or B * num_beams), Tu user prompt
length, Tb bucketed prompt length, M cache length, V vocab.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from gpt2_core.generation import (
    BEAM_NEG,
    beam_filler,
    prepare_inputs,
    prompt_position_ids,
    sampling_seed,
)
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.inputs import check_prompt_shape
from gpt2_flax import _cpu_kernels

logger = logging.getLogger(__name__)

_TRACES: collections.Counter = collections.Counter()
_STREAMERS: dict[int, Any] = {}
_STREAM_IDS = itertools.count(1)
MIN_BUCKET = 16


def trace_count(mode: str | None = None) -> int:
    """How many times the generation program was traced (all modes, or one of
    ``"greedy"``, ``"sample"``, ``"beam"``)."""
    return sum(_TRACES.values()) if mode is None else _TRACES[mode]


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The next power of two >= max(n, minimum): the compiled shapes are drawn from these."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class _Options:
    """Everything that shapes the compiled program (a static, hashable jit argument)."""

    mode: str  # "greedy" | "sample" | "beam"
    cache_len: int
    vocab_size: int
    n_eos: int = 0
    use_temperature: bool = False
    top_k: int = 0  # static: lax.top_k needs a static k
    use_top_p: bool = False
    use_repetition_penalty: bool = False
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    early_stopping: bool | str = False
    positive_length_penalty: bool = True  # picks the "never" early-stop heuristic
    stream: bool = False
    cpu_kernel: bool = False  # decode steps on the fused C step (gpt2_flax._cpu_kernels)

    @classmethod
    def of(cls, gen: GenerationConfig, vocab_size: int, cache_len: int, stream: bool) -> _Options:
        """The static setting of one call of ``generate`` (``cpu_kernel`` left to the caller)."""
        mode = "beam" if gen.num_beams > 1 else ("sample" if gen.do_sample else "greedy")
        sample = mode == "sample"
        return cls(
            mode=mode,
            cache_len=cache_len,
            vocab_size=vocab_size,
            n_eos=len(gen.eos_token_ids),
            use_temperature=sample and gen.temperature != 1.0,
            top_k=int(gen.top_k) if sample else 0,
            use_top_p=sample and gen.top_p < 1.0,
            use_repetition_penalty=gen.repetition_penalty != 1.0,
            no_repeat_ngram_size=int(gen.no_repeat_ngram_size),
            num_beams=gen.num_beams,
            num_return_sequences=gen.num_return_sequences,
            early_stopping=gen.early_stopping if mode == "beam" else False,
            positive_length_penalty=gen.length_penalty > 0,
            stream=stream,
        )

    @property
    def rows(self) -> int:
        """Rows the loop decodes per prompt: beams, or the samples of each prompt."""
        return self.num_return_sequences if self.mode == "sample" else self.num_beams


def _params(gen: GenerationConfig, eos: tuple[int, ...], pad: int) -> dict[str, jax.Array]:
    """The numeric settings passed as traced values: changing them does not recompile."""
    return dict(
        eos=jnp.asarray(eos if eos else (-1,), jnp.int32),
        pad=jnp.int32(pad),
        fill=jnp.int32(beam_filler(gen)),
        temperature=jnp.float32(gen.temperature),
        top_p=jnp.float32(gen.top_p),
        repetition_penalty=jnp.float32(gen.repetition_penalty),
        length_penalty=jnp.float32(gen.length_penalty),
    )


# ---------------------------------------------------------------------------- logits processors
def process_logits(
    scores: jax.Array,
    buf: jax.Array,
    valid: jax.Array,
    cur: jax.Array,
    step: jax.Array,
    min_new: jax.Array,
    opts: _Options,
    params: dict,
) -> jax.Array:
    """transformers' processors, in its order: repetition penalty, no-repeat n-gram, min length
    (the numpy reference is :func:`gpt2_core.generation.process_logits`).

    ``scores`` (R, V) float32; ``buf`` (R, M) tokens; ``valid`` (R, M) marks the slots that are
    part of the sequence (the user's prompt, pads included as transformers does, and the
    generated tokens; not our bucket padding); ``cur`` = filled slots.
    """
    R, V = scores.shape
    rows = jnp.arange(R)[:, None]
    if opts.use_repetition_penalty:
        p = params["repetition_penalty"]
        seen = jnp.zeros((R, V), bool).at[rows, jnp.where(valid, buf, V)].set(True, mode="drop")
        scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
    n = opts.no_repeat_ngram_size
    if n > 0:
        M = buf.shape[1]
        W = M - n + 1  # candidate n-gram starts
        if W > 0:
            # the last n-1 tokens (slots cur-n+1 .. cur-1) must all be real
            starts = cur - (n - 1)
            last = jax.lax.dynamic_slice_in_dim(buf, jnp.maximum(starts, 0), n - 1, axis=1)
            last_ok = jax.lax.dynamic_slice_in_dim(valid, jnp.maximum(starts, 0), n - 1, axis=1)
            match = jnp.all(last_ok, axis=1, keepdims=True) & (starts >= 0)  # (R, 1)
            for k in range(n - 1):  # n-gram at s: buf[s : s+n-1] == last, token buf[s+n-1] banned
                match = match & (buf[:, k : k + W] == last[:, k : k + 1]) & valid[:, k : k + W]
            match = match & valid[:, n - 1 :] & (jnp.arange(W)[None, :] + n - 1 < cur)
            banned_tok = jnp.where(match, buf[:, n - 1 :], V)
            banned = jnp.zeros((R, V), bool).at[rows, banned_tok].set(True, mode="drop")
            scores = jnp.where(banned, -jnp.inf, scores)
    if opts.n_eos:
        is_eos = jnp.zeros((V,), bool).at[params["eos"]].set(True)
        scores = jnp.where(is_eos[None, :] & (step < min_new), -jnp.inf, scores)
    return scores


def warp_logits(scores: jax.Array, opts: _Options, params: dict) -> jax.Array:
    """Sampling warpers in transformers' order: temperature, top-k, top-p."""
    if opts.use_temperature:
        scores = scores / params["temperature"]
    V = scores.shape[-1]
    if opts.top_k > 0:
        kth = jax.lax.top_k(scores, min(opts.top_k, V))[0][:, -1:]
        scores = jnp.where(scores < kth, -jnp.inf, scores)
    if opts.use_top_p:
        order = jnp.argsort(scores, axis=-1)  # ascending, as transformers
        sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
        remove_sorted = cum <= (1 - params["top_p"])
        remove_sorted = remove_sorted.at[:, -1:].set(False)  # keep at least one token
        rows = jnp.arange(scores.shape[0])[:, None]
        remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
        scores = jnp.where(remove, -jnp.inf, scores)
    return scores


# ---------------------------------------------------------------------------- streaming
def _stream_put(stream_id, tokens) -> None:
    streamer = _STREAMERS.get(int(stream_id))
    if streamer is not None:
        streamer.put(np.asarray(tokens))


# ---------------------------------------------------------------------------- the program
def _forward(model, ids, cache, positions, mask):
    """The transformer over ``ids`` (R, t) into the static cache; float32 logits (R, V) of the
    last position only (any model with ``transformer`` and ``_lm_logits``: the LM and double heads)."""
    out = model.transformer(
        ids,
        past_key_values=cache,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        return_dict=True,
        deterministic=True,
    )
    logits = model._lm_logits(out.last_hidden_state[:, -1, :])
    return logits.astype(jnp.float32), out.past_key_values


def _generate_program(
    graphdef,
    opts: _Options,
    state,
    ids,
    mask,
    prompt_pos,
    offset,
    max_new,
    min_new,
    key,
    stream_id,
    params,
):
    """ids/mask (B, Tb) left-padded; ``prompt_pos`` their position ids
    (:func:`gpt2_core.generation.prompt_position_ids`); ``offset`` = Tb - Tu (first slot of the
    user's prompt)."""
    _TRACES[opts.mode] += 1
    model = nnx.merge(graphdef, state)
    config = model.config
    B, Tb = ids.shape
    M = opts.cache_len
    nb = opts.num_beams
    R = B * nb
    pad, eos = params["pad"], params["eos"]

    full_mask = jnp.concatenate([mask, jnp.ones((B, M - Tb), mask.dtype)], axis=1)  # (B, M)
    next_pos = jnp.sum(mask, axis=1).astype(jnp.int32)  # (B,) position of the first new token

    from gpt2_flax.modeling import StaticCache  # modeling imports this module

    cache = StaticCache.allocate(
        config, B, M, jnp.float32 if opts.cpu_kernel else model.transformer.dtype
    )
    if opts.cpu_kernel and _cpu_kernels.kernel_prefill(model, B * Tb):  # int8 / bf16
        prefill = _cpu_kernels.prefill_forward(model, B, M)
        logits, cache = prefill(ids, cache, prompt_pos, full_mask)  # (B, V)
    else:
        logits, cache = _forward(model, ids, cache, prompt_pos, full_mask)  # (B, V)

    buf = jnp.full((B, M), pad, jnp.int32).at[:, :Tb].set(ids.astype(jnp.int32))
    slots = jnp.arange(M)[None, :]

    def forward(tokens, cache, pos, row_mask):
        return _forward(model, tokens[:, None], cache, pos[:, None], row_mask)

    if opts.cpu_kernel:  # the same step as one XLA FFI custom call (CPU only)
        forward = _cpu_kernels.decode_forward(model, R, M)

    if opts.mode != "beam":

        def select(logits, step, buf, unfinished):
            valid = (slots >= offset) & (slots < Tb + step)
            scores = process_logits(logits, buf, valid, Tb + step, step, min_new, opts, params)
            if opts.mode == "sample":
                scores = warp_logits(scores, opts, params)
                tok = jax.random.categorical(jax.random.fold_in(key, step), scores)
            else:
                tok = jnp.argmax(scores, axis=-1)
            tok = tok.astype(jnp.int32)
            if opts.n_eos:
                tok = jnp.where(unfinished, tok, pad)  # finished rows get pad
                unfinished = unfinished & ~jnp.isin(tok, eos)
            buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, Tb + step))
            if opts.stream:
                io_callback(_stream_put, None, stream_id, tok, ordered=True)
            return tok, buf, unfinished

        tok, buf, unfinished = select(logits, jnp.int32(0), buf, jnp.ones((B,), bool))

        def cond(c):
            step, _, unfinished, *_ = c
            return (step < max_new) & jnp.any(unfinished)

        def body(c):
            step, buf, unfinished, tok, cache, pos = c
            logits, cache = forward(tok, cache, pos, full_mask)
            tok, buf, unfinished = select(logits, step, buf, unfinished)
            return step + 1, buf, unfinished, tok, cache, pos + 1

        c = (jnp.int32(1), buf, unfinished, tok, cache, next_pos)
        c = jax.lax.while_loop(cond, body, c)
        return c[1], c[0]

    # ---- beam search (transformers 4.57 `_beam_search`, vectorised, with its state names)
    rows_of = jnp.repeat(jnp.arange(B), nb)  # (R,) beam row -> prompt row
    cache = cache.reorder(rows_of)
    logits = logits[rows_of]
    beam_mask = full_mask[rows_of]
    # beam buffers hold the filler (gpt2_core.generation.beam_filler) after the prompt
    buf = jnp.where(slots >= Tb, params["fill"], buf)
    running_sequences = jnp.broadcast_to(buf[:, None, :], (B, nb, M))
    running_beam_indices = jnp.full((B, nb, M - Tb), -1, jnp.int32)
    n_cand = max(2, 1 + opts.n_eos) * nb
    init = dict(
        running_sequences=running_sequences,
        running_beam_scores=jnp.zeros((B, nb), jnp.float32).at[:, 1:].set(BEAM_NEG),
        running_beam_indices=running_beam_indices,
        sequences=running_sequences,
        beam_scores=jnp.full((B, nb), BEAM_NEG, jnp.float32),
        beam_indices=running_beam_indices,
        is_sent_finished=jnp.zeros((B, nb), bool),
        is_early_stop_heuristic_unsatisfied=jnp.ones((B, 1), bool),
        next_token_hits_stopping_criteria=jnp.zeros((B, n_cand), bool),
    )

    def beam_select(logits, step, c):
        valid = (slots >= offset) & (slots < Tb + step)
        scores = jax.nn.log_softmax(logits, axis=-1)
        scores = process_logits(
            scores,
            c["running_sequences"].reshape(R, M),
            valid,
            Tb + step,
            step,
            min_new,
            opts,
            params,
        )
        new = beam_step(c, scores, step, Tb, max_new, opts, params)
        src = new["running_beam_indices"][:, :, step].reshape(R)
        tok = new["running_sequences"][:, :, Tb + step].reshape(R)
        return new, src, tok

    def keep_going(c, step):
        open_beam = ~(jnp.all(c["is_sent_finished"]) & (opts.early_stopping is True))
        return (
            (step < max_new)
            & jnp.any(c["is_early_stop_heuristic_unsatisfied"])
            & open_beam
            & ~jnp.all(c["next_token_hits_stopping_criteria"])
        )

    c, src, tok = beam_select(logits, jnp.int32(0), init)
    cache = cache.reorder(src)
    pos = next_pos[rows_of]

    def cond(carry):
        step, c, *_ = carry
        return keep_going(c, step)

    def body(carry):
        step, c, tok, cache, pos = carry
        logits, cache = forward(tok, cache, pos, beam_mask)
        c, src, tok = beam_select(logits, step, c)
        return step + 1, c, tok, cache.reorder(src), pos + 1

    _, c, *_ = jax.lax.while_loop(cond, body, (jnp.int32(1), c, tok, cache, pos))
    nr = opts.num_return_sequences
    seqs = c["sequences"][:, :nr].reshape(B * nr, M)
    generated = jnp.sum(c["beam_indices"][:, :nr] >= 0, axis=-1)
    return seqs, jnp.max(generated)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x (B, K, ...) gathered along the beam axis by idx (B, K')."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_step(
    state: dict,
    log_probs: jax.Array,
    step: jax.Array,
    prompt_len: int,
    max_new: jax.Array,
    opts: _Options,
    params: dict,
) -> dict:
    """One step of transformers 4.57's vectorised beam search on the processed ``log_probs``
    (B * K, V) with its state names; ``step`` tokens generated so far, the running sequences
    hold ``prompt_len + step`` slots. The numpy reference is
    :func:`gpt2_core.generation.beam_step`."""
    B, nb, M = state["running_sequences"].shape
    V = log_probs.shape[-1]
    K = max(2, 1 + opts.n_eos) * nb  # candidates kept per step
    lp, es = params["length_penalty"], opts.early_stopping
    scores = log_probs.reshape(B, nb, V) + state["running_beam_scores"][:, :, None]
    topk_log_probs, topk_indices = jax.lax.top_k(scores.reshape(B, nb * V), K)  # (B, K)
    topk_beam, topk_ids = topk_indices // V, (topk_indices % V).astype(jnp.int32)
    topk_running_sequences = jax.lax.dynamic_update_slice(
        _take(state["running_sequences"], topk_beam),
        topk_ids[:, :, None],
        (0, 0, prompt_len + step),
    )
    flat_beam = (topk_beam + jnp.arange(B)[:, None] * nb).astype(jnp.int32)
    topk_running_beam_indices = jax.lax.dynamic_update_slice(
        _take(state["running_beam_indices"], topk_beam), flat_beam[:, :, None], (0, 0, step)
    )
    hits = jnp.isin(topk_ids, params["eos"]) | (step + 1 >= max_new)  # (B, K)
    # the best nb candidates that did not stop keep running
    topk_running_log_probs = topk_log_probs + hits.astype(jnp.float32) * BEAM_NEG
    nxt = jax.lax.top_k(topk_running_log_probs, nb)[1]
    new = dict(
        running_sequences=_take(topk_running_sequences, nxt),
        running_beam_scores=_take(topk_running_log_probs, nxt),
        running_beam_indices=_take(topk_running_beam_indices, nxt),
    )
    # finished candidates among the top nb may enter the finished set
    just_finished = hits & (jnp.arange(K) < nb)[None, :]
    fin = topk_log_probs / ((step + 1).astype(jnp.float32) ** lp)
    full = jnp.all(state["is_sent_finished"], axis=-1, keepdims=True) & (es is True)
    fin = fin + full.astype(jnp.float32) * BEAM_NEG
    fin = fin + (~state["is_early_stop_heuristic_unsatisfied"]).astype(jnp.float32) * BEAM_NEG
    fin = fin + (~just_finished).astype(jnp.float32) * BEAM_NEG
    merged_scores = jnp.concatenate([state["beam_scores"], fin], axis=1)
    best = jax.lax.top_k(merged_scores, nb)[1]
    new["sequences"] = _take(
        jnp.concatenate([state["sequences"], topk_running_sequences], axis=1), best
    )
    new["beam_scores"] = _take(merged_scores, best)
    new["beam_indices"] = _take(
        jnp.concatenate([state["beam_indices"], topk_running_beam_indices], axis=1), best
    )
    new["is_sent_finished"] = _take(
        jnp.concatenate([state["is_sent_finished"], just_finished], axis=1), best
    )
    # can a running beam still beat the worst finished one?
    if es == "never" and opts.positive_length_penalty:
        best_len = max_new.astype(jnp.float32)
    else:
        best_len = (step + 1).astype(jnp.float32)
    best_running = new["running_beam_scores"][:, :1] / best_len**lp
    worst_finished = jnp.where(
        new["is_sent_finished"], jnp.min(new["beam_scores"], axis=1, keepdims=True), BEAM_NEG
    )
    new["is_early_stop_heuristic_unsatisfied"] = state[
        "is_early_stop_heuristic_unsatisfied"
    ] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
    new["next_token_hits_stopping_criteria"] = hits
    return new


_program = jax.jit(_generate_program, static_argnums=(0, 1))


# ---------------------------------------------------------------------------- public API
def decode_engine(model: Any, rows: int = 1, cache_len: int = 128) -> str:
    """What ``generate`` decodes ``rows`` rows of ``model`` with: ``"cpu kernel"`` (the fused C
    step as an XLA FFI call in the jitted loop) or ``"xla loop (<why not the kernel>)"``.

    Example:
        >>> decode_engine(model)                                        # doctest: +SKIP
        'cpu kernel'
    """
    reason = _cpu_kernels.unsupported_reason(model, rows, cache_len)
    return "cpu kernel" if reason is None else f"xla loop ({reason})"


class GenerationMixin:
    """``generate`` for :class:`gpt2_flax.GPT2LMHeadModel` (see the module docstring)."""

    def generate(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        generation_config: GenerationConfig | None = None,
        *,
        prng_key: jax.Array | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> jax.Array:
        """Generate continuations; returns token ids (B * num_return_sequences, Tu + new).

        Args:
            input_ids: (B, Tu) or (Tu,) prompt ids; batches must be **left**-padded.
            attention_mask: (B, Tu), 0 at pads. If None it is inferred as transformers does
                (``ids != pad`` when the pad id occurs and differs from EOS, else all ones).
            generation_config: a :class:`gpt2_core.GenerationConfig` (default: from the model
                config); ``**kwargs`` override its fields (``max_new_tokens=20, num_beams=4``).
            prng_key: ``jax.random`` key for sampling (default: from ``seed``, else a fresh
                seed from OS entropy, so unseeded calls differ as in the other backends).
            streamer: gets ``put(prompt)``, ``put(token)`` per step from inside the compiled
                loop, then ``end()``; batch size 1, no beam search (as transformers).

        The model runs in inference mode (dropout off) whatever its train/eval state.

        Example:
            >>> out = model.generate(jnp.array([[464, 2068]]), max_new_tokens=8)
            >>> out = model.generate(ids, attention_mask=mask, num_beams=4, length_penalty=0.8)
            >>> out = model.generate(ids, do_sample=True, top_p=0.9, prng_key=jax.random.key(1))
        """
        config = self.config
        if (
            generation_config is None
        ):  # from_pretrained keeps the checkpoint's generation_config.json
            generation_config = getattr(self, "generation_config", None)
        gen = GenerationConfig.resolve(generation_config, config, **kwargs)
        gen = gen.for_model(config.vocab_size, has_prompt=input_ids is not None)
        if isinstance(input_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
            # inside jax.jit / nnx.jit (transformers' ``jax.jit(model.generate)`` recipe)
            return self._generate_in_graph(input_ids, attention_mask, gen, prng_key, streamer)
        ids, mask = prepare_inputs(input_ids, attention_mask, gen, config.vocab_size)
        ids, mask = ids.astype(np.int32), mask.astype(np.int32)
        B, Tu = ids.shape
        eos = tuple(gen.eos_token_ids)
        pad = gen.effective_pad_token_id
        max_new = gen.max_new_tokens_for(Tu, config.n_positions)
        if max_new == 0:
            return jnp.asarray(ids)
        min_new = gen.min_new_tokens_for(Tu)
        if streamer is not None and (gen.num_beams > 1 or B > 1):
            raise ValueError(
                "streamer supports batch size 1 without beam search (num_beams=1), as transformers"
            )

        # bucket the shapes: left-pad the prompt to Tb, the cache to M
        Tb = bucket(Tu)
        M = bucket(Tb + max_new)
        # the bucket's extra slots repeat the first column (a valid id: the pad id may lie
        # outside the vocabulary, and a NaN embedding would reach the masked values)
        ids_b = np.repeat(ids[:, :1], Tb, axis=1).astype(np.int32)
        ids_b[:, Tb - Tu :] = ids
        mask_b = np.zeros((B, Tb), np.int32)
        mask_b[:, Tb - Tu :] = mask
        opts = _Options.of(gen, config.vocab_size, M, stream=streamer is not None)
        graphdef, state = nnx.split(self)
        reason = _cpu_kernels.unsupported_reason(self, B * opts.rows, M, state)
        logger.debug("gpt2_flax generate: CPU kernel %s", reason or "in use")
        opts = dataclasses.replace(opts, cpu_kernel=reason is None)
        if opts.mode == "sample" and gen.num_return_sequences > 1:
            ids_b = np.repeat(ids_b, gen.num_return_sequences, axis=0)
            mask_b = np.repeat(mask_b, gen.num_return_sequences, axis=0)
            ids = np.repeat(ids, gen.num_return_sequences, axis=0)
        if prng_key is None:  # seeded: reproducible; unseeded: a fresh sample every call
            prng_key = jax.random.key(sampling_seed(gen.seed))

        stream_id = 0
        if streamer is not None:
            stream_id = next(_STREAM_IDS)
            _STREAMERS[stream_id] = streamer
            streamer.put(ids)
        try:
            seqs, n_new = _program(
                graphdef,
                opts,
                state,
                jnp.asarray(ids_b),
                jnp.asarray(mask_b),
                jnp.asarray(prompt_position_ids(mask_b), jnp.int32),
                jnp.int32(Tb - Tu),
                jnp.int32(max_new),
                jnp.int32(min_new),
                prng_key,
                jnp.int32(stream_id),
                _params(gen, eos, pad),
            )
            n_new = int(n_new)  # waits for the program (and its callbacks) to finish
        finally:
            if streamer is not None:
                jax.effects_barrier()
                _STREAMERS.pop(stream_id, None)
        if streamer is not None:
            streamer.end()
        return seqs[:, Tb - Tu : Tb + n_new]

    def _generate_in_graph(
        self, input_ids, attention_mask, gen: GenerationConfig, prng_key, streamer
    ):
        """``generate`` traced inside ``jax.jit`` / ``nnx.jit`` (transformers' ``jax.jit(
        model.generate)``): the same compiled loop on traced inputs. Returns (B *
        num_return_sequences, Tu + max_new_tokens) ids, rows that stop early padded with the
        pad id (transformers' Flax generate does the same). The value checks of the eager call
        (ids in the vocabulary, a 0/1 mask) cannot raise on traced values: an id outside the
        vocabulary makes that row's logits NaN."""
        config = self.config
        if streamer is not None:
            raise ValueError("a streamer needs eager generate: call model.generate outside jax.jit")
        if input_ids is None:
            input_ids = [[gen.bos_token_id]]
        ids = jnp.asarray(input_ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype}")
        ids = ids.astype(jnp.int32)
        ids = ids[None] if ids.ndim == 1 else ids
        check_prompt_shape(ids.shape)
        B, Tu = ids.shape
        if attention_mask is None:
            pad = gen.pad_token_id
            if pad is not None and pad not in gen.eos_token_ids:
                is_pad = ids == pad
                mask = jnp.where(jnp.any(is_pad), (~is_pad).astype(jnp.int32), 1)
            else:
                mask = jnp.ones_like(ids)
        else:
            mask = jnp.asarray(attention_mask).astype(jnp.int32)
            mask = mask[None] if mask.ndim == 1 else mask
            if mask.shape != ids.shape:
                raise ValueError(
                    f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}"
                )
        eos = tuple(gen.eos_token_ids)
        pad = gen.effective_pad_token_id
        max_new = gen.max_new_tokens_for(Tu, config.n_positions)
        if max_new == 0:
            return ids
        min_new = gen.min_new_tokens_for(Tu)
        Tb = bucket(Tu)
        M = bucket(Tb + max_new)
        ids_b = jnp.concatenate([jnp.repeat(ids[:, :1], Tb - Tu, axis=1), ids], axis=1)
        mask_b = jnp.concatenate([jnp.zeros((B, Tb - Tu), jnp.int32), mask], axis=1)
        opts = _Options.of(gen, config.vocab_size, M, stream=False)
        reason = _cpu_kernels.unsupported_reason(self, B * opts.rows, M)
        opts = dataclasses.replace(opts, cpu_kernel=reason is None)
        if opts.mode == "sample" and gen.num_return_sequences > 1:
            ids_b = jnp.repeat(ids_b, gen.num_return_sequences, axis=0)
            mask_b = jnp.repeat(mask_b, gen.num_return_sequences, axis=0)
        if prng_key is None:
            prng_key = jax.random.key(sampling_seed(gen.seed))
        positions = jnp.where(mask_b != 0, jnp.cumsum(mask_b, axis=-1) - 1, 1).astype(jnp.int32)
        graphdef, state = nnx.split(self)
        seqs, _ = _program(
            graphdef,
            opts,
            state,
            ids_b,
            mask_b,
            positions,
            jnp.int32(Tb - Tu),
            jnp.int32(max_new),
            jnp.int32(min_new),
            prng_key,
            jnp.int32(0),
            _params(gen, eos, pad),
        )
        return seqs[:, Tb - Tu : Tb + max_new]
