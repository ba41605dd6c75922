"""int8 weight-only quantization (gpt2_core.quantize) in each framework's from_pretrained and
generate: logits equal the float64 reference on the dequantized weights (tight: only fp32
rounding differs), stay near the fp32 model's (the quantization error itself, bounded below),
and greedy decoding agrees between frameworks.

Why the fp32-vs-int8 tolerance is 6% of the logits' range: a weight moves by at most half a
step of its channel, step = max|w_channel| / 127; for these Gaussian weights max|w| is ~2.5
sigma over 36-144 inputs, so the rms error per weight is step / sqrt(12), ~0.6% of sigma, and
so is each product's relative rms error (random signs average over the inputs). Nine matrices
in a row (2 layers x 4 + the head) compound that to ~1.8%, the max over 257 x 7 logits adds a
little: measured with the float64 reference, 1.9-2.5% of the range for seeds 0-5 (real GPT-2
weights have wider layers and smaller relative errors). 6% leaves room for other seeds and
still fails for a wrong scale axis or a missing scale (errors of 10-100%).
"""

import numpy as np
import pytest

from gpt2_core import checkpoint, reference
from gpt2_core import cpu_kernels as K
from gpt2_core import quantize as Q
from gpt2_core.init import random_state_dict, tiny_config

CFG = tiny_config()
IDS = np.array([[5, 17, 200, 3, 99, 42, 7]])


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    checkpoint.save_pretrained(random_state_dict(CFG, "lm", seed=0, std=0.3), CFG, d, "lm")
    return d


@pytest.fixture(scope="module")
def dequantized(ckpt_dir):
    sd = checkpoint.load_pretrained(ckpt_dir, "lm")[1]
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    return Q.dequantize_state_dict(Q.quantize_state_dict(sd)), sd


def _torch(ckpt_dir, **kw):
    import torch

    from gpt2_torch import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, **kw)

    def logits(ids):
        with torch.no_grad():
            return model(torch.tensor(ids)).logits.double().numpy()

    def greedy(ids, n):
        with torch.no_grad():
            return model.generate(torch.tensor(ids), max_new_tokens=n, do_sample=False).numpy()

    return model, logits, greedy


def _tf(ckpt_dir, **kw):
    import tensorflow as tf

    from gpt2_tf import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, **kw)

    def logits(ids):
        return model(input_ids=tf.constant(ids)).logits.numpy().astype(np.float64)

    def greedy(ids, n):
        return np.asarray(model.generate(tf.constant(ids), max_new_tokens=n, do_sample=False))

    return model, logits, greedy


def _flax(ckpt_dir, **kw):
    import jax.numpy as jnp

    from gpt2_flax import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, **kw)

    def logits(ids):
        return np.asarray(model(jnp.asarray(ids)).logits, np.float64)

    def greedy(ids, n):
        return np.asarray(model.generate(jnp.asarray(ids), max_new_tokens=n, do_sample=False))

    return model, logits, greedy


BACKENDS = {"torch": _torch, "tf": _tf, "flax": _flax}


@pytest.mark.parametrize("fw", sorted(BACKENDS))
@pytest.mark.parametrize("kw", [{"quantize": "int8"}, {"dtype": "int8"}])
def test_int8_logits(fw, kw, ckpt_dir, dequantized):
    deq, sd = dequantized
    _, int8, _ = BACKENDS[fw](ckpt_dir, **kw)
    _, fp32, _ = BACKENDS[fw](ckpt_dir)
    got = int8(IDS)
    want = reference.lm_logits(deq, CFG, IDS)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2e-5 * scale  # the dequantized model, up to fp32 sums
    assert np.abs(got - fp32(IDS)).max() <= 0.06 * scale  # the quantization error itself


@pytest.mark.parametrize("fw", sorted(BACKENDS))
def test_int8_greedy_equals_the_dequantized_reference(fw, ckpt_dir, dequantized):
    deq, _ = dequantized
    _, _, greedy = BACKENDS[fw](ckpt_dir, quantize="int8")
    want = reference.greedy(deq, CFG, IDS[0].tolist(), 8)
    assert greedy(IDS, 8)[0].tolist() == want


@pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")
def test_torch_int8_decodes_through_the_fused_kernel(ckpt_dir):
    import torch

    from gpt2_torch.generation import _Decoder

    model, _, _ = _torch(ckpt_dir, quantize="int8")
    assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.int8
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: one int8 matrix
    d = _Decoder(model, 1, 12, torch.ones(1, 3, dtype=torch.long), compile=False)
    assert d.fused is not None and d.fused._step.wq == K.INT8
    assert d.fused_prompt  # the prompt too: the kernel's prefill, not dequantizing modules
    ids = torch.as_tensor(IDS[:1, :3])
    with torch.no_grad():
        got = d.prefill(ids).numpy()
        with K.disabled():
            slow = _Decoder(model, 1, 12, torch.ones(1, 3, dtype=torch.long), compile=False)
            assert not slow.fused_prompt
            want = slow.prefill(ids).numpy()
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()


@pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")
def test_tf_int8_decodes_through_the_fused_kernel(ckpt_dir, monkeypatch):
    built = []
    init = K.DecodeStep.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self.wq)

    monkeypatch.setattr(K.DecodeStep, "__init__", spy)
    model, _, greedy = _tf(ckpt_dir, quantize="int8")
    greedy(IDS, 3)
    assert built == [K.INT8]
    assert model.int8_weights["transformer.wte.weight"].dtype == np.int8


@pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")
@pytest.mark.parametrize("fw", sorted(BACKENDS))
def test_int8_prompt_through_the_kernel_prefill_beams_and_padding(fw, ckpt_dir, monkeypatch):
    """The int8 prompt runs through the kernel's prefill (one call for every row and token; in
    Flax the jax.ffi prefill handler inside the jitted program), with left padding and beams
    that share the prompt's cache: the same sequences as the all-framework int8 path (no
    kernel at all)."""
    calls = []
    if fw == "flax":
        from gpt2_flax import _cpu_kernels as FK

        prefill = FK.prefill_forward
        monkeypatch.setattr(FK, "prefill_forward", lambda *a: calls.append(1) or prefill(*a))
    else:
        prefill = K.DecodeStep.prefill
        monkeypatch.setattr(
            K.DecodeStep, "prefill", lambda self, *a, **k: calls.append(1) or prefill(self, *a, **k)
        )
    model, _, _ = BACKENDS[fw](ckpt_dir, quantize="int8")
    ids = np.array([[5, 17, 200, 3, 99], [0, 0, 8, 9, 10]])
    mask = (np.arange(5) >= np.array([[0], [2]])).astype(np.int64)
    kw = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    if fw == "torch":
        import torch

        def run():
            with torch.no_grad():
                return model.generate(
                    torch.tensor(ids), attention_mask=torch.tensor(mask), **kw
                ).numpy()
    elif fw == "tf":

        def run():
            return np.asarray(model.generate(ids, attention_mask=mask, **kw))
    else:
        import jax.numpy as jnp

        def run():
            return np.asarray(
                model.generate(jnp.asarray(ids), attention_mask=jnp.asarray(mask), **kw)
            )

    got = run()
    assert calls, "the prompt did not go through DecodeStep.prefill"
    with K.disabled():
        want = run()
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(K.load() is None, reason=f"CPU kernels: {K.status()}")
@pytest.mark.parametrize("tie", [True, False])
def test_flax_int8_decodes_through_the_ffi_kernel(ckpt_dir, tmp_path, tie):
    """gpt2_flax's jitted loop calls the fused step on the int8 matrices (jax.ffi): the same
    greedy tokens as the all-XLA int8 loop and the float64 reference, tied or untied head."""
    from gpt2_flax import _cpu_kernels as FK
    from gpt2_flax.generation import decode_engine

    if not tie:
        cfg = tiny_config(tie_word_embeddings=False)
        sd = random_state_dict(cfg, "lm", seed=2, std=0.3)
        checkpoint.save_pretrained(sd, cfg, tmp_path, "lm")
        ckpt_dir = tmp_path
    model, _, greedy = _flax(ckpt_dir, quantize="int8")
    if FK.load() is None:
        pytest.skip(f"Flax FFI kernel: {FK.status()}")
    assert FK.unsupported_reason(model, 1, 32) is None and decode_engine(model) == "cpu kernel"
    kernel = greedy(IDS, 10)[0].tolist()
    with K.disabled():
        xla = greedy(IDS, 10)[0].tolist()
    assert kernel == xla
    sd = checkpoint.load_pretrained(ckpt_dir, "lm")[1]
    deq = Q.dequantize_state_dict(Q.quantize_state_dict(sd))
    deq.setdefault("lm_head.weight", deq["transformer.wte.weight"])
    assert kernel == reference.greedy(deq, model.config, IDS[0].tolist(), 10)


def test_torch_bad_input(ckpt_dir, tmp_path):
    from gpt2_torch import GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"quantize='int4' is not supported"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, quantize="int4")
    with pytest.raises(ValueError, match=r"dtype='int4' is not supported"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, dtype="int4")
    import torch

    with pytest.raises(ValueError, match="keeps the layer norms"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, dtype=torch.bfloat16, quantize="int8")
    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, quantize="int8")
    with pytest.raises(ValueError, match="save_pretrained: this model is quantized"):
        model.save_pretrained(tmp_path)


def test_tf_bad_input(ckpt_dir, tmp_path):
    from gpt2_tf import GPT2LMHeadModel

    with pytest.raises(ValueError, match=r"quantize='int4' is not supported"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, quantize="int4")
    with pytest.raises(ValueError, match="keeps the layer norms"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, dtype="bf16", quantize="int8")
    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, dtype="int8")
    with pytest.raises(ValueError, match="save_pretrained: this model is quantized"):
        model.save_pretrained(tmp_path)


def test_flax_bad_input(ckpt_dir, tmp_path):
    from flax import nnx

    from gpt2_flax import GPT2LMHeadModel
    from gpt2_flax.quantize import Int8Weight

    with pytest.raises(ValueError, match=r"quantize='int4' is not supported"):
        GPT2LMHeadModel.from_pretrained(ckpt_dir, quantize="int4")
    model = GPT2LMHeadModel.from_pretrained(ckpt_dir, quantize="int8")
    int8 = jax_leaves(nnx.state(model, Int8Weight))
    assert len(int8) == 4 * CFG.n_layer + 1 and all(a.dtype == np.int8 for a in int8)
    with pytest.raises(ValueError, match="save_pretrained: this model is quantized"):
        model.save_pretrained(tmp_path)


def jax_leaves(state):
    import jax

    return jax.tree.leaves(state)


def test_cli_generate_quantize_int8_same_text_in_every_framework(tmp_path, capsys):
    import io

    from conversion import cli
    from conversion import generate as gen_cli
    from gpt2_core.config import GPT2Config
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    cfg = GPT2Config(
        n_layer=2,
        n_embd=24,
        n_head=3,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # GPT-2's vocabulary: any prompt encodes
    d = tmp_path / "model"
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0, std=0.3), cfg, d, "lm")
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(d)

    def run(*argv):
        args = cli.build_parser().parse_args(
            ["generate", "Hello world", "--model", str(d), "--max-new-tokens", "8", *argv]
        )
        out, err = io.StringIO(), io.StringIO()
        rc = gen_cli.run(args, stdin=io.StringIO(""), stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    texts = {}
    for fw in gen_cli.installed_frameworks():
        rc, out, err = run("--framework", fw, "--quantize", "int8")
        assert rc == 0, err
        texts[fw] = out
    assert len(set(texts.values())) == 1, texts
    assert (
        cli.main(["generate", "x", "--model", str(d), "--quantize", "int8", "--dtype", "bf16"]) == 1
    )
    assert "--quantize int8 keeps activations in fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "x", "--model", "m", "--quantize", "int4"])


@pytest.mark.parametrize("fw", sorted(BACKENDS))
def test_untied_head_int8(fw, tmp_path):
    """An untied LM head is quantized per vocabulary row too (TF's fused step reads it in the
    Dense kernel's (C, V) layout)."""
    cfg = tiny_config(tie_word_embeddings=False)
    sd = random_state_dict(cfg, "lm", seed=2, std=0.3)
    checkpoint.save_pretrained(sd, cfg, tmp_path, "lm")
    deq = Q.dequantize_state_dict(
        Q.quantize_state_dict(checkpoint.load_pretrained(tmp_path, "lm")[1])
    )
    _, logits, greedy = BACKENDS[fw](tmp_path, quantize="int8")
    want = reference.lm_logits(deq, cfg, IDS)
    assert np.abs(logits(IDS) - want).max() <= 2e-5 * np.abs(want).max()
    assert greedy(IDS, 6)[0].tolist() == reference.greedy(deq, cfg, IDS[0].tolist(), 6)


def test_serve_engine_int8(tmp_path):
    import torch

    from conversion import cli
    from conversion.serve import engine as engine_mod
    from gpt2_core.config import GPT2Config
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    cfg = GPT2Config(n_layer=2, n_embd=24, n_head=3, n_positions=64)
    checkpoint.save_pretrained(random_state_dict(cfg, "lm", seed=0, std=0.3), cfg, tmp_path, "lm")
    GPT2TokenizerFast.from_pretrained("gpt2").save_pretrained(tmp_path)
    engine = engine_mod.Engine.load(str(tmp_path), "torch", dtype="int8")
    assert engine.dtype == "int8" and engine.model.lm_head.weight.dtype == torch.int8
    result = engine.complete(
        engine.encode("Hello"), engine_mod.Sampling(max_tokens=3, temperature=0)
    )
    assert len(result.token_ids) == 3
    args = cli.build_parser().parse_args(["serve", "--model", "m", "--quantize", "int8"])
    assert args.quantize == "int8"
