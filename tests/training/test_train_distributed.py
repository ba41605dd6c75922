"""Distributed runs equal the single-device run for the same global batch: torch DDP / FSDP2
(2 gloo processes under torchrun), TF MirroredStrategy (2 logical CPUs), a JAX mesh of 4
simulated CPU devices (data parallel, FSDP, tensor parallel)."""

from __future__ import annotations

import numpy as np
import pytest
import train_helpers as H

RTOL = 1e-5  # only the reduction order differs


@pytest.mark.slow
def test_torch_ddp_and_fsdp_match_one_process(torch_run, corpus, tmp_path):
    pytest.importorskip("torch")
    H.run(
        [
            H.PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(H.HERE / "_torch_dist_worker.py"),
            str(corpus),
            str(tmp_path),
        ]
    )
    ref_out, ref = torch_run
    for name in ("ddp", "fsdp"):
        np.testing.assert_allclose(H.losses(tmp_path / name), ref.losses, rtol=RTOL, err_msg=name)
        rest, key_bias = H.weight_diff(H.final_weights(tmp_path / name), H.final_weights(ref_out))
        assert rest < H.WEIGHT_ATOL, (name, rest)
    # FSDP2 interrupted at step 13 and resumed from checkpoint-10 equals DDP's uninterrupted run
    assert [r["step"] for r in H.metrics(tmp_path / "fsdp")] == list(range(1, 21))


@pytest.mark.slow
def test_tf_mirrored_matches_one_device(tf_run, corpus, tmp_path):
    pytest.importorskip("tensorflow")
    H.run([H.PYTHON, str(H.HERE / "_tf_mirrored_worker.py"), str(corpus), str(tmp_path)])
    out, ref = tf_run
    np.testing.assert_allclose(H.losses(tmp_path), ref.losses, rtol=RTOL)
    rest, _ = H.weight_diff(H.final_weights(tmp_path), H.final_weights(out))
    assert rest < H.WEIGHT_ATOL


@pytest.mark.parametrize(
    "strategy,axes",
    [
        ("fsdp", {"data": 4}),
        pytest.param("dp", {"data": 2, "model": 2}, marks=pytest.mark.slow),  # DP x tensor parallel
    ],
)
def test_jax_mesh_matches_one_device(flax_run, data, tmp_path, strategy, axes):
    jax = pytest.importorskip("jax")
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS)")
    from gpt2_flax.training import make_mesh

    mesh, sharding = make_mesh(strategy, axes)
    # the first 5 steps (all warm-up, so the same learning rates as the 20-step reference);
    # 4 simulated devices on 2 busy cores make every step expensive
    res = H.train_fn("flax")(
        H.fresh_model("flax"),
        data[0],
        None,
        H.train_config(steps=5),
        tmp_path,
        mesh=mesh,
        sharding=sharding,
        progress=False,
    )
    # step k's loss is computed with the weights after k - 1 sharded updates
    np.testing.assert_allclose(res.losses, flax_run[1].losses[:5], rtol=RTOL)
    assert (tmp_path / "checkpoint-5" / "optimizer.safetensors").is_file()
