"""Canonical weights <-> NNX variables, from_pretrained / save_pretrained, transformers' files."""

import numpy as np
import pytest
from flax_helpers import build, jrun, maxdiff

import gpt2_flax as gf
from gpt2_flax import weights


def test_mapping_is_a_rename_plus_head_transposes(lm):
    cfg, sd, model = lm
    # Conv1D (in, out) == nnx kernel: no transpose (the Flax (out, in) trap)
    np.testing.assert_array_equal(np.asarray(model.transformer.h[0].attn.c_attn.kernel[...]),
                                  sd["transformer.h.0.attn.c_attn.weight"])
    np.testing.assert_array_equal(np.asarray(model.transformer.h[1].mlp.c_proj.kernel[...]),
                                  sd["transformer.h.1.mlp.c_proj.weight"])
    assert weights.canonical_key(("transformer", "h", 0, "ln_1", "scale")) == \
        "transformer.h.0.ln_1.weight"
    assert weights.is_transposed("score.weight") and not weights.is_transposed(
        "transformer.h.0.attn.c_proj.weight")
    out = model.state_dict()
    assert list(out) == list(sd) and all(np.array_equal(out[k], sd[k]) for k in sd)


def test_untied_and_head_weights_round_trip():
    for head in ("sequence_classification", "double_heads", "question_answering"):
        cfg, sd, model = build(head, tie_word_embeddings=False, num_labels=3)
        out = model.state_dict()
        assert all(np.array_equal(out[k], sd[k]) for k in sd), head
    _, sd2, other = build("question_answering", seed=9)
    other.load_state_dict(sd)  # in-place load (qa weights of another seed)
    assert np.array_equal(other.state_dict()["qa_outputs.weight"], sd["qa_outputs.weight"])


def test_save_and_from_pretrained_round_trip(lm, tmp_path):
    cfg, sd, model = lm
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    again = gf.GPT2LMHeadModel.from_pretrained(tmp_path)
    assert all(np.array_equal(again.state_dict()[k], sd[k]) for k in sd)
    # a base checkpoint loads into a head model; the new head is initialised
    base = gf.GPT2Model.from_state_dict(cfg, {k.removeprefix("transformer."): v for k, v in
                                              sd.items() if k.startswith("transformer.")})
    base.save_pretrained(tmp_path / "base")
    tok = gf.GPT2ForTokenClassification.from_pretrained(tmp_path / "base", num_labels=4)
    assert tok.classifier.kernel[...].shape == (36, 4)


def test_flax_msgpack_written_and_read(lm, tmp_path):
    pytest.importorskip("gpt2_core.formats.flax_msgpack", reason="core msgpack reader missing")
    cfg, sd, model = lm
    model.save_pretrained(tmp_path, flax_msgpack=True)
    assert (tmp_path / "flax_model.msgpack").is_file()
    again = gf.GPT2LMHeadModel.from_pretrained(tmp_path, prefer="flax")
    assert all(np.array_equal(again.state_dict()[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["flax_lm", "flax_untied", "flax_base"])
def test_loads_transformers_flax_msgpack(name):
    golden = pytest.importorskip("golden")
    pytest.importorskip("gpt2_core.formats.flax_msgpack", reason="core msgpack reader missing")
    try:
        fx = golden.load_format(name)
    except FileNotFoundError:
        pytest.skip(f"format fixture {name} not generated yet")
    cls = gf.GPT2Model if name == "flax_base" else gf.GPT2LMHeadModel
    model = cls.from_pretrained(fx.path, prefer="flax")
    ids = fx.expected["inputs/input_ids"]
    field = "last_hidden_state" if name == "flax_base" else "logits"
    keys = [k for k in fx.expected if k.startswith("outputs/") and k.endswith("/" + field)]
    assert keys, sorted(fx.expected)
    for k in keys:
        scenario = k.split("/")[1]
        kw = {n.split("/")[-1]: fx.expected[n] for n in fx.expected
              if n.startswith("inputs/") and scenario in n}
        kw.setdefault("input_ids", ids)
        got = np.asarray(getattr(jrun(model, **kw), field))
        # transformers' Flax ignores some flags (scale_attn_weights=False): the reference is
        # PyTorch eager, stored as pt_eager/... where the two differ
        want = fx.expected.get(k.replace("outputs/", "pt_eager/", 1), fx.expected[k])
        if "attention_mask" in kw:  # padded query rows are implementation-defined
            valid = kw["attention_mask"].astype(bool)
            got, want = got[valid], want[valid]
        assert maxdiff(got, want) < 1e-4 * max(1.0, float(np.abs(want).max())), k
