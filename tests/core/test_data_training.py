"""Training data pipeline and framework-neutral training pieces (gpt2_core.data / .training)."""

import json

import numpy as np
import pytest

from gpt2_core.data import DataError, PackedDataset, load_training_data, resolve_files
from gpt2_core.training import MetricsLog, TrainConfig, decays, learning_rate, plot_loss_curve


class ByteTok:
    eos_token_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))


def test_files_globs_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 20)
    (tmp_path / "b.txt").write_text("more text " * 20)
    (tmp_path / "empty.txt").write_text("")
    assert [p.name for p in resolve_files(str(tmp_path / "[ab].txt"))] == ["a.txt", "b.txt"]
    with pytest.raises(DataError, match="does not exist"):
        resolve_files(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no file matches"):
        resolve_files(str(tmp_path / "*.json"))
    with pytest.raises(DataError, match="empty.txt is empty"):
        resolve_files(str(tmp_path / "*.txt"))


def test_load_training_data_and_block_size_check(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 1000)
    train, held = load_training_data(
        tmp_path / "a.txt", ByteTok(), block_size=16, eval_fraction=0.1
    )
    assert len(train) == (1001 - 100) // 16 and len(held) == 100 // 16
    assert train.tokens[-1] == ord("x") and held.tokens[-1] == 256  # EOS closes the document
    with pytest.raises(DataError, match="exceeds the model's n_positions"):
        load_training_data(tmp_path / "a.txt", ByteTok(), block_size=64, n_positions=32)
    with pytest.raises(DataError, match="too few"):
        load_training_data(tmp_path / "a.txt", ByteTok(), block_size=600)


def test_order_depends_only_on_seed_and_step():
    ds = PackedDataset(np.arange(1000, dtype=np.int32), block_size=10)
    a = [ds.batch(s, 4, seed=3) for s in range(60)]
    b = [ds.batch(s, 4, seed=3) for s in range(60)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(ds.batch(0, 4, seed=3), ds.batch(0, 4, seed=4))
    # an epoch covers every block exactly once
    first_epoch = np.concatenate(a[:25])[:, 0] // 10
    assert sorted(first_epoch.tolist()) == list(range(100))
    # a resumed run at step 30 gets the same batch as the uninterrupted one
    assert np.array_equal(PackedDataset(ds.tokens, 10).batch(30, 4, seed=3), a[30])


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[100] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    assert learning_rate(TrainConfig(steps=5, warmup_steps=0, lr=1.0), 0) == 1.0


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="int8")
    assert TrainConfig(batch_size=4, grad_accum=2, block_size=8).tokens_per_step == 64


def test_weight_decay_rule():
    assert decays("transformer.h.0.attn.c_attn.weight", 2)
    assert decays("transformer.wte.weight", 2)
    assert not decays("transformer.h.0.attn.c_attn.bias", 1)
    assert not decays("transformer.ln_f.weight", 1)


def test_metrics_log_resume_and_plot(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 6):
        log.write({"step": s, "loss": 5.0 - s * 0.5})
    log.write({"step": 5, "eval_loss": 3.0})
    resumed = MetricsLog(tmp_path / "metrics.jsonl", resume_from_step=3)
    assert [m["step"] for m in resumed.read()] == [1, 2, 3]
    resumed.write({"step": 4, "loss": 2.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"loss": 2.0, "step": 4}
    png = plot_loss_curve(resumed.read(), tmp_path / "loss.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
