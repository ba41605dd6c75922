"""tf_model.h5 and flax_model.msgpack readers/writers: round trips for every head and the real
files transformers 4.57.6 wrote (tests/fixtures/hf4576/formats)."""

from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest

from gpt2_core import checkpoint, naming
from gpt2_core.formats import flax_msgpack, tf_h5
from gpt2_core.init import random_state_dict, tiny_config

FORMATS_DIR = Path(__file__).parents[1] / "fixtures" / "hf4576" / "formats"
CASES_DIR = Path(__file__).parents[1] / "fixtures" / "hf4576" / "cases"

CONFIGS = {
    "tied": tiny_config(num_labels=3),
    "untied": tiny_config(num_labels=3, tie_word_embeddings=False),
    "cross": tiny_config(add_cross_attention=True),
}


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "tf", "flax"])
@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("head", list(naming.HEADS))
def test_every_format_round_trips_every_head(tmp_path, fmt, cfg_name, head):
    cfg = CONFIGS[cfg_name]
    sd = random_state_dict(cfg, head, seed=7, std=0.3)
    checkpoint.save_pretrained(sd, cfg, tmp_path, head, formats=(fmt,))
    assert checkpoint.detect_formats(tmp_path)[0].startswith(fmt)
    cfg2, back, report = checkpoint.load_pretrained(tmp_path, head)
    assert report.ok and not report.newly_initialized, report.summary()
    assert cfg2.extra["architectures"] == [naming.HEADS[head]]
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k


def test_tf_h5_layout_matches_transformers(tmp_path):
    cfg = CONFIGS["tied"]
    sd = random_state_dict(cfg, "sequence_classification", seed=0, std=0.3)
    tf_h5.save(sd, tmp_path / "tf_model.h5", cfg, "sequence_classification")

    def strs(values):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    with h5py.File(tmp_path / "tf_model.h5") as f:
        assert strs(f.attrs["layer_names"]) == ["transformer", "score"]
        names = strs(f["transformer"].attrs["weight_names"])
        assert "tfgpt2_for_sequence_classification/transformer/h_._0/attn/c_attn/weight:0" in names
        assert "tfgpt2_for_sequence_classification/transformer/wte/embeddings:0" in names
        assert "tfgpt2_for_sequence_classification/transformer/ln_f/gamma:0" in names
        bias = f["transformer"][
            "tfgpt2_for_sequence_classification/transformer/h_._1/mlp/c_fc/bias:0"
        ]
        assert bias.shape == (1, 144)  # TFConv1D bias (1, n)
        kernel = f["score"]["tfgpt2_for_sequence_classification/score/kernel:0"]
        assert kernel.shape == (36, 3)  # Dense kernel (in, out)


def test_tf_name_mapping():
    assert tf_h5.tf_name_to_canonical("tfgpt2lm_head_model/transformer/h_._11/ln_2/beta:0") == (
        "transformer.h.11.ln_2.bias",
        False,
    )
    assert tf_h5.tf_name_to_canonical("m/transformer/wte/weight:0") == (
        "transformer.wte.weight",
        False,
    )
    assert tf_h5.tf_name_to_canonical("m/multiple_choice_head/summary/kernel:0") == (
        "multiple_choice_head.summary.weight",
        True,
    )
    with pytest.raises(tf_h5.TFH5Error, match="unrecognised variable"):
        tf_h5.tf_name_to_canonical("m/transformer/wte/moving_mean:0")


def test_flax_tree_layout_has_the_out_in_kernel_trap():
    cfg = CONFIGS["untied"]
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    tree = flax_msgpack.to_tree(sd, cfg, "lm")
    c_attn = tree["transformer"]["h"]["0"]["attn"]["c_attn"]
    assert c_attn["kernel"].shape == (108, 36)  # transformers' FlaxConv1D: (out, in)
    assert np.array_equal(c_attn["kernel"], sd["transformer.h.0.attn.c_attn.weight"].T)
    assert tree["transformer"]["wte"]["embedding"].shape == (257, 36)
    assert tree["transformer"]["ln_f"]["scale"].shape == (36,)
    assert tree["lm_head"]["kernel"].shape == (36, 257)  # Dense: (in, out)
    base_tree = flax_msgpack.to_tree(random_state_dict(cfg, "base", seed=0), cfg, "base")
    assert "transformer" not in base_tree and "wte" in base_tree


def test_flax_chunked_arrays_are_read(tmp_path):
    arr = np.arange(10, dtype=np.float32).reshape(2, 5)
    chunked = {
        "__msgpack_chunked_array__": True,
        "shape": {"0": 2, "1": 5},
        "chunks": {"0": arr.reshape(-1)[:6], "1": arr.reshape(-1)[6:]},
    }
    tree = {"wte": {"embedding": chunked}}
    (tmp_path / "f.msgpack").write_bytes(
        msgpack.packb(tree, default=flax_msgpack._pack_default, strict_types=True)
    )
    assert np.array_equal(flax_msgpack.load(tmp_path / "f.msgpack")["wte.weight"], arr)


def test_corrupt_files_raise_named_errors(tmp_path):
    (tmp_path / "tf_model.h5").write_bytes(b"garbage")
    with pytest.raises(tf_h5.TFH5Error, match="not an HDF5 file"):
        tf_h5.load(tmp_path / "tf_model.h5")
    (tmp_path / "flax_model.msgpack").write_bytes(b"\xc1\xc1")
    with pytest.raises(flax_msgpack.FlaxMsgpackError, match="flax_model.msgpack"):
        flax_msgpack.load(tmp_path / "flax_model.msgpack")


# ---------------------------------------------------------------- files written by transformers
def _format_dirs():
    return sorted(p.name for p in FORMATS_DIR.iterdir())  # a missing folder fails collection


@pytest.mark.parametrize("name", _format_dirs())
def test_reads_transformers_files(name):
    """Each file transformers 4.57.6 wrote maps onto the canonical weights it was made from."""
    d = FORMATS_DIR / name
    cfg = checkpoint.GPT2Config.from_json_file(d / "config.json")
    from conversion.convert import head_from_config

    head = head_from_config(cfg)
    _, sd, report = checkpoint.load_pretrained(d, head)
    assert report.ok, report.summary()
    assert not report.newly_initialized
    if name == "pt_bin_legacy":
        assert report.ignored_buffers  # attn.bias / masked_bias recognised as buffers
    case = "noscale" if "untied" in name else "default"
    from safetensors.numpy import load_file

    source = load_file(str(CASES_DIR / case / "weights.safetensors"))
    for k, v in sd.items():
        src_key = k if k in source else naming.PREFIX + k
        if src_key not in source:
            continue  # a head weight the fixture case drew separately
        np.testing.assert_array_equal(v, source[src_key], err_msg=f"{name}: {k}")


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in _format_dirs()
        if n not in ("base_only", "flax_base", "tf_base", "tf_double", "tf_seqcls")
    ],
)
def test_transformers_files_give_transformers_logits(name):
    """End to end: weights read from each transformers file, run by the numpy reference, give
    the logits transformers computed in that file's own framework."""
    from safetensors.numpy import load_file

    from gpt2_core import reference

    d = FORMATS_DIR / name
    cfg, sd, _ = checkpoint.load_pretrained(d, "lm")
    g = load_file(str(d / "expected_logits.safetensors"))
    for scenario in ("nomask", "left_pad"):
        ids = g["inputs/input_ids"] if scenario == "nomask" else g["inputs/left_pad/input_ids"]
        mask = g.get(f"inputs/{scenario}/attention_mask")
        pos = g.get(f"inputs/{scenario}/position_ids")
        got = reference.lm_logits(sd, cfg, ids, attention_mask=mask, position_ids=pos)
        # transformers' Flax ignores scale_attn_weights=False; for that file the fixture keeps
        # transformers' PyTorch eager logits (the reference semantics) as pt_eager/*
        want = g.get(f"pt_eager/{scenario}/logits", g[f"outputs/{scenario}/logits"])
        real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch", "tf", "flax"])
def test_writers_report_progress_in_bytes(tmp_path, fmt):
    """The progress callback (the convert progress bar) sees every stored byte once."""
    cfg = CONFIGS["tied"]
    sd = random_state_dict(cfg, "lm", seed=0, std=0.3)
    seen = []
    checkpoint.save_pretrained(
        sd, cfg, tmp_path, "lm", formats=(fmt,), progress=seen.append, max_shard_size="20KB"
    )
    stored = naming.drop_tied(sd, cfg, "lm")
    assert sum(seen) == sum(v.nbytes for v in stored.values())
    assert len(seen) == len(stored)
