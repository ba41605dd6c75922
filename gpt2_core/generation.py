"""The framework-free half of ``generate``: the rules every backend follows, and a numpy
reference of the per-step maths that each backend's tests check against.

Rules (each backend calls these; none writes its own):

- :func:`prepare_inputs`: the prompt (``None`` -> ``[[bos_token_id]]``, a 1-D prompt -> a batch
  of one, integer ids in the vocabulary) and its attention mask. A missing mask is inferred as
  transformers 4.57 does: ``input_ids != pad_token_id`` only when ``pad_token_id`` is *set*,
  occurs in the prompt and is not an EOS id; otherwise all ones. (An implicit pad, the first EOS
  or 0, never marks padding.)
- :func:`prompt_position_ids`: positions of a left-padded prompt, ``cumsum(mask) - 1`` with pads
  at 1 (transformers 4.x); the first new token is at ``mask.sum(-1)``.
- :func:`beam_filler`: the token that fills beam buffers, ``pad_token_id or eos_token_id[0]``,
  or -1 without EOS (transformers' ``_beam_search``).
- :func:`attention_scale` and :func:`problem_type`: two config rules the models share.
- :func:`sampling_seed`: the unseeded-sampling policy. A ``seed`` makes sampling reproducible;
  without one every call draws a fresh sample. TF and JAX seed a stateless RNG from
  ``sampling_seed(None)`` (OS entropy); torch draws from torch's global generator, which is
  the same policy with the user's ``torch.manual_seed`` as its handle (as transformers).

Reference maths (numpy, float32, the names each backend's ``generation.py`` uses for its own
version of the same step):

- :func:`process_logits`: transformers' logits processors in its order -- repetition penalty,
  no-repeat n-gram ban, EOS suppression before ``min_new_tokens``;
- :func:`warp_logits`: the sampling warpers in its order -- temperature, top-k, top-p;
- :func:`init_beam_state` / :func:`beam_step` / :func:`beam_search_finished` /
  :func:`finalize_beams`: one step of transformers 4.57's vectorised beam search
  (``GenerationMixin._beam_search``) with its state names: ``running_sequences``,
  ``running_beam_scores``, ``running_beam_indices``, ``sequences``, ``beam_scores``,
  ``beam_indices``, ``is_sent_finished``, ``is_early_stop_heuristic_unsatisfied``,
  ``next_token_hits_stopping_criteria``.

Shape legend: B prompts, K beams per prompt, R rows (B or B * K), T tokens so far, L max
length (prompt + new), T0 prompt length, V vocab.

Example:
    >>> import numpy as np
    >>> from gpt2_core.generation import prepare_inputs, prompt_position_ids
    >>> from gpt2_core.generation_config import GenerationConfig
    >>> ids, mask = prepare_inputs([[0, 0, 5, 6]], None, GenerationConfig(pad_token_id=0), 10)
    >>> mask.tolist(), prompt_position_ids(mask).tolist()
    ([[0, 0, 1, 1]], [[1, 1, 0, 1]])
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from gpt2_core.generation_config import GenerationConfig, sampling_seed
from gpt2_core.inputs import check_prompt_shape

__all__ = [
    "attention_scale",
    "beam_filler",
    "beam_search_finished",
    "beam_step",
    "finalize_beams",
    "init_beam_state",
    "prepare_inputs",
    "problem_type",
    "process_logits",
    "prompt_position_ids",
    "sampling_seed",
    "warp_logits",
]

logger = logging.getLogger(__name__)

#: the score a beam gets to keep it out of a top-k (transformers' -1e9, not -inf: sums stay finite)
BEAM_NEG = -1.0e9
RIGHT_PADDING_WARNING = (
    "A decoder-only architecture is being used, but right-padding was "
    "detected! For correct generation results, pad prompts on the left "
    "(tokenizer padding_side='left')."
)


# ----------------------------------------------------------------------------- rules
def _as_int_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None]  # generate alone accepts a 1-D prompt: a batch of one
    return arr


def prepare_inputs(
    input_ids: Any, attention_mask: Any, gen: GenerationConfig, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The prompt and its mask as int64 numpy arrays (B, T0), checked; see the module rules.

    Args:
        input_ids: (B, T0) or (T0,) ids (numpy, nested lists; backends pass their tensors as
            numpy), or None to start from ``gen.bos_token_id``.
        attention_mask: (B, T0) or (T0,) of 0 and 1 (ints, bools or floats), or None to
            infer it.
        gen: the resolved config (:meth:`GenerationConfig.for_model` applied).
        vocab_size: ids must lie in ``[0, vocab_size)``.

    Raises:
        TypeError: non-integer ids or mask.
        ValueError: no prompt and no BOS, a bad shape, an id outside the vocabulary, a mask of
            another shape or with values other than 0 and 1.
    """
    if input_ids is None:
        if gen.bos_token_id is None:
            raise ValueError("generate() needs input_ids or a bos_token_id to start from")
        input_ids = [[gen.bos_token_id]]
    ids = _as_int_array(input_ids, "input_ids")
    if ids.dtype == np.bool_:
        raise TypeError("input_ids must hold integers, got dtype bool")
    check_prompt_shape(ids.shape)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"input_ids contains {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab_size})"
        )
    ids = ids.astype(np.int64)
    if attention_mask is None:
        pad = gen.pad_token_id
        if pad is not None and pad not in gen.eos_token_ids and bool((ids == pad).any()):
            mask = (ids != pad).astype(np.int64)
        else:
            mask = np.ones_like(ids)
    else:
        mask = np.asarray(attention_mask)
        if mask.dtype.kind not in "iubf":
            raise TypeError(f"attention_mask must hold 0 and 1, got dtype {mask.dtype}")
        mask = mask[None] if mask.ndim == 1 else mask
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        mask = mask.astype(np.int64)
    if (mask[:, -1] == 0).any():
        logger.warning(RIGHT_PADDING_WARNING)
    return ids, mask


def prompt_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """(B, T0) position ids of a left-padded prompt: ``cumsum(mask) - 1``, pads at 1
    (transformers 4.x). The first new token's position is ``attention_mask.sum(-1)``."""
    mask = np.asarray(attention_mask)
    return np.where(mask != 0, np.cumsum(mask, axis=-1) - 1, 1).astype(np.int64)


def beam_filler(gen: GenerationConfig) -> int:
    """The id that fills beam buffers (and finished hypotheses after their end):
    transformers' ``pad_token_id or eos_token_id[0]`` (pad defaulting to the first EOS), or -1
    when there is no EOS (nothing ends early, so it is never returned)."""
    eos = gen.eos_token_ids
    if not eos:
        return -1
    return gen.effective_pad_token_id or eos[0]


def attention_scale(config: Any, layer_idx: int) -> float:
    """The factor on QK^T of layer ``layer_idx``: 1/sqrt(head_dim) (``scale_attn_weights``),
    divided by ``layer_idx + 1`` (``scale_attn_by_inverse_layer_idx``)."""
    scale = 1.0 / math.sqrt(config.n_embd // config.n_head) if config.scale_attn_weights else 1.0
    if config.scale_attn_by_inverse_layer_idx:
        scale /= float(layer_idx + 1)
    return scale


def problem_type(config: Any, labels_are_integers: bool) -> str:
    """The sequence classifier's loss: ``config.problem_type``, else transformers' inference --
    regression for one label, single-label for integer labels, else multi-label."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels_are_integers else "multi_label_classification"


# ----------------------------------------------------------------------------- processors
def banned_ngram_tokens(input_ids: np.ndarray, n: int) -> list[list[int]]:
    """Per row, the tokens that would complete an n-gram already present (fairseq's rule)."""
    cur_len = input_ids.shape[1]
    if cur_len + 1 < n:
        return [[] for _ in range(input_ids.shape[0])]
    banned = []
    for row in np.asarray(input_ids).tolist():
        seen: dict[tuple[int, ...], list[int]] = {}
        for gram in zip(*[row[i:] for i in range(n)]):
            seen.setdefault(tuple(gram[:-1]), []).append(gram[-1])
        banned.append(seen.get(tuple(row[cur_len + 1 - n : cur_len]), []))
    return banned


def process_logits(
    input_ids: np.ndarray,
    scores: np.ndarray,
    gen: GenerationConfig,
    new_tokens: int,
    min_new_tokens: int,
) -> np.ndarray:
    """transformers' logits processors, in its order, on (R, V) float32 ``scores``.

    Args:
        input_ids: (R, T) every token so far, the prompt (pads included) and the new ones.
        scores: (R, V) logits (greedy, sampling) or log-probabilities (beam search).
        gen: repetition_penalty, no_repeat_ngram_size and the EOS ids are read.
        new_tokens: tokens generated so far; EOS is banned while it is < ``min_new_tokens``.
    """
    scores = np.array(scores, np.float32)
    input_ids = np.asarray(input_ids)
    rows = np.arange(scores.shape[0])[:, None]
    if gen.repetition_penalty != 1.0:  # CTRL: divide positive, multiply negative scores
        p = np.float32(gen.repetition_penalty)
        seen = scores[rows, input_ids]
        scores[rows, input_ids] = np.where(seen < 0, seen * p, seen / p)
    if gen.no_repeat_ngram_size > 0:
        for i, banned in enumerate(banned_ngram_tokens(input_ids, gen.no_repeat_ngram_size)):
            scores[i, banned] = -np.inf
    if gen.eos_token_ids and new_tokens < min_new_tokens:
        scores[:, gen.eos_token_ids] = -np.inf
    return scores


def warp_logits(
    scores: np.ndarray, gen: GenerationConfig, min_tokens_to_keep: int = 1
) -> np.ndarray:
    """The sampling warpers in transformers' order: temperature, top-k, top-p (R, V)."""
    scores = np.array(scores, np.float32)
    if gen.temperature != 1.0:
        scores = scores / np.float32(gen.temperature)
    V = scores.shape[-1]
    if gen.top_k != 0:
        k = min(max(gen.top_k, min_tokens_to_keep), V)
        kth = -np.sort(-scores, axis=-1)[:, k - 1 : k]
        scores = np.where(scores < kth, -np.inf, scores).astype(np.float32)
    if gen.top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as transformers
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        e = np.exp(sorted_scores - sorted_scores.max(-1, keepdims=True))
        cum = np.cumsum(e / e.sum(-1, keepdims=True), axis=-1)
        remove_sorted = cum <= (1 - gen.top_p)
        remove_sorted[:, -min_tokens_to_keep:] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        scores = np.where(remove, -np.inf, scores).astype(np.float32)
    return scores


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    m = x.max(-1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))).astype(np.float32)


# ----------------------------------------------------------------------------- beam search
def _gather_beams(t: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """t (B, K, ...) gathered along the beam axis by idx (B, K')."""
    return np.take_along_axis(t, idx.reshape(idx.shape + (1,) * (t.ndim - 2)), axis=1)


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and indices of the k largest along the last axis; ties to the lower index."""
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(x, idx, axis=-1), idx


def init_beam_state(
    input_ids: np.ndarray, num_beams: int, max_length: int, filler: int
) -> dict[str, np.ndarray]:
    """The state before the first step; ``input_ids`` (B * K, T0) holds each prompt K times."""
    R, T0 = input_ids.shape
    B, K = R // num_beams, num_beams
    running_sequences = np.full((B, K, max_length), filler, np.int64)
    running_sequences[:, :, :T0] = np.asarray(input_ids).reshape(B, K, T0)
    running_beam_scores = np.zeros((B, K), np.float32)
    running_beam_scores[:, 1:] = BEAM_NEG  # only the first beam expands at step one
    running_beam_indices = np.full((B, K, max_length - T0), -1, np.int64)
    return {
        "running_sequences": running_sequences,
        "running_beam_scores": running_beam_scores,
        "running_beam_indices": running_beam_indices,
        "sequences": running_sequences.copy(),
        "beam_scores": np.full((B, K), BEAM_NEG, np.float32),
        "beam_indices": running_beam_indices.copy(),
        "is_sent_finished": np.zeros((B, K), bool),
        "is_early_stop_heuristic_unsatisfied": np.ones((B, 1), bool),
        "next_token_hits_stopping_criteria": np.zeros((B, 2 * K), bool),
    }


def beam_step(
    state: dict[str, np.ndarray],
    log_probs: np.ndarray,
    cur_len: int,
    prompt_len: int,
    max_length: int,
    gen: GenerationConfig,
) -> dict[str, np.ndarray]:
    """One step of transformers' vectorised beam search; a new state.

    Args:
        state: from :func:`init_beam_state` or the previous step.
        log_probs: (B * K, V) processed log-probabilities of the running beams' next token.
        cur_len: tokens in each running sequence before this step (prompt included).
        prompt_len / max_length: T0 and L.
        gen: num_beams, length_penalty, early_stopping and the EOS ids are read.
    """
    B, K = state["running_beam_scores"].shape
    V = log_probs.shape[-1]
    eos = np.asarray(gen.eos_token_ids, np.int64)
    lp, es = gen.length_penalty, gen.early_stopping
    beams_to_keep = max(2, 1 + len(eos)) * K  # enough that K survive if the best ones all end
    top_num_beam_mask = np.arange(beams_to_keep) < K

    scores = log_probs.reshape(B, K, V) + state["running_beam_scores"][:, :, None]
    topk_log_probs, topk_indices = _topk(scores.reshape(B, K * V), beams_to_keep)
    topk_beam = topk_indices // V
    topk_ids = topk_indices % V
    topk_running_sequences = _gather_beams(state["running_sequences"], topk_beam)
    topk_running_sequences[:, :, cur_len] = topk_ids
    topk_running_beam_indices = _gather_beams(state["running_beam_indices"], topk_beam)
    topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beam + np.arange(B)[:, None] * K

    # which candidates stop here (max length or EOS)
    hits = np.full((B, beams_to_keep), cur_len + 1 >= max_length)
    hits |= np.isin(topk_ids, eos)
    # the best K unfinished candidates keep running
    topk_running_log_probs = (topk_log_probs + hits * np.float32(BEAM_NEG)).astype(np.float32)
    nxt = _topk(topk_running_log_probs, K)[1]
    new = dict(state)
    new["running_sequences"] = _gather_beams(topk_running_sequences, nxt)
    new["running_beam_scores"] = _gather_beams(topk_running_log_probs, nxt)
    new["running_beam_indices"] = _gather_beams(topk_running_beam_indices, nxt)

    # finished candidates among the top K may enter the finished set
    just_finished = hits & top_num_beam_mask[None, :]
    fin = topk_log_probs / np.float32((cur_len + 1 - prompt_len) ** lp)
    full = state["is_sent_finished"].all(-1, keepdims=True) & (es is True)
    fin = fin + full * np.float32(BEAM_NEG)
    fin = fin + (~state["is_early_stop_heuristic_unsatisfied"]) * np.float32(BEAM_NEG)
    fin = (fin + (~just_finished) * np.float32(BEAM_NEG)).astype(np.float32)
    merged_scores = np.concatenate([state["beam_scores"], fin], axis=1)
    best = _topk(merged_scores, K)[1]
    new["sequences"] = _gather_beams(
        np.concatenate([state["sequences"], topk_running_sequences], axis=1), best
    )
    new["beam_scores"] = _gather_beams(merged_scores, best)
    new["beam_indices"] = _gather_beams(
        np.concatenate([state["beam_indices"], topk_running_beam_indices], axis=1), best
    )
    new["is_sent_finished"] = _gather_beams(
        np.concatenate([state["is_sent_finished"], just_finished], axis=1), best
    )

    # can a running beam still beat the worst finished one?
    if es == "never" and lp > 0.0:
        best_len = max_length - prompt_len
    else:
        best_len = cur_len + 1 - prompt_len
    best_running = new["running_beam_scores"][:, :1] / np.float32(best_len**lp)
    worst_finished = np.where(
        new["is_sent_finished"], new["beam_scores"].min(1, keepdims=True), np.float32(BEAM_NEG)
    )
    new["is_early_stop_heuristic_unsatisfied"] = state["is_early_stop_heuristic_unsatisfied"] & (
        best_running > worst_finished
    ).any(-1, keepdims=True)
    new["next_token_hits_stopping_criteria"] = hits
    return new


def beam_search_finished(state: dict[str, np.ndarray], gen: GenerationConfig) -> bool:
    """transformers' ``_beam_search_has_unfinished_sequences``, negated."""
    improvement_possible = bool(state["is_early_stop_heuristic_unsatisfied"].any())
    open_beam = not (bool(state["is_sent_finished"].all()) and gen.early_stopping is True)
    valid_continuations = not bool(state["next_token_hits_stopping_criteria"].all())
    return not (improvement_possible and open_beam and valid_continuations)


def finalize_beams(
    state: dict[str, np.ndarray], num_return_sequences: int, prompt_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``num_return_sequences`` hypotheses per prompt, cut after the longest one:
    sequences (B * n, T0 + new) and their scores (B * n,)."""
    n = num_return_sequences
    B, K, L = state["sequences"].shape
    sequences = state["sequences"][:, :n].reshape(B * n, L)
    scores = state["beam_scores"][:, :n].reshape(B * n)
    generated = int((state["beam_indices"][:, :n] >= 0).sum(-1).max())
    return sequences[:, : prompt_len + generated], scores
