"""Canonical weights <-> NNX variables: the rename, in-place loads, flax_model.msgpack.

Round trips and transformers' files of every backend: tests/test_backends.py and
tests/parity/test_hf_formats.py.
"""

import numpy as np
from flax_helpers import build

import gpt2_flax as gf
from gpt2_flax import weights


def test_mapping_is_a_rename_plus_head_transposes(lm):
    cfg, sd, model = lm
    # Conv1D (in, out) == nnx kernel: no transpose (the Flax (out, in) trap)
    np.testing.assert_array_equal(
        np.asarray(model.transformer.h[0].attn.c_attn.kernel[...]),
        sd["transformer.h.0.attn.c_attn.weight"],
    )
    np.testing.assert_array_equal(
        np.asarray(model.transformer.h[1].mlp.c_proj.kernel[...]),
        sd["transformer.h.1.mlp.c_proj.weight"],
    )
    assert (
        weights.canonical_key(("transformer", "h", 0, "ln_1", "scale"))
        == "transformer.h.0.ln_1.weight"
    )
    assert weights.is_transposed("score.weight") and not weights.is_transposed(
        "transformer.h.0.attn.c_proj.weight"
    )
    out = model.state_dict()
    assert list(out) == list(sd) and all(np.array_equal(out[k], sd[k]) for k in sd)


def test_load_state_dict_in_place():
    # canonical and save / load round trips of every head and backend: tests/test_backends.py
    _, sd, _ = build("question_answering", tie_word_embeddings=False, num_labels=3)
    _, _, other = build("question_answering", seed=9)
    report = other.load_state_dict(sd)  # in-place load (qa weights of another seed)
    assert report.ok
    assert np.array_equal(other.state_dict()["qa_outputs.weight"], sd["qa_outputs.weight"])


def test_flax_msgpack_written_and_read(lm, tmp_path):
    cfg, sd, model = lm
    model.save_pretrained(tmp_path, flax_msgpack=True)
    assert (tmp_path / "flax_model.msgpack").is_file()
    again = gf.GPT2LMHeadModel.from_pretrained(tmp_path, prefer="flax")
    assert all(np.array_equal(again.state_dict()[k], sd[k]) for k in sd)
