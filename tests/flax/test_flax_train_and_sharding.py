"""Functional use (split/merge, jit, grad, an optax train step) and sharding on 4 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax_helpers import build, maxdiff

import gpt2_flax as gf
from gpt2_flax.sharding import ShardingConfig

IDS = np.random.default_rng(1).integers(0, 256, (4, 8))


def loss_fn(model, ids):
    return model(input_ids=ids, labels=ids, use_cache=False).loss


@nnx.jit
def train_step(model, optimizer, ids):
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids)
    optimizer.update(model, grads)
    return loss


@pytest.fixture(scope="module")
def weights():
    cfg, sd, _ = build("lm", seed=4, vocab_size=256)  # 256: the vocab splits over 2 or 4 devices
    return cfg, sd


def test_split_merge_jit_value_and_grad(weights):
    # the functional API: a pure jax.jit over (params, batch); gradients themselves are checked
    # against transformers' golden gradients in tests/test_backends.py
    cfg, sd = weights
    model = gf.GPT2LMHeadModel.from_state_dict(cfg, sd)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def value_and_grad(params, ids):
        return jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), ids))(params)

    loss, grads = value_and_grad(params, IDS)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(loss) == pytest.approx(float(nnx.jit(loss_fn)(model, IDS)), rel=1e-6)


def test_optax_train_step_lowers_the_loss(weights):
    cfg, sd = weights
    model = gf.GPT2LMHeadModel.from_state_dict(cfg, sd)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    losses = [float(train_step(model, optimizer, IDS)) for _ in range(4)]
    assert losses[-1] < losses[0]


@pytest.mark.skipif(
    jax.device_count() < 4, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4"
)
def test_sharded_logits_and_train_step_equal_unsharded(weights):
    cfg, sd = weights
    mesh = jax.make_mesh((2, 2), ("data", "model"))
    sharding = ShardingConfig.tensor_parallel()  # + data parallel on "data"
    ref = gf.GPT2LMHeadModel.from_state_dict(cfg, sd)
    model = gf.shard_model(gf.GPT2LMHeadModel.from_state_dict(cfg, sd), mesh, sharding)
    kernel = model.transformer.h[0].mlp.c_fc.kernel[...]
    assert len(kernel.sharding.device_set) == 4 and not kernel.is_fully_replicated
    ids = gf.shard_batch(jnp.asarray(IDS), mesh, sharding)
    logits = nnx.jit(lambda m, x: m(input_ids=x).logits)(model, ids)
    assert maxdiff(logits, nnx.jit(lambda m, x: m(input_ids=x).logits)(ref, IDS)) < 1e-5
    opt, ref_opt = (nnx.Optimizer(m, optax.sgd(0.5), wrt=nnx.Param) for m in (model, ref))
    for _ in range(1):
        loss, ref_loss = train_step(model, opt, ids), train_step(ref, ref_opt, IDS)
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    assert (
        maxdiff(
            model.transformer.h[1].attn.c_proj.kernel[...],
            ref.transformer.h[1].attn.c_proj.kernel[...],
        )
        < 1e-5
    )


def test_sharding_config_specs_and_errors(weights):
    cfg, sd = weights
    tp = ShardingConfig.tensor_parallel()
    P = jax.sharding.PartitionSpec
    assert tp.spec_for(("transformer", "h", 0, "attn", "c_attn", "kernel")) == P(None, "model")
    assert tp.spec_for(("transformer", "h", 0, "mlp", "c_proj", "kernel")) == P("model", None)
    assert ShardingConfig().spec_for(("transformer", "wte", "embedding")) is None
    fsdp = ShardingConfig.fsdp()
    assert fsdp.spec_for(("h", 1, "mlp", "c_fc", "kernel")) == P("data", None)
    if jax.device_count() >= 4:
        mesh = jax.make_mesh((4,), ("model",))
        bad = {k: v for k, v in sd.items() if k != "lm_head.weight"}
        bad["transformer.wte.weight"] = np.zeros((257, 36), np.float32)
        model = gf.GPT2LMHeadModel.from_state_dict(cfg.copy(vocab_size=257), bad)
        with pytest.raises(ValueError, match="not divisible"):
            gf.shard_model(
                model, mesh, ShardingConfig.tensor_parallel(data_axis=None, shard_vocab=True)
            )
