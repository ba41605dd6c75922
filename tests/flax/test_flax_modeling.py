"""Forward behaviour of the Flax GPT-2: reference numerics, cache, padding, flags, heads."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax_helpers import FLAGS, build, jrun, maxdiff

import gpt2_flax as gf
from gpt2_core.init import tiny_config
from gpt2_core.reference import lm_logits

RNG = np.random.default_rng(0)
IDS = RNG.integers(1, 257, (2, 7))


def test_logits_match_numpy_reference():
    # every config flag at once; tests/test_backends.py covers each golden case against HF
    cfg, sd, model = build("lm", seed=3, **FLAGS)
    got = jrun(model, input_ids=IDS).logits
    assert maxdiff(got, lm_logits(sd, cfg, IDS)) < 2e-4


def test_left_padded_logits_match_numpy_reference(lm):
    # padding equals the unpadded run in every backend: tests/test_backends.py
    cfg, sd, model = lm
    ids = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = (np.arange(5)[None] >= np.array([[2], [0]])).astype(np.int32)
    pos = np.where(mask, np.cumsum(mask, 1) - 1, 1)
    out = jrun(model, input_ids=ids, attention_mask=mask, position_ids=pos).logits
    ref = lm_logits(sd, cfg, ids, attention_mask=mask, position_ids=pos)
    assert maxdiff(out[0, 2:], ref[0, 2:]) < 2e-4 and maxdiff(out[1], ref[1]) < 2e-4


def test_static_cache_equals_full_pass(lm):
    # the tuple cache of every backend: tests/test_backends.py
    cfg, _, model = lm
    full = jrun(model, input_ids=IDS).logits
    cache = gf.StaticCache.allocate(cfg, 2, 16)
    mask = jnp.ones((2, 16), jnp.int32)
    a = jrun(model, input_ids=IDS[:, :3], past_key_values=cache, attention_mask=mask)
    b = jrun(model, input_ids=IDS[:, 3:], past_key_values=a.past_key_values, attention_mask=mask)
    assert int(b.past_key_values.index) == 7
    assert maxdiff(jnp.concatenate([a.logits, b.logits], 1), full) < 1e-5


def test_outputs_fields_tuple_and_pytree(lm):
    cfg, _, model = lm
    out = jrun(model, input_ids=IDS, labels=IDS, output_hidden_states=True, output_attentions=True)
    assert list(out) == ["loss", "logits", "past_key_values", "hidden_states", "attentions"]
    assert len(out.hidden_states) == cfg.n_layer + 1
    assert out.attentions[0].shape == (2, cfg.n_head, 7, 7)
    tup = jrun(model, input_ids=IDS, labels=IDS, use_cache=False, return_dict=False)
    assert len(tup) == 2 and maxdiff(tup[0], out.loss) == 0
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, labels=x))(state, IDS)
    assert type(jitted) is type(out) and maxdiff(jitted.logits, out.logits) < 1e-5


def test_lm_loss_matches_manual_shifted_ce(lm):
    _, _, model = lm
    labels = IDS.copy()
    labels[0, 3] = -100
    out = jrun(model, input_ids=IDS, labels=labels)
    logp = jax.nn.log_softmax(np.asarray(out.logits, np.float64), -1)
    picks = [
        -logp[b, t, labels[b, t + 1]]
        for b in range(2)
        for t in range(6)
        if labels[b, t + 1] != -100
    ]
    assert abs(float(out.loss) - np.mean(picks)) < 1e-5


def test_token_type_ids_head_mask_and_inputs_embeds(lm):
    cfg, _, model = lm
    base = jrun(model, input_ids=IDS).logits
    emb = model.transformer.wte.embedding[...][IDS]
    assert maxdiff(jrun(model, inputs_embeds=emb).logits, base) < 1e-5
    assert (
        maxdiff(jrun(model, input_ids=IDS, token_type_ids=np.zeros_like(IDS)).logits, base) > 1e-3
    )
    ones = jrun(model, input_ids=IDS, head_mask=np.ones((cfg.n_head,), np.float32)).logits
    assert maxdiff(ones, base) < 1e-6
    off = jrun(
        model,
        input_ids=IDS,
        head_mask=np.array([[1, 0, 1], [1, 1, 1]], np.float32),
        output_attentions=True,
    )
    assert float(jnp.abs(off.attentions[0][:, 1]).max()) == 0.0


def test_sequence_classification_pooling_and_qa_clamping():
    # numerics of every head are checked against transformers in tests/test_backends.py
    _, _, seq = build("sequence_classification", num_labels=3, pad_token_id=0)
    padded = np.array([[0, 0, 5, 6, 7], [5, 6, 7, 0, 0]])  # left and right padding
    out = jrun(seq, input_ids=padded, labels=np.array([1, 2]), output_hidden_states=True)
    per_token = seq.score(out.hidden_states[-1])
    assert out.logits.shape == (2, 3) and np.isfinite(float(out.loss))
    assert maxdiff(out.logits[0], per_token[0, 4]) < 1e-6  # last non-pad token
    assert maxdiff(out.logits[1], per_token[1, 2]) < 1e-6
    multi = jrun(seq, input_ids=padded, labels=np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    x, y = np.asarray(multi.logits, np.float64), np.array([[1.0, 0, 1], [0, 1, 0]])
    bce = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
    assert abs(float(multi.loss) - bce) < 1e-5
    _, _, qa = build("question_answering")
    q = jrun(
        qa, input_ids=IDS[:, :5], start_positions=np.array([1, 99]), end_positions=np.array([3, 2])
    )
    logp = jax.nn.log_softmax(np.asarray(q.start_logits, np.float64), -1)
    logq = jax.nn.log_softmax(np.asarray(q.end_logits, np.float64), -1)
    # start 99 is clamped to T=5 and ignored: only row 0 counts for the start loss
    want = (-logp[0, 1] + (-logq[0, 3] - logq[1, 2]) / 2) / 2
    assert abs(float(q.loss) - want) < 1e-5


def test_regression_single_label_sequence_classification():
    _, _, seq = build("sequence_classification", num_labels=1, pad_token_id=0)
    out = jrun(seq, input_ids=IDS[:, :4], labels=np.array([0.5, -1.0], np.float32))
    assert out.logits.shape == (2, 1)
    want = np.mean((np.asarray(out.logits)[:, 0] - np.array([0.5, -1.0])) ** 2)
    assert abs(float(out.loss) - want) < 1e-5


def test_cross_attention_runs_and_uses_encoder():
    cfg, _, model = build("lm", add_cross_attention=True)
    enc = RNG.standard_normal((2, 4, 36)).astype(np.float32)
    out = jrun(model, input_ids=IDS, encoder_hidden_states=enc, output_attentions=True)
    assert out.cross_attentions[0].shape == (2, cfg.n_head, 7, 4)
    masked = jrun(
        model,
        input_ids=IDS,
        encoder_hidden_states=enc,
        encoder_attention_mask=np.array([[1, 1, 0, 0], [1, 1, 1, 1]]),
        output_attentions=True,
    )
    assert float(jnp.abs(masked.cross_attentions[0][0, :, :, 2:]).max()) == 0.0


def test_dropout_train_and_eval_modes():
    cfg, sd, _ = build("lm", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model = gf.GPT2LMHeadModel.from_state_dict(cfg, sd)  # eval mode after loading
    a, b = jrun(model, input_ids=IDS).logits, jrun(model, input_ids=IDS).logits
    assert maxdiff(a, b) == 0
    model.train()
    c, d = jrun(model, input_ids=IDS).logits, jrun(model, input_ids=IDS).logits
    assert maxdiff(c, a) > 1e-3 and maxdiff(c, d) > 1e-3  # streams advance between calls
    assert maxdiff(jrun(model, input_ids=IDS, deterministic=True).logits, a) == 0
    model.eval()
    assert maxdiff(jrun(model, input_ids=IDS).logits, a) == 0


def test_bfloat16_compute_runs():
    cfg = tiny_config()
    model = gf.GPT2LMHeadModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = jrun(model, input_ids=IDS)
    assert (
        out.logits.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out.logits, np.float32)).all()
    )
    assert model.transformer.wte.embedding[...].dtype == jnp.bfloat16


def test_random_init_follows_config():
    cfg = tiny_config(initializer_range=0.05, n_layer=4)
    model = gf.GPT2Model(cfg, rngs=nnx.Rngs(0))
    c_fc = np.asarray(model.h[0].mlp.c_fc.kernel[...])
    c_proj = np.asarray(model.h[0].mlp.c_proj.kernel[...])
    assert abs(c_fc.std() - 0.05) < 0.01
    assert abs(c_proj.std() - 0.05 / np.sqrt(8)) < 0.005  # GPT-2's scaled residual init
    assert float(jnp.abs(model.h[0].attn.c_attn.bias[...]).max()) == 0
    assert model.num_parameters() == cfg.num_parameters("base")
