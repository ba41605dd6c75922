"""Run under ``torchrun --nproc_per_node 2``: the reference run with DDP, then with FSDP2
interrupted at step 13 and resumed. Losses are read back from each run's metrics.jsonl."""

import contextlib
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import train_helpers as H

torch.set_num_threads(1)
corpus, root = Path(sys.argv[1]), Path(sys.argv[2])
data = H.datasets(corpus)
train = H.train_fn("torch")
dist.init_process_group("gloo")
try:
    train(
        H.fresh_model("torch"),
        *data,
        H.train_config(),
        root / "ddp",
        strategy="ddp",
        progress=False,
    )
    with contextlib.suppress(H.Crash):
        train(
            H.fresh_model("torch"),
            *data,
            H.train_config(),
            root / "fsdp",
            strategy="fsdp",
            progress=False,
            on_step=H.crash_at(13),
        )
    dist.barrier()
    train(
        H.fresh_model("torch", seed=99),
        *data,
        H.train_config(),
        root / "fsdp",
        strategy="fsdp",
        resume=True,
        progress=False,
    )
finally:
    dist.destroy_process_group()
