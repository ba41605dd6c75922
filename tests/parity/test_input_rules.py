"""One rule per input, the same in all three backends (issue #12; docs/architecture.md,
"One rule per input"): 1-D and empty ids, dtype spellings, the all-ignored loss, unseeded
sampling, and special ids outside a custom vocabulary."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpt2_core import checkpoint
from gpt2_core.init import random_state_dict, tiny_config

FRAMEWORKS = ("torch", "tf", "flax")
MODULES = {"torch": "torch", "tf": "tensorflow", "flax": "flax"}


class Backend:
    """The LM model of one framework, called with numpy inputs."""

    def __init__(self, framework: str, cfg=None, directory=None):
        pytest.importorskip(MODULES[framework])
        self.fw = framework
        cfg = cfg or tiny_config()
        sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
        if framework == "torch":
            from gpt2_torch import GPT2LMHeadModel, weights

            self.model = GPT2LMHeadModel(cfg)
            weights.load_canonical(self.model, sd)
            self.model.eval()
        elif framework == "tf":
            from gpt2_tf import GPT2LMHeadModel, load_canonical

            self.model = GPT2LMHeadModel(cfg)
            load_canonical(self.model, sd)
        else:
            from gpt2_flax import GPT2LMHeadModel

            self.model = GPT2LMHeadModel.from_state_dict(cfg, sd)
        self.cls = type(self.model)

    def arr(self, x):
        x = np.asarray(x)
        if self.fw == "torch":
            import torch

            return torch.from_numpy(x.astype(np.int64))
        if self.fw == "tf":
            import tensorflow as tf

            return tf.constant(x.astype(np.int32))
        import jax.numpy as jnp

        return jnp.asarray(x.astype(np.int32))

    def forward(self, ids, **kw):
        kw = {k: self.arr(v) for k, v in kw.items()}
        return self.model(input_ids=self.arr(ids), **kw)

    def generate(self, ids, **kw):
        return np.asarray(self.model.generate(self.arr(ids), **kw))

    def loss(self, ids, labels) -> float:
        out = self.forward(ids, labels=labels)
        loss = out.loss
        return float(loss.detach().numpy() if self.fw == "torch" else np.asarray(loss))


@pytest.fixture(params=FRAMEWORKS)
def backend(request):
    return Backend(request.param)


def test_one_dimensional_ids_are_refused_with_a_hint(backend):
    with pytest.raises(
        ValueError,
        match=r"must have shape \(batch, seq_len\), got \(3,\): add "
        r"a batch axis \(input_ids\[None\]\)",
    ):
        backend.forward([1, 2, 3])


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0,)])
def test_empty_ids_are_refused(backend, shape):
    with pytest.raises(ValueError, match="empty|add a batch axis"):
        backend.forward(np.zeros(shape, np.int64))


def test_generate_takes_a_one_dimensional_prompt_and_refuses_an_empty_one(backend):
    out = backend.generate([1, 2, 3], max_new_tokens=2)
    assert out.shape == (1, 5)
    with pytest.raises(ValueError, match="at least one token, got \\(1, 0\\)"):
        backend.generate(np.zeros((1, 0), np.int64), max_new_tokens=2)


def test_all_ignored_labels_give_nan(backend):
    assert np.isnan(backend.loss([[1, 2, 3]], [[-100, -100, -100]]))
    assert np.isfinite(backend.loss([[1, 2, 3]], [[-100, 5, 6]]))


def test_unseeded_sampling_differs_and_seeded_repeats(backend):
    kw = dict(max_new_tokens=12, do_sample=True, top_k=0)
    draws = {tuple(backend.generate([[1, 2, 3]], **kw)[0]) for _ in range(3)}
    assert len(draws) > 1
    seeded = {tuple(backend.generate([[1, 2, 3]], seed=4, **kw)[0]) for _ in range(2)}
    assert len(seeded) == 1


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    "dtype,want",
    [
        ("bf16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        ("fp16", "float16"),
        ("float32", "float32"),
        ("auto", "bfloat16"),
    ],
)
def test_dtype_spellings(framework, dtype, want, tmp_path):
    pytest.importorskip(MODULES[framework])
    cfg = tiny_config()
    checkpoint.save_pretrained(
        random_state_dict(cfg, "lm", seed=0), cfg, tmp_path, "lm", dtype="bf16"
    )
    ids = np.array([[1, 2, 3]])
    if framework == "torch":
        import torch

        from gpt2_torch import GPT2LMHeadModel

        logits = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype)(
            torch.from_numpy(ids)
        ).logits
    elif framework == "tf":
        from gpt2_tf import GPT2LMHeadModel

        logits = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype)(input_ids=ids).logits
    else:
        from gpt2_flax import GPT2LMHeadModel

        logits = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype, param_dtype=dtype)(
            input_ids=ids
        ).logits
    assert str(logits.dtype).rsplit(".", 1)[-1].strip("'>").removeprefix("<dtype: '") == want


def test_dtype_typo_is_named():
    from gpt2_core.inputs import dtype_name

    with pytest.raises(ValueError, match="unsupported dtype 'bf61'"):
        dtype_name("bf61")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_special_ids_outside_a_custom_vocabulary(framework, caplog):
    """transformers keeps bos/eos 50256 in a model saved with vocab_size 300 and generates with
    it: an EOS the model can never emit is accepted with one warning."""
    cfg = tiny_config(vocab_size=300, bos_token_id=50256, eos_token_id=50256)
    b = Backend(framework, cfg)
    with caplog.at_level(logging.WARNING):
        greedy = b.generate([[1, 2, 3]], max_new_tokens=4)
        beams = b.generate([[1, 2, 3]], max_new_tokens=4, num_beams=2)
    assert greedy.shape == beams.shape == (1, 7)
    assert (greedy < 300).all() and (beams < 300).all()
    # bos is used only without a prompt: then it must fit
    with pytest.raises(ValueError, match="bos_token_id 50256 is outside the vocabulary"):
        b.model.generate(None, max_new_tokens=2)
