"""Forward-pass behaviour of the PyTorch models: flags, eager vs SDPA, static cache, losses, training.

Shapes, causality, cache, padding and bad input of every backend: tests/test_backends.py.
"""

import math

import pytest
import torch
from conftest import make_model

from gpt2_core.config import ACTIVATIONS
from gpt2_core.init import tiny_config
from gpt2_torch import (
    GPT2LMHeadModel,
    GPT2Model,
    StaticCache,
)

ATOL = 1e-4

FLAG_CONFIGS = {
    "default": {},
    "inverse_layer_idx": {"scale_attn_by_inverse_layer_idx": True},
    "upcast": {"reorder_and_upcast_attn": True},
    "noscale_untied": {"scale_attn_weights": False, "tie_word_embeddings": False},
    "eps_inner": {"layer_norm_epsilon": 1e-3, "n_inner": 50, "activation_function": "relu"},
}


def _close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def _left_pad(ids, n_pads):
    """Left-pad each row i by n_pads[i] (pad id 0): ids, mask and HF-style position ids."""
    mask = torch.ones_like(ids)
    ids = ids.clone()
    for i, n in enumerate(n_pads):
        ids[i] = torch.cat([torch.zeros(n, dtype=ids.dtype), ids[i, : ids.shape[1] - n]])
        mask[i, :n] = 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, pos


# ----------------------------------------------------------------------------- shapes and heads
def test_outputs_index_like_tuples(lm, ids):
    out = lm(ids, labels=ids)
    assert out[0] is out.loss and out[1] is out.logits
    tup = lm(ids, labels=ids, return_dict=False)
    _close(tup[0], out.loss)
    _close(tup[1], out.logits)
    assert len(lm(ids, use_cache=False).to_tuple()) == 1


def test_hidden_states_and_attentions(lm, ids):
    out = lm(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    w = out.attentions[0]
    assert w.shape == (3, 3, 9, 9)
    _close(w.sum(-1), torch.ones(3, 3, 9))
    assert torch.all(w.triu(1) == 0)  # causal
    base = lm.transformer(ids)
    _close(out.hidden_states[-1], base.last_hidden_state)


# ----------------------------------------------------------------------------- eager vs SDPA, flags
@pytest.mark.parametrize("name", FLAG_CONFIGS)
def test_sdpa_equals_eager_for_every_flag(name, ids):
    model = make_model("lm", **FLAG_CONFIGS[name])
    ids_p, mask, pos = _left_pad(ids, [0, 3, 8])
    for kwargs in ({}, {"attention_mask": mask, "position_ids": pos}):
        x = ids if not kwargs else ids_p
        sdpa = model(x, **kwargs).logits
        eager = model(x, output_attentions=True, **kwargs).logits
        _close(sdpa, eager)


def test_flags_change_the_output(ids):
    ref = make_model("lm")(ids).logits
    for name in ("inverse_layer_idx", "noscale_untied", "eps_inner"):
        other = make_model("lm", **FLAG_CONFIGS[name])(ids).logits
        assert (other - ref).abs().max() > 1e-3, name


def test_inverse_layer_idx_scales_layer_two_only(ids):
    # layer 0 divides by 1, so its attention weights are unchanged; layer 1's differ
    a = make_model("lm")(ids, output_attentions=True).attentions
    b = make_model("lm", scale_attn_by_inverse_layer_idx=True)(
        ids, output_attentions=True
    ).attentions
    _close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-3


def test_reorder_and_upcast_in_half_precision(ids):
    model = make_model("lm", reorder_and_upcast_attn=True)
    ref = model(ids).logits
    model_bf16 = make_model("lm", reorder_and_upcast_attn=True).to(torch.bfloat16)
    for kw in ({}, {"output_attentions": True}):
        out = model_bf16(ids, **kw)
        assert out.logits.dtype == torch.bfloat16
        assert (out.logits.float() - ref).abs().max() < 0.15 * ref.abs().max()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation(act, ids):
    model = make_model("base", activation_function=act)
    out = model(ids[:1]).last_hidden_state
    assert torch.isfinite(out).all()
    x = torch.linspace(-3, 3, 13)
    y = model.h[0].mlp.act(x)
    expected = {
        "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "relu": x.clamp(min=0),
        "silu": x * torch.sigmoid(x),
        "swish": x * torch.sigmoid(x),
        "tanh": torch.tanh(x),
        "sigmoid": torch.sigmoid(x),
        "linear": x,
        "quick_gelu": x * torch.sigmoid(1.702 * x),
    }.get(act, 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))
    _close(y, expected, atol=1e-6)


# ----------------------------------------------------------------------------- cache
def test_static_cache_equals_full_pass(lm, ids):
    full = lm(ids).logits
    cache = StaticCache.allocate(lm.config, batch_size=3, max_length=12)
    a = lm(ids[:, :5], past_key_values=cache, cache_position=torch.arange(5))
    assert a.past_key_values is cache
    b = lm(ids[:, 5:], past_key_values=cache, cache_position=torch.arange(5, 9))
    _close(torch.cat([a.logits, b.logits], 1), full)


# ----------------------------------------------------------------------------- padding
def test_fully_masked_rows_are_finite(lm, ids):
    ids_p, mask, pos = _left_pad(ids, [0, 8, 9])  # row 2 entirely padding
    for kw in ({}, {"output_attentions": True}):
        out = lm(ids_p, attention_mask=mask, position_ids=pos, **kw)
        assert torch.isfinite(out.logits).all()
    bf16 = make_model("lm").to(torch.bfloat16)
    assert torch.isfinite(bf16(ids_p, attention_mask=mask, position_ids=pos).logits).all()


# ----------------------------------------------------------------------------- losses
def test_lm_loss_shifts_and_ignores(lm, ids):
    labels = ids.clone()
    labels[:, :3] = -100
    out = lm(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, 257)
    ref = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    _close(out.loss, ref)


def test_problem_types_are_inferred_and_stored(ids):
    model = make_model("sequence_classification")
    model(ids, labels=torch.tensor([0, 2, 1]))
    assert model.config.problem_type == "single_label_classification"
    model = make_model("sequence_classification")
    out = model(ids, labels=torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1]]))
    assert model.config.problem_type == "multi_label_classification"
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits, torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1]])
    )
    _close(out.loss, ref)
    model = make_model("sequence_classification", num_labels=1)
    out = model(ids, labels=torch.tensor([0.5, -1.0, 2.0]))
    assert model.config.problem_type == "regression"
    _close(out.loss, ((out.logits.squeeze() - torch.tensor([0.5, -1.0, 2.0])) ** 2).mean())


def test_question_answering_clamps_positions(ids):
    model = make_model("question_answering")
    out = model(
        ids, start_positions=torch.tensor([1, 50, 3]), end_positions=torch.tensor([2, 4, -5])
    )
    T = ids.shape[1]
    s = torch.nn.functional.cross_entropy(out.start_logits, torch.tensor([1, T, 3]), ignore_index=T)
    e = torch.nn.functional.cross_entropy(out.end_logits, torch.tensor([2, 4, 0]), ignore_index=T)
    _close(out.loss, (s + e) / 2)


def test_double_heads_losses_and_summary_variants(ids):
    x = ids[:2, :6].reshape(1, 2, 6)
    model = make_model("double_heads")
    out = model(x, mc_token_ids=torch.tensor([[5, 2]]), labels=x, mc_labels=torch.tensor([1]))
    assert out.loss.ndim == 0 and out.mc_loss.ndim == 0
    assert model.config.num_labels == 1
    for summary_type in ("last", "first", "mean"):
        # transformers' quirk, kept: these index dim 1 of (B, N, T, C), i.e. the *choices*
        m = make_model("double_heads", summary_type=summary_type, summary_activation="tanh")
        assert m(x).mc_logits.shape == (1, 6)
    m = make_model("double_heads", summary_proj_to_labels=False)
    assert m(x).mc_logits.shape == (1, 2, 36)


def test_token_classification_loss(ids):
    model = make_model("token_classification")
    labels = ids % 3
    labels[:, 0] = -100
    out = model(ids, labels=labels)
    _close(
        out.loss, torch.nn.functional.cross_entropy(out.logits.reshape(-1, 3), labels.reshape(-1))
    )


# ----------------------------------------------------------------------------- other inputs
def test_token_type_ids_and_inputs_embeds(lm, ids):
    tt = torch.ones_like(ids)
    a = lm(ids, token_type_ids=tt).logits
    emb = lm.transformer.wte(ids) + lm.transformer.wte(tt)
    _close(lm(inputs_embeds=emb).logits, a)


def test_head_mask_zeroes_a_head(lm, ids):
    hm = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    out = lm(ids, head_mask=hm, output_attentions=True)
    assert torch.all(out.attentions[0][:, 1] == 0)
    assert (out.logits - lm(ids).logits).abs().max() > 1e-3
    _close(lm(ids, head_mask=torch.ones(3)).logits, lm(ids).logits)


def test_cross_attention(ids):
    model = make_model("lm", add_cross_attention=True)
    enc = torch.randn(3, 4, 36)
    enc_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = model(
        ids,
        encoder_hidden_states=enc,
        encoder_attention_mask=enc_mask,
        output_attentions=True,
        use_cache=True,
    )
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 3, 9, 4)
    assert torch.all(out.cross_attentions[0][1, :, :, 2:] == 0)
    assert len(out.past_key_values[0]) == 4
    # masked encoder positions do not matter
    enc2 = enc.clone()
    enc2[1, 2:] += 5.0
    out2 = model(ids, encoder_hidden_states=enc2, encoder_attention_mask=enc_mask)
    _close(out2.logits[1], out.logits[1])
    # cached decoding reuses the encoder keys
    a = model(
        ids[:, :5], encoder_hidden_states=enc, encoder_attention_mask=enc_mask, use_cache=True
    )
    b = model(
        ids[:, 5:],
        encoder_hidden_states=enc,
        encoder_attention_mask=enc_mask,
        past_key_values=a.past_key_values,
    )
    _close(torch.cat([a.logits, b.logits], 1), out.logits)
    with pytest.raises(ValueError, match="cross-attention"):
        make_model("lm")(ids, encoder_hidden_states=enc)


# ----------------------------------------------------------------------------- training
def test_init_follows_transformers():
    cfg = tiny_config(n_embd=96, n_head=4, vocab_size=300, n_layer=3)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    std = cfg.initializer_range
    assert abs(model.transformer.h[0].attn.c_attn.weight.std().item() - std) < 0.003
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(proj - std / math.sqrt(2 * cfg.n_layer)) < 0.002
    assert torch.all(model.transformer.h[0].ln_1.weight == 1)
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)
    untied = GPT2LMHeadModel(tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_dropout_only_in_train_mode(ids):
    model = make_model("lm", attn_pdrop=0.3, resid_pdrop=0.3, embd_pdrop=0.3)
    _close(model(ids).logits, model(ids).logits)
    model.train()
    assert (model(ids).logits - model(ids).logits).abs().max() > 1e-3


def test_gradients_with_checkpointing_equal_plain(ids):
    grads = []
    for ckpt in (False, True):
        model = make_model("lm")
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable()
        out = model(ids, labels=ids, use_cache=True)
        assert (out.past_key_values is None) == ckpt  # checkpointing forces use_cache off
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        _close(grads[1][name], grads[0][name], atol=1e-5)
    # the tied head gets the sum of both gradient paths in one tensor
    assert "lm_head.weight" not in grads[0]


def test_train_step_lowers_loss(ids):
    model = make_model("lm", std=0.1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(lm, ids):
    # the checks shared by every backend are in tests/test_backends.py
    with pytest.raises(ValueError, match="position_ids"):
        past = lm(ids, use_cache=True).past_key_values  # 9 cached + 25 new > 32 positions
        lm(torch.ones(3, 25, dtype=torch.long), past_key_values=past)
    with pytest.raises(ValueError, match="inputs_embeds"):
        lm(inputs_embeds=torch.zeros(3, 9, 35))
    with pytest.raises(TypeError, match="GPT2Config"):
        GPT2Model({"n_layer": 2})


def test_double_heads_rejects_bad_mc_token_ids(ids):
    model = make_model("double_heads")
    with pytest.raises(ValueError, match="mc_token_ids"):
        model(ids[:2, :6].reshape(1, 2, 6), mc_token_ids=torch.tensor([[6, 0]]))


def test_module_tree_is_the_canonical_schema():
    from gpt2_core import naming

    for head in naming.HEADS:
        model = make_model(head, add_cross_attention=True)
        expected = naming.expected_shapes(model.config, head)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert got == expected, head
