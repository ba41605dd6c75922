"""``gpt2 train`` as the README and docs/training.md write it (issue #12): OUT after ``--data``,
dropout 0.1 in every framework, ``TrainConfig(dropout=...)`` honoured by each Python
``train()``, a warm-up that fits short runs, resume refusing changed settings, no empty OUT
left by a failed run, generation_config.json and the loss-curve note in every framework."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import train_helpers as H

from conversion import cli
from conversion import train as train_cli
from gpt2_core import checkpoint
from gpt2_core.training import TrainConfig, default_warmup, learning_rate, plot_loss_curve

FRAMEWORKS = ("torch", "tf", "flax")


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    checkpoint.save_pretrained(H.initial_weights(), H.MODEL_CONFIG, d, "lm")
    return d


def _parse(*argv):
    args = cli.build_parser().parse_args(["train", *map(str, argv)])
    train_cli.resolve_out(args)
    return args


# ----------------------------------------------------------------------------- argument order
def test_out_after_data_is_found(tmp_path):
    """The README's order: ``--data "notes/*.txt" out/ --steps 20`` (argparse gives OUT to --data)."""
    args = _parse(
        "--framework", "torch", "--model", "ckpt", "--data", "notes/*.txt", "out/", "--steps", 20
    )
    assert args.out == "out/" and args.data == ["notes/*.txt"] and args.steps == 20
    # OUT first, OUT as an option, several --data values, --data repeated
    assert _parse("out", "--framework", "tf", "--model", "m", "--data", "a.txt").out == "out"
    args = _parse("--framework", "tf", "--model", "m", "--data", "a.txt", "b.txt", "--out", "o")
    assert args.out == "o" and args.data == ["a.txt", "b.txt"]
    args = _parse("--framework", "tf", "--model", "m", "--data", "a.txt", "--data", "b.txt", "o")
    assert args.out == "o" and args.data == ["a.txt", "b.txt"]


def test_missing_out_is_explained(tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("text")
    with pytest.raises(ValueError, match="missing OUT"):
        _parse("--framework", "torch", "--model", "m", "--data", data)
    # two existing data files and no OUT: the last one is data, not a run directory
    other = tmp_path / "b.txt"
    other.write_text("text")
    with pytest.raises(ValueError, match="is data, not a run directory"):
        _parse("--framework", "torch", "--model", "m", "--data", data, other)
    with pytest.raises(ValueError, match="two run directories"):
        _parse("x", "--framework", "torch", "--model", "m", "--data", data, "--out", "y")


# ----------------------------------------------------------------------------- schedule
def test_default_warmup_fits_the_run():
    assert [default_warmup(s) for s in (1, 5, 20, 300, 1000, 10**6)] == [1, 1, 2, 30, 100, 100]
    cfg = TrainConfig(steps=20, lr=1.0, min_lr_ratio=0.1)
    assert cfg.warmup_steps == 2
    lrs = [learning_rate(cfg, s) for s in range(cfg.steps + 1)]
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) <= 2  # reaches the peak
    assert lrs[-1] == pytest.approx(0.1)  # and decays to the floor by the end
    assert TrainConfig(steps=20, warmup_steps=0).warmup_steps == 0  # explicit values stay


# ----------------------------------------------------------------------------- CLI end to end
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_documented_command_with_dropout_in_every_framework(
    framework, model_dir, corpus, tmp_path, capsys
):
    """``gpt2 train --framework F --model ckpt --data DATA out/ --steps N --dropout 0.1``: the
    README's order, real dropout (Flax crashed on it), a warm-up chosen for the run, and the
    same files in OUT from every framework."""
    pytest.importorskip({"torch": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    out = tmp_path / "out"
    code = cli.main(
        [
            "train",
            "--framework",
            framework,
            "--model",
            str(model_dir),
            "--data",
            str(corpus),
            str(out),
            "--steps",
            "3",
            "--tokenizer",
            "bytes",
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--dropout",
            "0.1",
            "--no-progress",
        ]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "trained steps 1-3" in cap.out and "warm-up 1 steps" in cap.out
    saved = json.loads((out / "config.json").read_text())
    assert saved["resid_pdrop"] == saved["attn_pdrop"] == saved["embd_pdrop"] == 0.1
    assert (out / "generation_config.json").is_file()
    assert (out / "loss.png").is_file()
    losses = [r["loss"] for r in H.metrics(out)]
    assert len(losses) == 3 and all(np.isfinite(losses))
    # --resume with another --steps is refused, naming both values
    code = cli.main(
        [
            "train",
            "--framework",
            framework,
            "--model",
            str(model_dir),
            "--data",
            str(corpus),
            str(out),
            "--steps",
            "5",
            "--tokenizer",
            "bytes",
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--dropout",
            "0.1",
            "--no-progress",
            "--resume",
        ]
    )
    cap = capsys.readouterr()
    assert code == 1 and "steps was 3, now 5" in cap.err


# ----------------------------------------------------------------------------- Python train()
def _model(framework: str):
    """The tiny model (dropout 0 in its config) in ``framework``."""
    sd = H.initial_weights()
    if framework == "torch":
        from gpt2_torch import GPT2LMHeadModel, weights

        m = GPT2LMHeadModel(H.MODEL_CONFIG)
        weights.load_canonical(m, sd)
        return m
    if framework == "tf":
        from gpt2_tf import GPT2LMHeadModel, load_canonical

        m = GPT2LMHeadModel(H.MODEL_CONFIG)
        load_canonical(m, sd)
        return m
    from gpt2_flax import GPT2LMHeadModel

    return GPT2LMHeadModel.from_state_dict(H.MODEL_CONFIG, sd)


def _backend_train(framework: str):
    if framework == "torch":
        from gpt2_torch.training import train
    elif framework == "tf":
        from gpt2_tf.training import train
    else:
        from gpt2_flax.training import train
    return train


def _dropout_rates(framework: str, model) -> set[float]:
    if framework == "torch":
        from torch import nn

        return {m.p for m in model.transformer.modules() if isinstance(m, nn.Dropout)}
    if framework == "tf":
        import keras

        return {
            layer.rate
            for layer in model.transformer._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dropout)
        }
    from flax import nnx

    return {m.rate for _, m in nnx.iter_graph(model.transformer) if isinstance(m, nnx.Dropout)}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_trainconfig_dropout_is_applied(framework, corpus, tmp_path):
    """``TrainConfig(dropout=0.5)`` sets every transformer dropout of the model (its config
    said 0) and changes the first step's loss; the saved config records it."""
    pytest.importorskip({"torch": "torch", "tf": "tensorflow", "flax": "flax"}[framework])
    train = _backend_train(framework)
    train_ds, _ = H.datasets(corpus)
    losses = {}
    for rate in (None, 0.5):
        model = _model(framework)
        assert _dropout_rates(framework, model) == {0.0}
        cfg = H.train_config(steps=1, grad_accum=1, dropout=rate, eval_every=100, save_every=100)
        result = train(model, train_ds, None, cfg, tmp_path / f"{framework}-{rate}", progress=False)
        losses[rate] = result.losses[0]
        want = 0.0 if rate is None else rate
        assert _dropout_rates(framework, model) == {want}
        assert model.config.resid_pdrop == model.config.attn_pdrop == want
        assert H.MODEL_CONFIG.resid_pdrop == 0.0  # the caller's config object is untouched
        saved = json.loads((tmp_path / f"{framework}-{rate}" / "config.json").read_text())
        assert saved["embd_pdrop"] == want
        assert (tmp_path / f"{framework}-{rate}" / "generation_config.json").is_file()
    assert losses[0.5] != pytest.approx(losses[None], rel=1e-4)


# ----------------------------------------------------------------------------- failures
def test_failed_run_leaves_no_empty_out(model_dir, corpus, tmp_path, capsys):
    out = tmp_path / "never"
    # fp16 training needs CUDA: refused by the torch loop after OUT was created
    code = cli.main(
        [
            "train",
            "--framework",
            "torch",
            "--model",
            str(model_dir),
            "--data",
            str(corpus),
            str(out),
            "--steps",
            "2",
            "--tokenizer",
            "bytes",
            "--block-size",
            "16",
            "--precision",
            "fp16",
            "--no-progress",
        ]
    )
    assert code == 1 and "fp16" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "framework,extra,message",
    [
        ("tf", ["--cpu-devices", "2"], "has no effect without --strategy"),
        ("torch", ["--cpu-devices", "2"], "for tf and flax only"),
    ],
)
def test_cpu_devices_needs_a_strategy(
    framework, extra, message, model_dir, corpus, tmp_path, capsys
):
    code = cli.main(
        [
            "train",
            "--framework",
            framework,
            "--model",
            str(model_dir),
            "--data",
            str(corpus),
            str(tmp_path / "o"),
            "--tokenizer",
            "bytes",
            *extra,
        ]
    )
    assert code == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_framework_is_one_line_and_writes_nothing(
    model_dir, corpus, tmp_path, capsys, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("jax", "flax") else real(name, *a),
    )
    out = tmp_path / "out"
    code = cli.main(
        [
            "train",
            "--framework",
            "flax",
            "--model",
            str(model_dir),
            "--data",
            str(corpus),
            str(out),
            "--tokenizer",
            "bytes",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'gpt2-zoo[flax]'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# ----------------------------------------------------------------------------- noise
def test_packing_long_documents_does_not_warn(tmp_path, caplog):
    from gpt2_core.data import load_training_data
    from gpt2_core.tokenizer_fast import GPT2TokenizerFast

    doc = tmp_path / "long.txt"
    doc.write_text("A long document about GPT-2. " * 400)  # > 1024 tokens
    with caplog.at_level(logging.WARNING):
        train_ds, _ = load_training_data(doc, GPT2TokenizerFast.from_pretrained("gpt2"), 64, 0.1)
    assert len(train_ds) > 16
    assert not [r for r in caplog.records if "longer than the specified maximum" in r.message]


def test_loss_png_without_matplotlib_says_so(tmp_path, caplog, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING):
        assert plot_loss_curve([{"step": 1, "loss": 2.0}], tmp_path / "loss.png") is None
    assert any("matplotlib is not installed" in r.message for r in caplog.records)


# ----------------------------------------------------------------------------- distributed
def _cli_train(framework, model_dir, corpus, out, *extra):
    return [
        "-m",
        "conversion",
        "train",
        "--framework",
        framework,
        "--model",
        str(model_dir),
        "--data",
        str(corpus),
        str(out),
        "--steps",
        "3",
        "--tokenizer",
        "bytes",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--dropout",
        "0.1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_torchrun_ddp_with_dropout_prints_one_line(model_dir, corpus, tmp_path):
    """The docs' torchrun recipe with dropout: trains, and only rank 0 speaks."""
    pytest.importorskip("torch")
    out = tmp_path / "ddp"
    proc = H.run(
        [
            H.PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *_cli_train("torch", model_dir, corpus, out, "--strategy", "ddp"),
        ]
    )
    assert proc.stdout.count("trained steps 1-3") == 1, proc.stdout
    assert len(H.losses(out)) == 3 and all(np.isfinite(H.losses(out)))
    assert json.loads((out / "config.json").read_text())["attn_pdrop"] == 0.1


@pytest.mark.slow
def test_tf_mirrored_with_dropout(model_dir, corpus, tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "mirrored"
    proc = H.run(
        [
            H.PYTHON,
            *_cli_train(
                "tf", model_dir, corpus, out, "--strategy", "mirrored", "--cpu-devices", "2"
            ),
        ]
    )
    assert "trained steps 1-3" in proc.stdout
    assert len(H.losses(out)) == 3 and all(np.isfinite(H.losses(out)))


@pytest.mark.slow
def test_flax_mesh_with_dropout(corpus, tmp_path):
    jax = pytest.importorskip("jax")
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS)")
    from gpt2_flax.training import make_mesh

    mesh, sharding = make_mesh("fsdp", {"data": 4})
    train_ds, _ = H.datasets(corpus)
    cfg = H.train_config(steps=3, dropout=0.1, eval_every=100, save_every=100)
    res = _backend_train("flax")(
        _model("flax"), train_ds, None, cfg, tmp_path, mesh=mesh, sharding=sharding, progress=False
    )
    assert len(res.losses) == 3 and all(np.isfinite(res.losses))
