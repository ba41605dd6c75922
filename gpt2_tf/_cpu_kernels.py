"""TF side of the CPU decoding kernels (:mod:`gpt2_core.cpu_kernels`): generation's one seam.

With fp32 or bf16 weights on a CPU and no accelerator visible, ``generate`` runs the prompt
(XLA's prefill in the model's compute dtype; bf16 and int8 matrices through the kernel's own
prefill, :func:`gpt2_core.cpu_kernels.kernel_prefill`) and
the compiled token choice (``_generation_functions(spec)["select"]``: processors, sampling or
beam search, stopping) and does each token's forward here, on the host, through
:class:`gpt2_core.cpu_kernels.DecodeStep` over zero-copy views of the Keras variables (bf16
matrices are read as they are, widened in registers; activations and the cache are fp32). Plain
greedy search (no repetition penalty or n-gram ban) chooses on the host too: an argmax needs
no compiled call, which costs ~1.3 ms per token. Nothing here is traced; the traced code only
builds the loop state around the kernel's prompt logits (``prefill_state``).

Example:
    >>> from gpt2_tf import _cpu_kernels
    >>> _cpu_kernels.unsupported_reason(model, rows=1, slots=64)   # None: the kernel decodes
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from gpt2_core import cpu_kernels


def slot_bias(mask: np.ndarray) -> np.ndarray:
    """The fused step's additive mask over cache slots: 0 where ``mask`` (R, S) is 1, else
    half the float32 minimum (finite, as the model's own padding mask)."""
    return np.where(mask == 1, np.float32(0), np.float32(np.finfo(np.float32).min / 2))


#: (variable dtype, compute dtype) pairs the fused step serves: fp32, and bf16 weights (the
#: "bfloat16" policy), which the kernel reads as they are (half the bytes) with fp32
#: activations and cache, as gpt2_torch's bf16 models. Mixed policies (fp32 variables, bf16 or
#: fp16 compute) keep the all-XLA loop: the kernel would compute them in fp32.
STEP_POLICIES = (("float32", "float32"), ("bfloat16", "bfloat16"))


def unsupported_reason(model: Any, rows: int, slots: int) -> str | None:
    """``None`` when decoding can run through :class:`gpt2_core.cpu_kernels.DecodeStep`
    (fp32 or bf16 weights on the CPU, no accelerator, no cross-attention), else why not."""
    reason = cpu_kernels.DecodeStep.unsupported_reason(model.config, rows, slots)
    if reason is not None:
        return reason
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return "an accelerator is visible (the XLA loop runs there)"
    compute = model.transformer.compute_dtype
    for v in model.weights:
        if (v.dtype, compute) not in STEP_POLICIES:
            return f"variable {v.path} is {v.dtype} with compute dtype {compute}"
        device = getattr(getattr(v, "value", v), "device", "") or ""
        if device and "CPU" not in device.upper():
            return f"variable {v.path} is on {device}"
    return None


def kernel_weights(model: Any) -> tuple[dict[str, np.ndarray], bool, list]:
    """Canonical name -> zero-copy numpy view of each variable (a read of the variable: later
    assignments copy-on-write, so the views stay valid and unchanged), whether the LM head is
    stored (C, V), and the tensors to keep alive."""
    from gpt2_tf import weights as W

    arrays, keep = {}, []
    for name, var in W.variable_map(model).items():
        v = getattr(var, "value", var)
        t = v.read_value() if hasattr(v, "read_value") else tf.convert_to_tensor(v)
        try:
            a = t._numpy()  # shares the CPU buffer
        except AttributeError:
            a = np.asarray(t)
        keep.append(t)
        arrays[name] = a
    head_transposed = "lm_head.weight" in arrays and "lm_head.weight" in W.TRANSPOSED
    arrays.update(getattr(model, "int8_weights", {}))  # gpt2_tf.quantize: int8 + scales
    arrays.setdefault("lm_head.weight", arrays["transformer.wte.weight"])  # tied
    return arrays, head_transposed, keep


def generate(
    model: Any,
    spec: Any,
    ids_t,
    mask_t,
    positions,
    sc: dict,
    streamer,
    ids: np.ndarray,
    max_new: int,
    min_new: int,
) -> tuple[np.ndarray, int]:
    """The prefill (XLA's, or the kernel's: see :func:`gpt2_core.cpu_kernels.kernel_prefill`),
    then per token one compiled ``select`` and one kernel forward. Returns the (R, S) sequences and the number of
    new tokens."""
    fns = model._generation_functions(spec)
    Tb, R = spec.prompt_len, spec.rows
    weights, head_transposed, keep = kernel_weights(model)
    prompt = None
    if cpu_kernels.kernel_prefill(weights["transformer.wte.weight"].dtype, spec.batch * Tb):
        cfg, B, S = model.config, spec.batch, spec.slots
        shape = (B, cfg.n_head, S, cfg.n_embd // cfg.n_head)
        keys = [np.zeros(shape, np.float32) for _ in range(cfg.n_layer)]
        values = [np.zeros(shape, np.float32) for _ in range(cfg.n_layer)]
        prompt = cpu_kernels.DecodeStep(
            cfg, weights, keys, values, B, head_transposed=head_transposed
        )
        mask = mask_t.numpy()
        logits = prompt.prefill(
            ids_t.numpy(), positions.numpy(), slot_bias(np.pad(mask, [(0, 0), (0, S - Tb)]))
        )
        state = dict(fns["prefill_state"](ids_t, mask_t, positions, sc, tf.constant(logits)))
        if spec.expand > 1:  # the beams / return sequences of each prompt share its cache
            keys = [np.repeat(k, spec.expand, axis=0) for k in keys]
            values = [np.repeat(v, spec.expand, axis=0) for v in values]
    else:
        state = dict(fns["prefill"](ids_t, mask_t, positions, sc))
        cache = state.pop("cache")
        keys = [np.array(k.numpy(), np.float32) for k, _ in cache]  # writable (R, H, S, D)
        values = [np.array(v.numpy(), np.float32) for _, v in cache]
    if prompt is not None and spec.expand == 1:
        step_fn = prompt  # its B rows are the R rows
    else:
        step_fn = cpu_kernels.DecodeStep(
            model.config, weights, keys, values, R, head_transposed=head_transposed
        )
    try:
        if spec.mode == "greedy" and not spec.repetition and not spec.ngram:
            return _greedy(spec, state, step_fn, sc, streamer, ids, max_new, min_new)
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
            if spec.mode == "beam":  # the rows follow their source beams
                idx = state["beam_idx"].numpy()
                if not np.array_equal(idx, identity):
                    for buf in (*keys, *values):
                        buf[...] = buf[idx]
            logits = step_fn(
                state["tokens"].numpy(),
                state["pos"].numpy() - 1,
                slot_bias(state["mask"].numpy()),
                Tb + step - 1,
            )
            state["logits"] = tf.constant(logits)
        if streamer is not None:
            streamer.end()
        seq, n_new = model._gen_result(spec, state)
        return seq.numpy(), int(n_new)
    finally:
        del keep


def _greedy(
    spec: Any, state: dict, step_fn, sc: dict, streamer, ids: np.ndarray, max_new: int, min_new: int
) -> tuple[np.ndarray, int]:
    """Greedy search on the host, step for step what the compiled ``_sample_select`` does:
    EOS suppressed before ``min_new_tokens``, argmax (first maximum), finished rows padded,
    stop when every row has emitted an EOS."""
    Tb = spec.prompt_len
    seq = np.array(state["seq"])  # (R, S) writable copies
    mask = np.array(state["mask"])
    pos = np.array(state["pos"], np.int64)
    logits = np.asarray(state["logits"])
    done = np.zeros(seq.shape[0], bool)
    pad, eos = int(sc["pad"]), np.asarray(sc["eos"], np.int64).reshape(-1)
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
        logits = step_fn(tokens, pos, slot_bias(mask), cur)
        pos += 1
    if streamer is not None:
        streamer.end()
    return seq, step
