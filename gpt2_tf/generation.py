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

from gpt2_core.generation_config import GenerationConfig, sampling_seed
from gpt2_core.inputs import check_prompt_shape

logger = logging.getLogger(__name__)

#: prompts are left-padded to a multiple of this many tokens
PROMPT_BUCKET = 16
#: the static cache holds a multiple of this many slots
LENGTH_BUCKET = 32
_NEG_INF = float("-inf")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _slot_bias(mask: np.ndarray) -> np.ndarray:
    """The fused CPU step's additive mask over cache slots: 0 where ``mask`` (R, S) is 1, else
    half the float32 minimum (finite, as the model's own padding mask)."""
    return np.where(mask == 1, np.float32(0), np.float32(np.finfo(np.float32).min / 2))


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
    host: bool = False  # forwards run by the host through the fused CPU kernel

    @property
    def rows(self) -> int:
        return self.batch * self.expand


class GenerationMixin:
    """Adds ``generate`` to a Keras GPT-2 model with an LM head (``transformer`` + ``_lm_logits``)."""

    # ------------------------------------------------------------------ public API
    def generate(self, input_ids: Any = None, attention_mask: Any = None,
                 generation_config: GenerationConfig | None = None, streamer: Any = None,
                 **kwargs: Any) -> tf.Tensor:
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
            cfg, **kwargs)
        gc = gc.for_model(cfg.vocab_size, has_prompt=input_ids is not None)
        ids, mask = self._host_inputs(input_ids, attention_mask, gc)
        B, T = ids.shape
        max_new = gc.max_new_tokens_for(T, cfg.n_positions)
        min_new = gc.min_new_tokens_for(T)
        if max_new == 0:
            return tf.constant(ids, tf.int32)
        beam = gc.num_beams > 1
        expand = gc.num_beams if beam else gc.num_return_sequences
        if streamer is not None and (beam or B * expand != 1):
            raise ValueError("streaming supports batch size 1 and no beam search "
                             "(as transformers)")
        Tb = _round_up(T, PROMPT_BUCKET)
        S = _round_up(Tb + max_new, LENGTH_BUCKET)
        eos = gc.eos_token_ids
        pad = gc.effective_pad_token_id
        # transformers' beam search fills unused slots with `pad_token_id or eos_token_id[0]`
        fill = pad if (pad != 0 or not eos or not beam) else eos[0]
        top_k = min(gc.top_k, cfg.vocab_size) if gc.do_sample else 0
        spec = _Spec(
            batch=B, expand=expand, prompt_len=Tb, slots=S,
            mode="beam" if beam else ("sample" if gc.do_sample else "greedy"),
            top_k=top_k, top_p=gc.do_sample and gc.top_p < 1.0,
            repetition=gc.repetition_penalty != 1.0, ngram=gc.no_repeat_ngram_size,
            n_eos=len(eos), early_stopping=gc.early_stopping if beam else False,
            n_return=gc.num_return_sequences if beam else 1)
        # bucket padding: repeat the first column (a valid id) and mask it out
        extra = Tb - T
        ids_p = np.concatenate([np.repeat(ids[:, :1], extra, axis=1), ids], axis=1)
        mask_p = np.concatenate([np.zeros((B, extra), np.int32), mask], axis=1)
        seed = sampling_seed(gc.seed)
        sc = {
            "max_new": tf.constant(max_new, tf.int32),
            "min_new": tf.constant(min_new, tf.int32),
            "start": tf.constant(extra, tf.int32),
            "pad": tf.constant(pad, tf.int32),
            "fill": tf.constant(fill, tf.int32),
            "temperature": tf.constant(gc.temperature, tf.float32),
            "top_p": tf.constant(gc.top_p, tf.float32),
            "repetition_penalty": tf.constant(gc.repetition_penalty, tf.float32),
            "length_penalty": tf.constant(gc.length_penalty, tf.float32),
            "seed": tf.constant(seed, tf.int32),
            "eos": tf.constant(np.asarray(eos, np.int32).reshape(-1), tf.int32),
        }
        ids_t = tf.constant(ids_p, tf.int32)
        mask_t = tf.constant(mask_p, tf.int32)
        reason = self._host_decode_reason(spec.rows, S)
        if reason is None:
            spec = dataclasses.replace(spec, host=True)
            host_sc = {"pad": pad, "eos": np.asarray(eos, np.int64).reshape(-1),
                       "min_new": min_new}
            seq, n_new = self._host_generate(spec, ids_t, mask_t, sc, streamer, ids, max_new,
                                             host_sc)
            seq = seq.numpy()[:, extra:Tb + int(n_new)]
            return tf.constant(seq, tf.int32)
        logger.debug("generate: XLA loop (fused CPU step unavailable: %s)", reason)
        fns = self._generation_functions(spec)
        if streamer is None:
            seq, n_new = fns["full"](ids_t, mask_t, sc)
        else:
            streamer.put(ids.copy())
            state = fns["prefill"](ids_t, mask_t, sc)
            while True:
                before = int(state["step"])
                state = fns["loop"](state, sc, tf.constant(before + 1, tf.int32))
                if int(state["step"]) > before:
                    streamer.put(state["seq"].numpy()[:, Tb + before])
                if bool(state["finished"]) or int(state["step"]) >= max_new:
                    break
            streamer.end()
            seq, n_new = state["seq"], state["step"]
        seq = seq.numpy()[:, extra:Tb + int(n_new)]
        return tf.constant(seq, tf.int32)

    @property
    def generation_trace_count(self) -> int:
        """How many times a generation function was traced (compiled) for this model."""
        return self.__dict__.get("_gen_traces", 0)

    # ------------------------------------------------------------------ host-side preparation
    def _host_inputs(self, input_ids, attention_mask, gc: GenerationConfig):
        V = self.config.vocab_size
        if input_ids is None:
            if gc.bos_token_id is None:
                raise ValueError("give input_ids, or set bos_token_id to start from it")
            input_ids = [[gc.bos_token_id]]
        ids = np.asarray(input_ids.numpy() if tf.is_tensor(input_ids) else input_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        check_prompt_shape(ids.shape)
        bad = ids[(ids < 0) | (ids >= V)]
        if bad.size:
            raise ValueError(f"input_ids contains {bad.flat[0]}, outside the vocabulary [0, {V})")
        ids = ids.astype(np.int32)
        pad, eos = gc.effective_pad_token_id, gc.eos_token_ids
        if attention_mask is None:
            # transformers: infer from padding only when pad is present and differs from EOS
            if (ids == pad).any() and pad not in eos:
                mask = (ids != pad).astype(np.int32)
            else:
                mask = np.ones_like(ids)
        else:
            mask = np.asarray(attention_mask.numpy() if tf.is_tensor(attention_mask)
                              else attention_mask)
            if mask.ndim == 1:
                mask = mask[None]
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape "
                                 f"{ids.shape}")
            if not np.isin(mask, (0, 1)).all():
                raise ValueError("attention_mask must hold only 0 and 1")
            mask = mask.astype(np.int32)
        if (mask[:, -1] == 0).any():
            logger.warning("A decoder-only architecture is being used, but right-padding was "
                           "detected! For correct generation results, please set "
                           "padding_side='left' when initializing the tokenizer.")
        return ids, mask

    def _generation_functions(self, spec: _Spec) -> dict[str, Any]:
        # a plain dict set with object.__setattr__: Keras / SavedModel tracking must not see it
        cache = self.__dict__.get("_gen_fns")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_gen_fns", cache)
        if spec not in cache:
            def full(ids, mask, sc):
                state = self._gen_prefill(spec, ids, mask, sc)
                state = self._gen_loop(spec, state, sc, sc["max_new"])
                if spec.mode == "beam":
                    return self._beam_result(spec, state)
                return state["seq"], state["step"]

            body = self._beam_step if spec.mode == "beam" else self._sample_step
            cache[spec] = {
                "select": tf.function(lambda state, sc: self._select(body, spec, sc, state),
                                      jit_compile=True),
                "full": tf.function(full, jit_compile=True),
                "prefill": tf.function(lambda ids, mask, sc: self._gen_prefill(spec, ids, mask, sc),
                                       jit_compile=True),
                "loop": tf.function(lambda state, sc, stop: self._gen_loop(spec, state, sc, stop),
                                    jit_compile=True),
            }
        return cache[spec]

    # ------------------------------------------------------------------ fused CPU decoding
    def _host_decode_reason(self, rows: int, slots: int) -> str | None:
        """``None`` when decoding can run through :class:`gpt2_core.cpu_kernels.DecodeStep`
        (fp32 weights on the CPU, no accelerator, no cross-attention), else why not."""
        from gpt2_core import cpu_kernels

        reason = cpu_kernels.DecodeStep.unsupported_reason(self.config, rows, slots)
        if reason is not None:
            return reason
        if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
            return "an accelerator is visible (the XLA loop runs there)"
        if self.transformer.compute_dtype != "float32":
            return f"compute dtype {self.transformer.compute_dtype}"
        for v in self.weights:
            if v.dtype != "float32":
                return f"variable {v.path} is {v.dtype}"
            device = getattr(getattr(v, "value", v), "device", "") or ""
            if device and "CPU" not in device.upper():
                return f"variable {v.path} is on {device}"
        return None

    def _kernel_weights(self) -> tuple[dict[str, np.ndarray], bool, list]:
        """Canonical name -> zero-copy numpy view of each variable (a read of the variable:
        later assignments copy-on-write, so the views stay valid and unchanged), whether the LM
        head is stored (C, V), and the tensors to keep alive."""
        from gpt2_tf import weights as W

        arrays, keep = {}, []
        for name, var in W.variable_map(self).items():
            v = getattr(var, "value", var)
            t = v.read_value() if hasattr(v, "read_value") else tf.convert_to_tensor(v)
            try:
                a = t._numpy()  # shares the CPU buffer
            except AttributeError:
                a = np.asarray(t)
            keep.append(t)
            arrays[name] = a
        head_transposed = "lm_head.weight" in arrays and "lm_head.weight" in W.TRANSPOSED
        arrays.update(getattr(self, "int8_weights", {}))  # gpt2_tf.quantize: int8 + scales
        arrays.setdefault("lm_head.weight", arrays["transformer.wte.weight"])  # tied
        return arrays, head_transposed, keep

    def _host_generate(self, spec: _Spec, ids_t, mask_t, sc, streamer, ids, max_new: int,
                       host_sc: dict):
        """The XLA prefill, then per token: one XLA call choosing the token (processors,
        sampling or beam search, stopping) and one fused CPU-kernel forward on the host.
        Plain greedy search (no repetition penalty or n-gram ban) chooses on the host too: an
        argmax needs no compiled call, which costs ~1.3 ms per token here."""
        from gpt2_core import cpu_kernels

        fns = self._generation_functions(spec)
        Tb, R = spec.prompt_len, spec.rows
        state = dict(fns["prefill"](ids_t, mask_t, sc))
        cache = state.pop("cache")
        keys = [np.array(k, np.float32) for k, _ in cache]  # writable (R, H, S, D) buffers
        values = [np.array(v, np.float32) for _, v in cache]
        weights, head_transposed, keep = self._kernel_weights()
        step_fn = cpu_kernels.DecodeStep(self.config, weights, keys, values, R,
                                         head_transposed=head_transposed)
        if spec.mode == "greedy" and not spec.repetition and not spec.ngram:
            try:
                return self._host_greedy(spec, state, step_fn, host_sc, streamer, ids, max_new)
            finally:
                del keep
        state["tokens"] = tf.zeros([R], tf.int32)
        if spec.mode == "beam":
            state["reorder"] = tf.range(R, dtype=tf.int32)
        if streamer is not None:
            streamer.put(ids.copy())
        identity = np.arange(R)
        while True:
            state = fns["select"](state, sc)
            step = int(state["step"])
            if streamer is not None:
                streamer.put(state["tokens"].numpy())
            if bool(state["finished"]) or step >= max_new:
                break
            if spec.mode == "beam":
                idx = state["reorder"].numpy()
                if not np.array_equal(idx, identity):
                    for buf in (*keys, *values):
                        buf[...] = buf[idx]
            logits = step_fn(state["tokens"].numpy(), state["pos"].numpy() - 1,
                             _slot_bias(state["mask"].numpy()), Tb + step - 1)
            state["logits"] = tf.constant(logits)
        del keep
        if streamer is not None:
            streamer.end()
        if spec.mode == "beam":
            return self._beam_result(spec, state)
        return state["seq"], state["step"]

    @staticmethod
    def _host_greedy(spec: _Spec, state, step_fn, host_sc: dict, streamer, ids, max_new: int):
        """Greedy search on the host, step for step what ``_sample_step`` does in XLA: EOS
        suppressed before ``min_new_tokens``, argmax (first maximum), finished rows padded,
        stop when every row has emitted an EOS."""
        Tb = spec.prompt_len
        seq = np.array(state["seq"])  # (R, S) writable copies
        mask = np.array(state["mask"])
        pos = np.array(state["pos"], np.int64)
        logits = np.asarray(state["logits"])
        done = np.zeros(seq.shape[0], bool)
        pad, eos, min_new = host_sc["pad"], host_sc["eos"], host_sc["min_new"]
        if streamer is not None:
            streamer.put(ids.copy())
        step = 0
        while step < max_new:
            scores = logits
            if eos.size and step < min_new:
                scores = scores.copy()
                scores[:, eos] = -np.inf
            tokens = np.where(done, pad, scores.argmax(-1)).astype(np.int32)
            if eos.size:
                done |= np.isin(tokens, eos)
            cur = Tb + step
            seq[:, cur] = tokens
            mask[:, cur] = 1
            step += 1
            if streamer is not None:
                streamer.put(tokens.copy())
            if done.all() or step >= max_new:
                break
            logits = step_fn(tokens, pos, _slot_bias(mask), cur)
            pos += 1
        if streamer is not None:
            streamer.end()
        return tf.constant(seq), step

    def _select(self, body, spec: _Spec, sc, state):
        """Choose the next tokens from ``state["logits"]`` (no forward: ``spec.host``)."""
        self._count_trace()
        return body(spec, sc, state)

    def _count_trace(self) -> None:
        # runs only while tracing: a Python side effect inside tf.function
        object.__setattr__(self, "_gen_traces", self.__dict__.get("_gen_traces", 0) + 1)

    # ------------------------------------------------------------------ traced pieces
    def _gen_forward(self, tokens, positions, mask, cache, slot):
        """One cached forward: tokens (R, t) at buffer slots [slot, slot + t) -> last logits (R, V)."""
        t = tokens.shape[1]
        out = self.transformer(
            input_ids=tokens, position_ids=positions, attention_mask=mask,
            past_key_values=cache, use_cache=True, cache_position=slot + tf.range(t),
            training=False)
        logits = self._lm_logits(out.last_hidden_state[:, -1:, :])[:, 0]
        return tf.cast(logits, tf.float32), out.past_key_values

    def _gen_prefill(self, spec: _Spec, ids, mask, sc):
        """Run the (bucketed, left-padded) prompt; return the loop state for K rows."""
        self._count_trace()
        cfg = self.config
        B, Tb, S, R = spec.batch, spec.prompt_len, spec.slots, spec.rows
        H, D = cfg.n_head, cfg.head_dim
        mask_s = tf.pad(mask, [[0, 0], [0, S - Tb]])  # (B, S)
        # transformers 4.x: positions = cumsum(mask) - 1, pads set to 1
        positions = tf.where(mask == 1, tf.cumsum(mask, axis=1) - 1, 1)
        dtype = self.transformer.compute_dtype
        cache = tuple((tf.zeros([B, H, S, D], dtype), tf.zeros([B, H, S, D], dtype))
                      for _ in range(cfg.n_layer))
        logits, cache = self._gen_forward(ids, positions, mask_s, cache, 0)

        def rep(x):  # (B, ...) -> (R, ...), each prompt repeated `expand` times
            return tf.repeat(x, spec.expand, axis=0) if spec.expand > 1 else x

        seq = tf.concat([ids, tf.fill([B, S - Tb], sc["fill"])], axis=1)  # (B, S)
        state = {
            "step": tf.constant(0, tf.int32),
            "finished": tf.constant(False),
            "seq": rep(seq),
            "mask": rep(mask_s),
            "pos": rep(tf.reduce_sum(mask, axis=1)),  # position of the next token
            "logits": rep(logits),
            "cache": tf.nest.map_structure(rep, cache),
        }
        if spec.repetition:
            state["presence"] = self._presence(state["seq"], sc["start"], Tb)
        if spec.mode == "beam":
            nb = spec.expand
            state.update({
                "done": tf.zeros([R], tf.bool),
                "running_scores": tf.tile(
                    tf.constant([[0.0] + [-1e9] * (nb - 1)], tf.float32), [B, 1]),
                "beam_seq": tf.reshape(state["seq"], [B, nb, S]),
                "beam_scores": tf.fill([B, nb], -1e9),
                "beam_finished": tf.zeros([B, nb], tf.bool),
                "beam_len": tf.zeros([B, nb], tf.int32),
                "improvable": tf.ones([B, 1], tf.bool),
            })
        else:
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

    def _process(self, spec: _Spec, sc, scores, state):
        """transformers' logits processors in its order: repetition, n-gram, min new tokens."""
        step, seq = state["step"], state["seq"]
        cur = spec.prompt_len + step
        if spec.repetition:
            p = sc["repetition_penalty"]
            penalised = tf.where(scores < 0, scores * p, scores / p)
            scores = tf.where(state["presence"] > 0, penalised, scores)
        if spec.ngram:
            scores = tf.where(self._banned_ngrams(seq, sc["start"], cur, spec.ngram) > 0,
                              _NEG_INF, scores)
        if spec.n_eos:
            eos_mask = tf.reduce_max(tf.one_hot(sc["eos"], self.config.vocab_size), axis=0)  # (V,)
            too_short = step < sc["min_new"]
            scores = tf.where(too_short & (eos_mask[None] > 0), _NEG_INF, scores)
        return scores

    def _banned_ngrams(self, seq, start, cur, n: int):
        """(R, V) 1.0 for tokens that would repeat an n-gram of seq[:, start:cur]."""
        R, S = seq.shape
        W = S - n + 1
        cols = [seq[:, k:k + W] for k in range(n)]  # window p holds tokens p .. p+n-1
        prefix = tf.slice(seq, [0, cur - (n - 1)], [R, n - 1])  # the last n-1 tokens
        match = tf.ones([R, W], tf.bool)
        for k in range(n - 1):
            match &= tf.equal(cols[k], prefix[:, k:k + 1])
        p = tf.range(W)
        hit = match & ((p >= start) & (p <= cur - n))[None, :]
        rows = tf.broadcast_to(tf.range(R)[:, None], [R, W])
        idx = tf.stack([rows, cols[n - 1]], axis=-1)  # (R, W, 2)
        return tf.tensor_scatter_nd_max(tf.zeros([R, self.config.vocab_size]), idx,
                                        tf.cast(hit, tf.float32))

    def _warp(self, spec: _Spec, sc, scores):
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
        """Decode until max_new_tokens, every row done, or ``stop`` steps (streaming chunks)."""
        self._count_trace()

        def cond(state):
            return (state["step"] < stop) & (state["step"] < sc["max_new"]) & ~state["finished"]

        body = self._beam_step if spec.mode == "beam" else self._sample_step
        (state,) = tf.while_loop(cond, lambda s: (body(spec, sc, s),), (state,))
        return state

    def _advance(self, spec, sc, state, tokens, finished):
        """Write tokens (R,) at the current slot, run the next forward unless finished."""
        cur = spec.prompt_len + state["step"]
        seq = xla.dynamic_update_slice(state["seq"], tokens[:, None], [0, cur])
        mask = xla.dynamic_update_slice(state["mask"], tf.ones_like(tokens)[:, None], [0, cur])
        step = state["step"] + 1
        if spec.host:  # the host runs the forward of `tokens` (at slot `cur`) itself
            new = dict(state, seq=seq, mask=mask, step=step, tokens=tokens,
                       pos=state["pos"] + 1, finished=finished)
            if spec.repetition:
                new["presence"] = tf.maximum(state["presence"],
                                             tf.one_hot(tokens, self.config.vocab_size))
            return new
        run = (step < sc["max_new"]) & ~finished
        logits, cache = tf.cond(
            run,
            lambda: self._gen_forward(tokens[:, None], state["pos"][:, None], mask,
                                      state["cache"], cur),
            lambda: (state["logits"], state["cache"]))
        new = dict(state, seq=seq, mask=mask, step=step, logits=logits, cache=cache,
                   pos=state["pos"] + 1, finished=finished)
        if spec.repetition:
            new["presence"] = tf.maximum(state["presence"],
                                         tf.one_hot(tokens, self.config.vocab_size))
        return new

    def _sample_step(self, spec: _Spec, sc, state):
        scores = self._process(spec, sc, state["logits"], state)
        if spec.mode == "sample":
            scores = self._warp(spec, sc, scores)
            seed = tf.stack([sc["seed"], state["step"]])
            tokens = tf.random.stateless_categorical(scores, 1, seed=seed, dtype=tf.int32)[:, 0]
        else:
            tokens = tf.argmax(scores, axis=-1, output_type=tf.int32)
        done = state["done"]
        tokens = tf.where(done, sc["pad"], tokens)
        done = done | tf.reduce_any(tokens[:, None] == sc["eos"][None, :], axis=-1)
        state = dict(state, done=done)
        return self._advance(spec, sc, state, tokens, tf.reduce_all(done))

    def _beam_step(self, spec: _Spec, sc, state):
        """One step of transformers' vectorised beam search (GenerationMixin._beam_search)."""
        B, nb, S, V = spec.batch, spec.expand, spec.slots, self.config.vocab_size
        K = max(2, 1 + spec.n_eos) * nb  # candidates kept: enough to refill after EOS
        step = state["step"]
        cur = spec.prompt_len + step
        log_probs = self._process(spec, sc, tf.nn.log_softmax(state["logits"], axis=-1), state)
        log_probs = tf.reshape(log_probs, [B, nb, V]) + state["running_scores"][:, :, None]
        top_lp, top_idx = tf.math.top_k(tf.reshape(log_probs, [B, nb * V]), K)  # (B, K)
        src, tok = top_idx // V, top_idx % V
        top_seq = tf.gather(tf.reshape(state["seq"], [B, nb, S]), src, batch_dims=1)  # (B, K, S)
        top_seq = xla.dynamic_update_slice(top_seq, tok[:, :, None], [0, 0, cur])
        hits = tf.reduce_any(tok[:, :, None] == sc["eos"][None, None, :], axis=-1)
        hits = hits | (step + 1 >= sc["max_new"])  # max-length criterion
        # running beams for the next step: the best nb candidates that did not stop
        running_lp = top_lp + tf.cast(hits, tf.float32) * -1e9
        nxt = tf.math.top_k(running_lp, nb).indices  # (B, nb)
        run_seq = tf.gather(top_seq, nxt, batch_dims=1)
        run_scores = tf.gather(running_lp, nxt, batch_dims=1)
        run_src = tf.gather(src, nxt, batch_dims=1)
        # finished hypotheses: merge the new ones (top nb candidates only) with the kept ones
        just = hits & (tf.range(K) < nb)[None, :]
        lp = sc["length_penalty"]
        fin = top_lp / tf.pow(tf.cast(step + 1, tf.float32), lp)
        if spec.early_stopping is True:
            full = tf.reduce_all(state["beam_finished"], axis=-1, keepdims=True)
            fin += tf.cast(full, tf.float32) * -1e9
        fin += tf.cast(~state["improvable"], tf.float32) * -1e9
        fin += tf.cast(~just, tf.float32) * -1e9
        m_seq = tf.concat([state["beam_seq"], top_seq], axis=1)
        m_scores = tf.concat([state["beam_scores"], fin], axis=1)
        m_fin = tf.concat([state["beam_finished"], just], axis=1)
        m_len = tf.concat([state["beam_len"], tf.fill([B, K], step + 1)], axis=1)
        keep = tf.math.top_k(m_scores, nb).indices
        beam_seq = tf.gather(m_seq, keep, batch_dims=1)
        beam_scores = tf.gather(m_scores, keep, batch_dims=1)
        beam_finished = tf.gather(m_fin, keep, batch_dims=1)
        beam_len = tf.gather(m_len, keep, batch_dims=1)
        # stopping: can a running beam still beat the worst finished one?
        new_len = tf.cast(step + 1, tf.float32)
        if spec.early_stopping == "never":
            best_len = tf.where(lp > 0.0, tf.cast(sc["max_new"], tf.float32), new_len)
        else:
            best_len = new_len
        best_running = run_scores[:, :1] / tf.pow(best_len, lp)
        worst = tf.where(beam_finished,
                         tf.reduce_min(beam_scores, axis=1, keepdims=True), -1e9)
        improvable = state["improvable"] & tf.reduce_any(best_running > worst, axis=-1,
                                                         keepdims=True)
        unfinished = tf.reduce_any(improvable) & ~tf.reduce_all(hits)
        if spec.early_stopping is True:
            unfinished &= ~tf.reduce_all(beam_finished)
        # reorder the rows (cache, presence) to follow their source beams
        flat_src = tf.reshape(run_src + tf.range(B)[:, None] * nb, [-1])  # (R,)
        if spec.host:  # the host reorders its cache buffers
            moved = {"reorder": flat_src}
        else:
            moved = {"cache": tf.nest.map_structure(lambda t: tf.gather(t, flat_src),
                                                    state["cache"])}
        state = dict(
            state,
            seq=tf.gather(state["seq"], flat_src),
            **moved,
            running_scores=run_scores, beam_seq=beam_seq, beam_scores=beam_scores,
            beam_finished=beam_finished, beam_len=beam_len, improvable=improvable)
        if spec.repetition:
            state["presence"] = tf.gather(state["presence"], flat_src)
        tokens = tf.reshape(run_seq[:, :, :], [B * nb, S])
        tokens = tf.slice(tokens, [0, cur], [B * nb, 1])[:, 0]
        return self._advance(spec, sc, state, tokens, ~unfinished)

    def _beam_result(self, spec: _Spec, state):
        n, B, S = spec.n_return, spec.batch, spec.slots
        seqs = tf.reshape(state["beam_seq"][:, :n], [B * n, S])
        return seqs, tf.reduce_max(state["beam_len"][:, :n])
