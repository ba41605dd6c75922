"""A run that dies mid-way loses at most the steps since its last checkpoint, and resuming it
reproduces the uninterrupted run bit for bit (losses, metrics log, final weights)."""

from __future__ import annotations

import numpy as np
import pytest
import train_helpers as H


@pytest.mark.parametrize("framework", ["torch", "tf", "flax"])
def test_crash_and_resume_reproduce_the_uninterrupted_run(framework, data, tmp_path, request):
    ref_out, ref = request.getfixturevalue(f"{framework}_run")
    train, out = H.train_fn(framework), tmp_path / "run"
    with pytest.raises(H.Crash):
        train(
            H.fresh_model(framework),
            *data,
            H.train_config(),
            out,
            progress=False,
            on_step=H.crash_at(13),
        )
    assert (out / "last").read_text().strip() == "checkpoint-10"  # steps 11-13 are lost
    assert [r["step"] for r in H.metrics(out)] == list(range(1, 14))
    # other initial weights: everything must come from the checkpoint
    res = train(
        H.fresh_model(framework, seed=99), *data, H.train_config(), out, resume=True, progress=False
    )
    assert res.start_step == 10 and res.steps == 20
    assert [r["step"] for r in H.metrics(out)] == list(range(1, 21))
    assert H.losses(out) == H.losses(ref_out)
    assert res.eval_losses[20] == ref.eval_losses[20]
    got, want = H.final_weights(out), H.final_weights(ref_out)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_torch_resume_with_dropout_is_exact(data, tmp_path):
    """Dropout masks come from (seed, step), not from how the process got there."""
    train, cfg = H.train_fn("torch"), H.train_config(steps=12, save_every=4)
    model = lambda: H.fresh_model("torch", resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)  # noqa: E731
    ref = train(model(), *data, cfg, tmp_path / "ref", progress=False)
    with pytest.raises(H.Crash):
        train(model(), *data, cfg, tmp_path / "run", progress=False, on_step=H.crash_at(6))
    res = train(model(), *data, cfg, tmp_path / "run", resume=True, progress=False)
    assert res.start_step == 4
    assert H.losses(tmp_path / "run") == ref.losses
    plain = train(H.fresh_model("torch"), *data, cfg, tmp_path / "plain", progress=False)
    assert plain.losses != ref.losses  # dropout was really on


def test_resume_without_checkpoint_starts_fresh(data, tmp_path):
    res = H.train_fn("torch")(
        H.fresh_model("torch"),
        *data,
        H.train_config(steps=2),
        tmp_path / "new",
        resume=True,
        progress=False,
    )
    assert res.start_step == 0 and len(res.losses) == 2


def test_gradient_accumulation_equals_the_large_batch(data, tmp_path, torch_run):
    """4 blocks x 2 micro-steps and 8 blocks x 1 see the same blocks and the same mean loss."""
    res = H.train_fn("torch")(
        H.fresh_model("torch"),
        *data,
        H.train_config(batch_size=8, grad_accum=1),
        tmp_path / "big",
        progress=False,
    )
    np.testing.assert_allclose(res.losses, torch_run[1].losses, rtol=1e-5)
