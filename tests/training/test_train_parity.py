"""The three frameworks train alike: same weights, data order and schedule -> same losses."""

from __future__ import annotations

import numpy as np
import pytest
import train_helpers as H


@pytest.mark.parametrize("other", ["tf_run", "flax_run"])
def test_losses_and_weights_match_torch(torch_run, other, request):
    ref_out, ref = torch_run
    out, res = request.getfixturevalue(other)
    assert len(res.losses) == len(ref.losses) == 20
    np.testing.assert_allclose(res.losses, ref.losses, rtol=H.LOSS_RTOL)
    assert set(res.eval_losses) == set(ref.eval_losses) == {10, 20}
    for step, loss in ref.eval_losses.items():
        assert res.eval_losses[step] == pytest.approx(loss, rel=H.LOSS_RTOL)
    rest, key_bias = H.weight_diff(H.final_weights(out), H.final_weights(ref_out))
    assert rest < H.WEIGHT_ATOL, f"weights differ by {rest:.2e} after 20 steps"
    assert key_bias <= H.CFG["lr"] * H.CFG["steps"]


def test_held_out_loss_falls(torch_run, data):
    """On the project's own docs, 20 small steps lower the held-out loss clearly."""
    import torch

    from gpt2_torch import GPT2LMHeadModel, weights

    _, res = torch_run
    model = GPT2LMHeadModel(H.MODEL_CONFIG)
    weights.load_canonical(model, H.initial_weights())
    model.eval()
    eval_ds = data[1]
    with torch.no_grad():
        x = torch.from_numpy(np.stack([eval_ds.block(i) for i in range(32)]).astype(np.int64))
        before = float(model(input_ids=x, labels=x).loss)
    after = res.eval_losses[20]
    assert after < before - 1.0, (before, after)
    assert res.losses[-1] < res.losses[0] - 1.0


def test_metrics_and_outputs(torch_run):
    out, _ = torch_run
    records = H.metrics(out)
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(r)
    assert {"eval_loss", "eval_ppl"} <= set(records[9]) and "eval_loss" not in records[8]
    assert records[9]["eval_ppl"] == pytest.approx(np.exp(records[9]["eval_loss"]))
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "last").read_text().strip() == "checkpoint-20"
    for step in (10, 20):
        ck = out / f"checkpoint-{step}"
        assert {p.name for p in ck.iterdir()} >= {
            "config.json",
            "model.safetensors",
            "optimizer.safetensors",
            "trainer_state.json",
        }
