"""attn_implementation in every backend: each implementation available on this machine against
transformers 4.57.6's golden outputs (tests/fixtures/hf4576), with the attention flags
(scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, scale_attn_weights=False), padding
and generation; implementations that cannot run here are refused with a clear error."""

import importlib

import golden
import numpy as np
import pytest

from conversion.generate import installed_frameworks
from gpt2_core import checkpoint, naming
from gpt2_core.config import GPT2Config

FRAMEWORKS = installed_frameworks()
CASES = ("default", "flags", "noscale")


def _available() -> list[tuple[str, str]]:
    out = []
    for fw in FRAMEWORKS:
        out.append((fw, "eager"))
        if fw == "torch":
            out.append((fw, "sdpa"))
            import torch

            from gpt2_torch.modeling import flash_attention_unavailable

            if flash_attention_unavailable(torch.device("cuda"), torch.float16) is None:
                out.append((fw, "flash_attention_2"))
        if fw == "flax":
            out.append((fw, "sdpa"))
            import jax

            if jax.default_backend() == "gpu":
                out.append((fw, "cudnn"))
    return out


@pytest.fixture(scope="module")
def ckpt_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attn")
    dirs = {}
    for name in CASES:
        case = golden.load_case(name)
        cfg = GPT2Config.from_dict(case.config_dict)
        sd, _ = naming.normalize_state_dict(case.weights, cfg, "lm")
        checkpoint.save_pretrained(sd, cfg, root / name, "lm")
        dirs[name] = root / name
    return dirs


def _load(fw, directory, impl, **kw):
    mod = importlib.import_module(f"gpt2_{fw}")
    return mod.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation=impl, **kw)


def _logits(fw, model, inputs):
    kw = {k: v.astype(np.int64) for k, v in inputs.items() if k != "labels"}
    if fw == "torch":
        import torch

        with torch.no_grad():
            kw = {k: torch.as_tensor(v) for k, v in kw.items()}
            return model(**kw).logits.float().cpu().numpy()
    return np.asarray(model(**kw).logits, dtype=np.float32)


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("fw,impl", _available())
def test_implementation_matches_transformers(ckpt_dirs, fw, impl, case_name):
    case = golden.load_case(case_name)
    if impl in ("flash_attention_2", "cudnn") and case.config_dict.get("reorder_and_upcast_attn"):
        with pytest.raises(ValueError, match="cannot honour reorder_and_upcast_attn"):
            _load(fw, ckpt_dirs[case_name], impl, dtype="bf16")
        return
    model = _load(fw, ckpt_dirs[case_name], impl)
    for scenario in ("nomask", "left_pad"):
        inputs = case.inputs("GPT2LMHeadModel", scenario)
        ours = _logits(fw, model, inputs)  # input_ids, attention_mask, position_ids as HF got
        ref = case.get("GPT2LMHeadModel", scenario, "logits")
        valid = case.valid_mask("GPT2LMHeadModel", scenario)  # padded rows: undefined
        np.testing.assert_allclose(
            ours[valid],
            ref[valid],
            atol=1e-4,
            rtol=1e-5,
            err_msg=f"{fw} {impl} {case_name} {scenario}",
        )
    rec = case.generation("greedy")
    out = model.generate(rec["input_ids"], attention_mask=rec["attention_mask"], **rec["kwargs"])
    np.testing.assert_array_equal(np.asarray(out), rec["sequences"])


def test_config_field_validates_and_is_not_saved(tmp_path):
    cfg = GPT2Config(n_layer=1, n_embd=12, n_head=3, attn_implementation="eager")
    assert cfg.attn_implementation == "eager" and cfg.copy().attn_implementation == "eager"
    cfg.save_pretrained(tmp_path)
    assert "attn_implementation" not in (tmp_path / "config.json").read_text()
    assert GPT2Config.from_pretrained(tmp_path).attn_implementation is None
    with pytest.raises(ValueError, match="attn_implementation must be None or one of"):
        GPT2Config(attn_implementation="flash_attention_3")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_unavailable_implementations_are_refused(ckpt_dirs, fw):
    d = ckpt_dirs["default"]
    if fw == "torch":
        import torch

        from gpt2_torch.modeling import flash_attention_unavailable

        reason = flash_attention_unavailable(torch.device("cpu"), torch.float32)
        with pytest.raises(RuntimeError, match="flash_attention_2': " + reason.split(" (")[0]):
            _load(fw, d, "flash_attention_2")
        with pytest.raises(ValueError, match="'cudnn' is not available in gpt2_torch"):
            _load(fw, d, "cudnn")
    elif fw == "tf":
        for impl in ("sdpa", "flash_attention_2", "cudnn"):
            with pytest.raises(ValueError, match=f"{impl!r} is not available in gpt2_tf"):
                _load(fw, d, impl)
    else:
        import jax

        with pytest.raises(ValueError, match="'flash_attention_2' is not available in gpt2_flax"):
            _load(fw, d, "flash_attention_2")
        if jax.default_backend() != "gpu":
            with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
                _load(fw, d, "cudnn")
        model = _load(fw, d, "sdpa")
        with pytest.raises(ValueError, match="output_attentions=True needs"):
            model(input_ids=np.array([[1, 2, 3]]), output_attentions=True)


def test_torch_flash_attention_plumbing_with_a_stand_in_kernel(ckpt_dirs, monkeypatch):
    """FlashAttention-2 cannot run on this machine (no CUDA); a stand-in ``flash_attn`` module
    with the same layout and arguments (computed by SDPA) checks our side of the call: the
    (B, T, H, D) layout, the scale with every flag, causality, and the refusals."""
    if "torch" not in FRAMEWORKS:
        pytest.skip("torch is not installed")
    import sys
    import types

    import torch
    import torch.nn.functional as F

    from gpt2_torch import modeling

    calls = []

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append((tuple(q.shape), softmax_scale, causal))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=causal,
            scale=softmax_scale,
        )
        return out.transpose(1, 2)

    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=flash_attn_func)
    )
    monkeypatch.setattr(modeling, "flash_attention_unavailable", lambda device, dtype: None)
    case = golden.load_case("noscale")
    model = _load("torch", ckpt_dirs["noscale"], "flash_attention_2")
    inputs = case.inputs("GPT2LMHeadModel", "nomask")
    ids = torch.as_tensor(np.array(inputs["input_ids"])).long()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(
        logits, case.get("GPT2LMHeadModel", "nomask", "logits"), atol=1e-4, rtol=1e-5
    )
    B, T = ids.shape
    assert calls[0] == ((B, T, model.config.n_head, model.config.head_dim), 1.0, True)
    with pytest.raises(ValueError, match="runs unpadded causal attention only"):
        model(
            input_ids=ids,
            attention_mask=torch.as_tensor(
                np.array(case.inputs("GPT2LMHeadModel", "left_pad")["attention_mask"])
            ).long(),
        )
