"""``generate`` for the Keras GPT-2 models: one XLA-compiled loop over a static KV cache.

The whole decode (prefill, token selection, cache update, stopping) is a single
``tf.function(jit_compile=True)`` around a ``tf.while_loop``. Shapes are static, so prompts are
left-padded to a bucket of :data:`PROMPT_BUCKET` tokens and the cache length rounded up to
:data:`LENGTH_BUCKET`; compiled functions are cached per bucket (and per static setting such as
the number of beams), so a new prompt length in the same bucket does not retrace. The bucket
padding is invisible: its slots are masked, positions come from the attention mask
(``cumsum - 1``, as transformers), and the returned ids start at the caller's first column.

Semantics are transformers 4.57.6's: greedy, sampling (temperature -> top-k -> top-p, seeded
with a stateless RNG), beam search (``num_beams``, ``length_penalty``, ``early_stopping``,
``num_return_sequences``; the vectorised beam search of ``GenerationMixin._beam_search``),
repetition penalty, no-repeat n-grams, min/max new tokens, several EOS ids, padding of finished
rows. A streamer (``gpt2_core.streamers``) gets the prompt, then each token: with a streamer
the same compiled loop runs one step per call (a chunked loop) and the host forwards the token.

Shape legend: B prompts, K = B * beams (or * num_return_sequences) rows, T prompt length,
Tb bucketed prompt length, S cache slots, V vocab, L layers, H heads, D head dim.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from gpt2_core.generation import (
    BEAM_NEG,
    beam_filler,
    check_prompt_shape,
    prepare_inputs,
    prompt_position_ids,
    sampling_seed,
)
from gpt2_core.generation_config import GenerationConfig
from gpt2_tf import _cpu_kernels

logger = logging.getLogger(__name__)

#: prompts are left-padded to a multiple of this many tokens
PROMPT_BUCKET = 16
#: the static cache holds a multiple of this many slots
LENGTH_BUCKET = 32
_NEG_INF = float("-inf")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled generation function (the cache key)."""

    batch: int  # B prompts
    expand: int  # rows per prompt: num_beams, or num_return_sequences when sampling
    prompt_len: int  # Tb
    slots: int  # S
    mode: str  # "greedy" | "sample" | "beam"
    top_k: int  # 0 = off
    top_p: bool
    repetition: bool
    ngram: int
    n_eos: int
    early_stopping: bool | str
    n_return: int = 1  # sequences returned per prompt (beam search)
    host: bool = False  # the forwards run on the host (gpt2_tf._cpu_kernels), not in XLA

    @property
    def rows(self) -> int:
        return self.batch * self.expand


class GenerationMixin:
    """Adds ``generate`` to a Keras GPT-2 model with an LM head (``transformer`` + ``_lm_logits``)."""

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        generation_config: GenerationConfig | None = None,
        streamer: Any = None,
        **kwargs: Any,
    ) -> tf.Tensor:
        """Generate token ids; returns int32 (B * num_return_sequences, T + new) like transformers.

        Args:
            input_ids: (B, T) or (T,) prompt ids (list, numpy or tensor); left-pad batches.
            attention_mask: (B, T) 0/1; inferred from ``pad_token_id`` when absent (as
                transformers: only if pad != eos).
            generation_config: a :class:`gpt2_core.generation_config.GenerationConfig`;
                default ``model.generation_config`` or the model config's ids.
            streamer: ``put(ids)`` / ``end()`` object (batch 1, no beam search).
            **kwargs: any GenerationConfig field (``max_new_tokens``, ``do_sample``, ``seed``,
                ``num_beams`` ...).

        Example:
            >>> model.generate([[464, 3290]], max_new_tokens=5)          # doctest: +SKIP
            >>> model.generate(ids, attention_mask=mask, num_beams=4, num_return_sequences=2,
            ...                max_new_tokens=20, no_repeat_ngram_size=3)  # doctest: +SKIP
        """
        cfg = self.config
        gc = GenerationConfig.resolve(
            generation_config if generation_config is not None else self.generation_config,
            cfg,
            **kwargs,
        )
        gc = gc.for_model(cfg.vocab_size, has_prompt=input_ids is not None)
        if not tf.executing_eagerly():
            # inside tf.function(model.generate, jit_compile=True), transformers' XLA recipe
            return self._generate_in_graph(input_ids, attention_mask, gc, streamer)
        ids, mask = prepare_inputs(
            input_ids.numpy() if tf.is_tensor(input_ids) else input_ids,
            attention_mask.numpy() if tf.is_tensor(attention_mask) else attention_mask,
            gc,
            cfg.vocab_size,
        )
        ids, mask = ids.astype(np.int32), mask.astype(np.int32)
        B, T = ids.shape
        if streamer is not None and (gc.num_beams > 1 or B * gc.num_return_sequences != 1):
            raise ValueError("streaming supports batch size 1 and no beam search (as transformers)")
        spec, sc, max_new, min_new = self._plan(gc, B, T)
        if max_new == 0:
            return tf.constant(ids, tf.int32)
        Tb, extra = spec.prompt_len, spec.prompt_len - T
        # bucket padding: repeat the first column (a valid id) and mask it out
        ids_p = np.concatenate([np.repeat(ids[:, :1], extra, axis=1), ids], axis=1)
        mask_p = np.concatenate([np.zeros((B, extra), np.int32), mask], axis=1)
        positions = tf.constant(prompt_position_ids(mask_p), tf.int32)  # bucket pads at 1
        ids_t = tf.constant(ids_p, tf.int32)
        mask_t = tf.constant(mask_p, tf.int32)
        reason = _cpu_kernels.unsupported_reason(self, spec.rows, spec.slots)
        if reason is None:
            spec = dataclasses.replace(spec, host=True)
            seq, n_new = _cpu_kernels.generate(
                self, spec, ids_t, mask_t, positions, sc, streamer, ids, max_new, min_new
            )
            seq = seq[:, extra : Tb + int(n_new)]
            return tf.constant(seq, tf.int32)
        logger.debug("generate: XLA loop (fused CPU step unavailable: %s)", reason)
        fns = self._generation_functions(spec)
        if streamer is None:
            seq, n_new = fns["full"](ids_t, mask_t, positions, sc)
        else:
            streamer.put(ids.copy())
            state = fns["prefill"](ids_t, mask_t, positions, sc)
            while True:
                before = int(state["step"])
                state = fns["loop"](state, sc, tf.constant(before + 1, tf.int32))
                if int(state["step"]) > before:
                    streamer.put(state["seq"].numpy()[:, Tb + before])
                if bool(state["finished"]) or int(state["step"]) >= max_new:
                    break
            streamer.end()
            seq, n_new = state["seq"], state["step"]
        seq = seq.numpy()[:, extra : Tb + int(n_new)]
        return tf.constant(seq, tf.int32)

    def _plan(self, gc: GenerationConfig, B: int, T: int) -> tuple[_Spec, dict, int, int]:
        """The static setting of one call (B prompts of T tokens) and its scalar inputs:
        (spec, sc, max_new, min_new)."""
        cfg = self.config
        max_new = gc.max_new_tokens_for(T, cfg.n_positions)
        min_new = gc.min_new_tokens_for(T)
        beam = gc.num_beams > 1
        Tb = _round_up(T, PROMPT_BUCKET)
        S = _round_up(Tb + max_new, LENGTH_BUCKET)
        eos = gc.eos_token_ids
        pad = gc.effective_pad_token_id
        spec = _Spec(
            batch=B,
            expand=gc.num_beams if beam else gc.num_return_sequences,
            prompt_len=Tb,
            slots=S,
            mode="beam" if beam else ("sample" if gc.do_sample else "greedy"),
            top_k=min(gc.top_k, cfg.vocab_size) if gc.do_sample else 0,
            top_p=gc.do_sample and gc.top_p < 1.0,
            repetition=gc.repetition_penalty != 1.0,
            ngram=gc.no_repeat_ngram_size,
            n_eos=len(eos),
            early_stopping=gc.early_stopping if beam else False,
            n_return=gc.num_return_sequences if beam else 1,
        )
        sc = {
            "max_new": tf.constant(max_new, tf.int32),
            "min_new": tf.constant(min_new, tf.int32),
            "start": tf.constant(Tb - T, tf.int32),
            "pad": tf.constant(pad, tf.int32),
            "fill": tf.constant(beam_filler(gc) if beam else pad, tf.int32),
            "temperature": tf.constant(gc.temperature, tf.float32),
            "top_p": tf.constant(gc.top_p, tf.float32),
            "repetition_penalty": tf.constant(gc.repetition_penalty, tf.float32),
            "length_penalty": tf.constant(gc.length_penalty, tf.float32),
            "seed": tf.constant(sampling_seed(gc.seed), tf.int32),
            "eos": tf.constant(np.asarray(eos, np.int32).reshape(-1), tf.int32),
        }
        return spec, sc, max_new, min_new

    def _generate_in_graph(self, input_ids, attention_mask, gc: GenerationConfig, streamer):
        """``generate`` traced inside a ``tf.function`` (transformers' ``tf.function(
        model.generate, jit_compile=True)``): the all-XLA loop, on symbolic inputs of static
        shape. Returns (B * num_return_sequences, T + max_new_tokens) ids, rows that stopped
        early padded with the pad id (transformers' XLA generate does the same). The value
        checks of the eager call (ids in the vocabulary, a 0/1 mask) cannot raise in a graph:
        an id outside the vocabulary makes that row's logits NaN."""
        if streamer is not None:
            raise ValueError(
                "a streamer needs eager generate: call model.generate(...) outside tf.function"
            )
        if input_ids is None:
            if gc.bos_token_id is None:
                raise ValueError("generate() needs input_ids or a bos_token_id to start from")
            input_ids = [[gc.bos_token_id]]
        ids = tf.convert_to_tensor(input_ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype.name}")
        ids = tf.cast(ids, tf.int32)
        if ids.shape.rank == 1:
            ids = ids[None]
        if ids.shape.rank != 2 or None in ids.shape.as_list():
            raise ValueError(
                f"generate inside tf.function needs input_ids of a static (batch, length) "
                f"shape, got {ids.shape}: give the tf.function an input_signature with fixed "
                "sizes, or call it on concrete tensors"
            )
        B, T = ids.shape.as_list()
        check_prompt_shape((B, T))
        if attention_mask is None:
            pad = gc.pad_token_id
            if pad is not None and pad not in gc.eos_token_ids:
                is_pad = tf.equal(ids, pad)
                mask = tf.where(tf.reduce_any(is_pad), tf.cast(~is_pad, tf.int32), 1)
            else:
                mask = tf.ones_like(ids)
        else:
            mask = tf.convert_to_tensor(attention_mask)
            if mask.dtype == tf.string:
                raise TypeError("attention_mask must hold 0 and 1, got dtype string")
            mask = tf.cast(mask, tf.int32)
            mask = mask[None] if mask.shape.rank == 1 else mask
            if mask.shape.as_list() != [B, T]:
                raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {(B, T)}")
        spec, sc, max_new, _ = self._plan(gc, B, T)
        if max_new == 0:
            return ids
        Tb, extra = spec.prompt_len, spec.prompt_len - T
        ids_p = tf.concat([tf.repeat(ids[:, :1], extra, axis=1), ids], axis=1)
        mask_p = tf.concat([tf.zeros([B, extra], tf.int32), mask], axis=1)
        positions = tf.where(mask_p != 0, tf.cumsum(mask_p, axis=1) - 1, 1)
        seq, _ = self._generation_functions(spec)["full"](ids_p, mask_p, positions, sc)
        return seq[:, extra : Tb + max_new]

    @property
    def generation_trace_count(self) -> int:
        """How many times a generation function was traced (compiled) for this model."""
        return self.__dict__.get("_gen_traces", 0)

    # ------------------------------------------------------------------ compiled functions
    def _generation_functions(self, spec: _Spec) -> dict[str, Any]:
        """The compiled pieces for one static setting: ``full`` (the whole decode), ``prefill``
        and ``loop`` (streaming in chunks), and ``select`` (choose the next tokens from
        ``state["logits"]`` without a forward: what the host-side CPU kernel path calls)."""
        # a plain dict set with object.__setattr__: Keras / SavedModel tracking must not see it
        cache = self.__dict__.get("_gen_fns")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_gen_fns", cache)
        if spec not in cache:

            def full(ids, mask, positions, sc):
                state = self._gen_prefill(spec, ids, mask, positions, sc)
                state = self._gen_loop(spec, state, sc, sc["max_new"])
                return self._gen_result(spec, state)

            def select(state, sc):
                self._count_trace()
                return self._select(spec, sc, state)

            cache[spec] = {
                "select": tf.function(select, jit_compile=True),
                "full": tf.function(full, jit_compile=True),
                "prefill": tf.function(
                    lambda ids, mask, positions, sc: self._gen_prefill(
                        spec, ids, mask, positions, sc
                    ),
                    jit_compile=True,
                ),
                # the loop state around prompt logits computed elsewhere (the CPU kernel's
                # prefill): no forward, no cache
                "prefill_state": tf.function(
                    lambda ids, mask, positions, sc, logits: self._gen_prefill(
                        spec, ids, mask, positions, sc, logits=logits
                    ),
                    jit_compile=True,
                ),
                "loop": tf.function(
                    lambda state, sc, stop: self._gen_loop(spec, state, sc, stop), jit_compile=True
                ),
            }
        return cache[spec]

    def _count_trace(self) -> None:
        # runs only while tracing: a Python side effect inside tf.function
        object.__setattr__(self, "_gen_traces", self.__dict__.get("_gen_traces", 0) + 1)

    # ------------------------------------------------------------------ traced pieces
    def _gen_forward(self, tokens, positions, mask, cache, slot):
        """One cached forward: tokens (R, t) at buffer slots [slot, slot + t) -> last logits (R, V)."""
        t = tokens.shape[1]
        out = self.transformer(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            cache_position=slot + tf.range(t),
            training=False,
        )
        logits = self._lm_logits(out.last_hidden_state[:, -1:, :])[:, 0]
        return tf.cast(logits, tf.float32), out.past_key_values

    def _gen_prefill(self, spec: _Spec, ids, mask, positions, sc, logits=None):
        """Run the (bucketed, left-padded) prompt; return the loop state for R rows.
        ``positions`` come from :func:`gpt2_core.generation.prompt_position_ids`. Given the
        prompt's last ``logits`` (B, V) (the CPU kernel's prefill, which fills its own cache),
        no forward runs and the state has no ``cache``."""
        self._count_trace()
        cfg = self.config
        B, Tb, S, R = spec.batch, spec.prompt_len, spec.slots, spec.rows
        H, D = cfg.n_head, cfg.head_dim
        mask_s = tf.pad(mask, [[0, 0], [0, S - Tb]])  # (B, S)
        dtype = self.transformer.compute_dtype
        if logits is None:
            cache = tuple(
                (tf.zeros([B, H, S, D], dtype), tf.zeros([B, H, S, D], dtype))
                for _ in range(cfg.n_layer)
            )
            logits, cache = self._gen_forward(ids, positions, mask_s, cache, 0)
        else:
            cache = None

        def rep(x):  # (B, ...) -> (R, ...), each prompt repeated `expand` times
            return tf.repeat(x, spec.expand, axis=0) if spec.expand > 1 else x

        seq = rep(tf.concat([ids, tf.fill([B, S - Tb], sc["fill"])], axis=1))  # (R, S)
        state = {
            "step": tf.constant(0, tf.int32),
            "finished": tf.constant(False),
            "mask": rep(mask_s),
            "pos": rep(tf.reduce_sum(mask, axis=1)),  # position of the next token
            "logits": rep(logits),
            "tokens": tf.zeros([R], tf.int32),  # the last chosen tokens
        }
        if cache is not None:
            state["cache"] = tf.nest.map_structure(rep, cache)
        if spec.repetition:
            state["presence"] = self._presence(seq, sc["start"], Tb)
        if spec.mode == "beam":  # transformers' beam-search state, its names
            nb = spec.expand
            n_cand = max(2, 1 + spec.n_eos) * nb
            running_sequences = tf.reshape(seq, [B, nb, S])
            running_beam_indices = tf.fill([B, nb, S - Tb], -1)
            state.update(
                {
                    "beam_idx": tf.range(
                        R, dtype=tf.int32
                    ),  # the rows' source rows (cache reorder)
                    "running_sequences": running_sequences,
                    "running_beam_scores": tf.tile(
                        tf.constant([[0.0] + [BEAM_NEG] * (nb - 1)], tf.float32), [B, 1]
                    ),
                    "running_beam_indices": running_beam_indices,
                    "sequences": running_sequences,
                    "beam_scores": tf.fill([B, nb], BEAM_NEG),
                    "beam_indices": running_beam_indices,
                    "is_sent_finished": tf.zeros([B, nb], tf.bool),
                    "is_early_stop_heuristic_unsatisfied": tf.ones([B, 1], tf.bool),
                    "next_token_hits_stopping_criteria": tf.zeros([B, n_cand], tf.bool),
                }
            )
        else:
            state["seq"] = seq
            state["done"] = tf.zeros([R], tf.bool)
        return state

    def _presence(self, seq, start, end):
        """(R, V) 1.0 where a token occurs in seq[:, start:end] (what repetition_penalty sees)."""
        R, S = seq.shape
        slots = tf.range(S)
        valid = tf.cast((slots >= start) & (slots < end), tf.float32)  # (S,)
        rows = tf.broadcast_to(tf.range(R)[:, None], [R, S])
        idx = tf.stack([rows, seq], axis=-1)  # (R, S, 2)
        upd = tf.broadcast_to(valid[None], [R, S])
        return tf.tensor_scatter_nd_max(tf.zeros([R, self.config.vocab_size]), idx, upd)

    def process_logits(self, spec: _Spec, sc, scores, seq, step, presence=None):
        """transformers' logits processors in its order: repetition penalty, no-repeat
        n-grams, EOS banned before ``min_new_tokens``. ``seq`` (R, S) the running sequences,
        ``step`` tokens generated so far, ``presence`` (R, V) the tokens seen (repetition).
        The numpy reference is :func:`gpt2_core.generation.process_logits`."""
        cur = spec.prompt_len + step
        if spec.repetition:
            p = sc["repetition_penalty"]
            penalised = tf.where(scores < 0, scores * p, scores / p)
            scores = tf.where(presence > 0, penalised, scores)
        if spec.ngram:
            scores = tf.where(
                self._banned_ngrams(seq, sc["start"], cur, spec.ngram) > 0, _NEG_INF, scores
            )
        if spec.n_eos:
            eos_mask = tf.reduce_max(tf.one_hot(sc["eos"], self.config.vocab_size), axis=0)  # (V,)
            too_short = step < sc["min_new"]
            scores = tf.where(too_short & (eos_mask[None] > 0), _NEG_INF, scores)
        return scores

    def _banned_ngrams(self, seq, start, cur, n: int):
        """(R, V) 1.0 for tokens that would repeat an n-gram of seq[:, start:cur]."""
        R, S = seq.shape
        W = S - n + 1
        cols = [seq[:, k : k + W] for k in range(n)]  # window p holds tokens p .. p+n-1
        prefix = tf.slice(seq, [0, cur - (n - 1)], [R, n - 1])  # the last n-1 tokens
        match = tf.ones([R, W], tf.bool)
        for k in range(n - 1):
            match &= tf.equal(cols[k], prefix[:, k : k + 1])
        p = tf.range(W)
        hit = match & ((p >= start) & (p <= cur - n))[None, :]
        rows = tf.broadcast_to(tf.range(R)[:, None], [R, W])
        # a filler of -1 (beam search without EOS) lies outside [0, V): XLA drops it
        idx = tf.stack([rows, cols[n - 1]], axis=-1)  # (R, W, 2)
        return tf.tensor_scatter_nd_max(
            tf.zeros([R, self.config.vocab_size]), idx, tf.cast(hit, tf.float32)
        )

    def warp_logits(self, spec: _Spec, sc, scores):
        """Sampling warpers in transformers' order: temperature, top-k, top-p."""
        scores = scores / sc["temperature"]
        if spec.top_k:
            kth = tf.math.top_k(scores, spec.top_k).values[:, -1:]
            scores = tf.where(scores < kth, _NEG_INF, scores)
        if spec.top_p:
            order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)
            sorted_scores = tf.gather(scores, order, batch_dims=1)
            cum = tf.cumsum(tf.nn.softmax(sorted_scores, axis=-1), axis=-1)
            remove = cum <= 1.0 - sc["top_p"]
            V = self.config.vocab_size
            remove = remove & (tf.range(V) < V - 1)[None]  # keep at least one token
            remove = tf.gather(remove, tf.argsort(order, axis=-1), batch_dims=1)
            scores = tf.where(remove, _NEG_INF, scores)
        return scores

    def _gen_loop(self, spec: _Spec, state, sc, stop):
        """Decode until max_new_tokens, every row done, or ``stop`` steps (streaming chunks):
        each iteration chooses the next tokens, then runs their forward."""
        self._count_trace()

        def cond(state):
            return (state["step"] < stop) & (state["step"] < sc["max_new"]) & ~state["finished"]

        def body(state):
            return (self._forward_next(spec, sc, self._select(spec, sc, state)),)

        (state,) = tf.while_loop(cond, body, (state,))
        return state

    def _forward_next(self, spec: _Spec, sc, state):
        """The forward of the tokens just chosen (skipped once generation is over); beam
        search first moves each row's cache to its source beam."""
        cache = state["cache"]
        if spec.mode == "beam":
            cache = tf.nest.map_structure(lambda t: tf.gather(t, state["beam_idx"]), cache)
        slot = spec.prompt_len + state["step"] - 1
        run = (state["step"] < sc["max_new"]) & ~state["finished"]
        logits, cache = tf.cond(
            run,
            lambda: self._gen_forward(
                state["tokens"][:, None], state["pos"][:, None] - 1, state["mask"], cache, slot
            ),
            lambda: (state["logits"], cache),
        )
        return dict(state, logits=logits, cache=cache)

    def _select(self, spec: _Spec, sc, state):
        """Choose the next tokens from ``state["logits"]`` and advance the state (no forward)."""
        if spec.mode == "beam":
            return self._beam_select(spec, sc, state)
        return self._sample_select(spec, sc, state)

    def _advance(self, spec: _Spec, state, tokens, finished, **updates):
        """Book the chosen tokens (R,): the slot becomes visible, positions and step advance."""
        cur = spec.prompt_len + state["step"]
        mask = xla.dynamic_update_slice(state["mask"], tf.ones_like(tokens)[:, None], [0, cur])
        new = dict(
            state,
            mask=mask,
            step=state["step"] + 1,
            tokens=tokens,
            pos=state["pos"] + 1,
            finished=finished,
            **updates,
        )
        if spec.repetition:
            new["presence"] = tf.maximum(
                new["presence"], tf.one_hot(tokens, self.config.vocab_size)
            )
        return new

    def _sample_select(self, spec: _Spec, sc, state):
        scores = self.process_logits(
            spec, sc, state["logits"], state["seq"], state["step"], state.get("presence")
        )
        if spec.mode == "sample":
            scores = self.warp_logits(spec, sc, scores)
            seed = tf.stack([sc["seed"], state["step"]])
            tokens = tf.random.stateless_categorical(scores, 1, seed=seed, dtype=tf.int32)[:, 0]
        else:
            tokens = tf.argmax(scores, axis=-1, output_type=tf.int32)
        done = state["done"]
        tokens = tf.where(done, sc["pad"], tokens)
        done = done | tf.reduce_any(tokens[:, None] == sc["eos"][None, :], axis=-1)
        cur = spec.prompt_len + state["step"]
        seq = xla.dynamic_update_slice(state["seq"], tokens[:, None], [0, cur])
        return self._advance(spec, state, tokens, tf.reduce_all(done), seq=seq, done=done)

    def beam_step(self, spec: _Spec, sc, state, log_probs):
        """One step of transformers 4.57's vectorised beam search (``_beam_search``) on the
        processed ``log_probs`` (R, V), with its state names; the numpy reference is
        :func:`gpt2_core.generation.beam_step`. Returns the new beam entries of the state."""
        B, nb, V = spec.batch, spec.expand, self.config.vocab_size
        K = max(2, 1 + spec.n_eos) * nb  # candidates kept: enough to refill after EOS
        step = state["step"]
        cur = spec.prompt_len + step
        scores = tf.reshape(log_probs, [B, nb, V]) + state["running_beam_scores"][:, :, None]
        topk_log_probs, topk_indices = tf.math.top_k(tf.reshape(scores, [B, nb * V]), K)
        topk_beam, topk_ids = topk_indices // V, topk_indices % V  # (B, K)
        topk_running_sequences = tf.gather(state["running_sequences"], topk_beam, batch_dims=1)
        topk_running_sequences = xla.dynamic_update_slice(
            topk_running_sequences, topk_ids[:, :, None], [0, 0, cur]
        )
        topk_running_beam_indices = tf.gather(
            state["running_beam_indices"], topk_beam, batch_dims=1
        )
        flat_beam = topk_beam + tf.range(B)[:, None] * nb  # (B, K) rows of the sources
        topk_running_beam_indices = xla.dynamic_update_slice(
            topk_running_beam_indices, flat_beam[:, :, None], [0, 0, step]
        )
        # which candidates stop here (EOS or max length)
        hits = tf.reduce_any(topk_ids[:, :, None] == sc["eos"][None, None, :], axis=-1)
        hits = hits | (step + 1 >= sc["max_new"])
        # the best nb candidates that did not stop keep running
        topk_running_log_probs = topk_log_probs + tf.cast(hits, tf.float32) * BEAM_NEG
        nxt = tf.math.top_k(topk_running_log_probs, nb).indices  # (B, nb)
        new = {
            "running_sequences": tf.gather(topk_running_sequences, nxt, batch_dims=1),
            "running_beam_scores": tf.gather(topk_running_log_probs, nxt, batch_dims=1),
            "running_beam_indices": tf.gather(topk_running_beam_indices, nxt, batch_dims=1),
        }
        # finished candidates among the top nb may enter the finished set
        just_finished = hits & (tf.range(K) < nb)[None, :]
        lp = sc["length_penalty"]
        fin = topk_log_probs / tf.pow(tf.cast(step + 1, tf.float32), lp)
        if spec.early_stopping is True:
            full = tf.reduce_all(state["is_sent_finished"], axis=-1, keepdims=True)
            fin += tf.cast(full, tf.float32) * BEAM_NEG
        fin += tf.cast(~state["is_early_stop_heuristic_unsatisfied"], tf.float32) * BEAM_NEG
        fin += tf.cast(~just_finished, tf.float32) * BEAM_NEG
        merged_scores = tf.concat([state["beam_scores"], fin], axis=1)
        best = tf.math.top_k(merged_scores, nb).indices
        new["sequences"] = tf.gather(
            tf.concat([state["sequences"], topk_running_sequences], axis=1), best, batch_dims=1
        )
        new["beam_scores"] = tf.gather(merged_scores, best, batch_dims=1)
        new["beam_indices"] = tf.gather(
            tf.concat([state["beam_indices"], topk_running_beam_indices], axis=1),
            best,
            batch_dims=1,
        )
        new["is_sent_finished"] = tf.gather(
            tf.concat([state["is_sent_finished"], just_finished], axis=1), best, batch_dims=1
        )
        # can a running beam still beat the worst finished one?
        new_len = tf.cast(step + 1, tf.float32)
        if spec.early_stopping == "never":
            best_len = tf.where(lp > 0.0, tf.cast(sc["max_new"], tf.float32), new_len)
        else:
            best_len = new_len
        best_running = new["running_beam_scores"][:, :1] / tf.pow(best_len, lp)
        worst_finished = tf.where(
            new["is_sent_finished"],
            tf.reduce_min(new["beam_scores"], axis=1, keepdims=True),
            BEAM_NEG,
        )
        new["is_early_stop_heuristic_unsatisfied"] = state[
            "is_early_stop_heuristic_unsatisfied"
        ] & tf.reduce_any(best_running > worst_finished, axis=-1, keepdims=True)
        new["next_token_hits_stopping_criteria"] = hits
        return new

    def _beam_select(self, spec: _Spec, sc, state):
        """Beam search's choice: :meth:`beam_step`, then the rows follow their source beams."""
        B, nb, S = spec.batch, spec.expand, spec.slots
        step = state["step"]
        running = tf.reshape(state["running_sequences"], [B * nb, S])
        log_probs = self.process_logits(
            spec,
            sc,
            tf.nn.log_softmax(state["logits"], axis=-1),
            running,
            step,
            state.get("presence"),
        )
        new = self.beam_step(spec, sc, state, log_probs)
        finished = ~(
            tf.reduce_any(new["is_early_stop_heuristic_unsatisfied"])
            & ~tf.reduce_all(new["next_token_hits_stopping_criteria"])
        )
        if spec.early_stopping is True:
            finished |= tf.reduce_all(new["is_sent_finished"])
        beam_idx = tf.reshape(new["running_beam_indices"][:, :, step], [-1])  # (R,)
        tokens = tf.reshape(new["running_sequences"][:, :, spec.prompt_len + step], [-1])
        if spec.repetition:
            new["presence"] = tf.gather(state["presence"], beam_idx)
        return self._advance(spec, state, tokens, finished, beam_idx=beam_idx, **new)

    def _gen_result(self, spec: _Spec, state):
        """The sequences (R', S) and how many new tokens they hold."""
        if spec.mode != "beam":
            return state["seq"], state["step"]
        n, B, S = spec.n_return, spec.batch, spec.slots
        seqs = tf.reshape(state["sequences"][:, :n], [B * n, S])
        generated = tf.reduce_sum(tf.cast(state["beam_indices"][:, :n] >= 0, tf.int32), axis=-1)
        return seqs, tf.reduce_max(generated)
