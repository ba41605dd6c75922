"""``gpt2 train``: bad input fails clearly before any training; an end-to-end run writes a model
every backend loads."""

from __future__ import annotations

import numpy as np
import pytest
import train_helpers as H

from conversion import cli
from gpt2_core import checkpoint
from gpt2_core.init import tiny_config


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    checkpoint.save_pretrained(H.initial_weights(), H.MODEL_CONFIG, d, "lm")
    return d


def _train(capsys, *argv):
    code = cli.main(["train", *map(str, argv)])
    return code, capsys.readouterr()


def _base(model_dir, data, out, *extra):
    return [
        "--framework",
        "torch",
        "--model",
        model_dir,
        "--data",
        data,
        "--tokenizer",
        "bytes",
        "--block-size",
        16,
        "--batch-size",
        4,
        "--steps",
        2,
        "--no-progress",
        out,
        *extra,
    ]


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("glob", "no file matches"),
        ("block", "exceeds the model's n_positions"),
        ("unwritable", "not writable"),
        ("gpt2_tokenizer", "--tokenizer bytes"),
        ("strategy", "is not one of"),
        ("tiny_text", "too few"),
    ],
)
def test_bad_input_fails_before_training(case, message, model_dir, corpus, tmp_path, capsys):
    data, out, extra = corpus, tmp_path / "out", []
    if case == "missing":
        data = tmp_path / "nope.txt"
    elif case == "empty":
        data = tmp_path / "empty.txt"
        data.write_text("")
    elif case == "glob":
        data = tmp_path / "*.nothing"
    elif case == "block":
        extra = ["--block-size", 64]  # n_positions is 32
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"  # a path below a regular file (root ignores chmod)
    elif case == "gpt2_tokenizer":
        extra = ["--tokenizer", "gpt2"]
    elif case == "strategy":
        extra = ["--strategy", "mirrored"]  # a TF strategy, given to torch
    elif case == "tiny_text":
        data = tmp_path / "short.txt"
        data.write_text("hi")
    code, cap = _train(capsys, *_base(model_dir, data, out), *extra)
    assert code == 1
    assert message in cap.err, cap.err
    assert not (out / "metrics.jsonl").exists()


def test_existing_run_needs_resume(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    code, cap = _train(capsys, *_base(model_dir, corpus, out))
    assert code == 1 and "--resume" in cap.err


def test_bad_mesh_flag():
    from conversion.train import parse_mesh

    assert parse_mesh("data=2,model=2") == {"data": 2, "model": 2}
    for bad in ("data=0", "data", "pipe=2", "data=x"):
        with pytest.raises(ValueError, match="--mesh"):
            parse_mesh(bad)


def test_end_to_end_from_scratch_with_the_gpt2_tokenizer(tmp_path, corpus, capsys):
    """A preset-sized vocabulary and the real tokenizer; every backend loads the result."""
    cfg = tiny_config(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
    model = tmp_path / "config-only"
    model.mkdir()
    cfg.save_pretrained(model)
    out = tmp_path / "out"
    code, cap = _train(
        capsys,
        "--framework",
        "torch",
        "--model",
        model,
        "--from-scratch",
        "--data",
        corpus,
        "--block-size",
        16,
        "--batch-size",
        4,
        "--steps",
        4,
        "--eval-every",
        2,
        "--save-every",
        2,
        "--warmup-steps",
        1,
        "--lr",
        3e-3,
        "--precision",
        "bf16",
        "--no-progress",
        out,
    )
    assert code == 0, cap.err
    assert "trained steps 1-4" in cap.out
    records = H.metrics(out)
    assert records[0]["loss"] == pytest.approx(np.log(50257), rel=0.05)  # HF init: near uniform
    assert records[-1]["eval_loss"] < records[0]["loss"]
    assert (out / "last").read_text().strip() == "checkpoint-4"
    # resuming a finished run has nothing to do
    code, cap = _train(
        capsys,
        "--framework",
        "torch",
        "--model",
        model,
        "--from-scratch",
        "--data",
        corpus,
        "--block-size",
        16,
        "--batch-size",
        4,
        "--steps",
        4,
        "--eval-every",
        2,
        "--save-every",
        2,
        "--warmup-steps",
        1,
        "--lr",
        3e-3,
        "--precision",
        "bf16",
        "--resume",
        "--no-progress",
        out,
    )
    assert code == 0 and "nothing to do" in cap.out
    # the final model in OUT loads in every backend and gives the same logits
    ids = np.array([[464, 2068, 7586, 21831]])
    import torch

    from gpt2_torch import GPT2LMHeadModel as TorchLM

    want = TorchLM.from_pretrained(out)(torch.from_numpy(ids)).logits.detach().numpy()
    pytest.importorskip("flax")
    from gpt2_flax import GPT2LMHeadModel as FlaxLM

    got = np.asarray(FlaxLM.from_pretrained(out)(ids).logits)
    np.testing.assert_allclose(got, want, atol=2e-4)
    pytest.importorskip("tensorflow")
    from gpt2_tf import GPT2LMHeadModel as TFLM

    got = np.asarray(TFLM.from_pretrained(out)(input_ids=ids).logits)
    np.testing.assert_allclose(got, want, atol=2e-4)
