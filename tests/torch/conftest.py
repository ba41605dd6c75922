"""Shared fixtures for the PyTorch backend tests: tiny odd-sized models with large weights."""

import pytest
import torch

from gpt2_core.init import random_state_dict, tiny_config
from gpt2_torch import MODEL_CLASSES, weights

torch.manual_seed(0)
# tiny models gain nothing from threads, and on a shared 2-core machine every parallel region
# waits for a descheduled thread: one thread makes these tests several times faster
torch.set_num_threads(1)


def make_model(head: str = "lm", seed: int = 0, std: float = 0.3, **overrides):
    """A tiny model of ``head`` with seeded N(0, std) weights, in eval mode."""
    overrides.setdefault("pad_token_id", 0)
    if head in ("sequence_classification", "token_classification"):
        overrides.setdefault("num_labels", 3)
    cfg = tiny_config(**overrides)
    model = MODEL_CLASSES[head](cfg)
    weights.load_canonical(model, random_state_dict(cfg, head, seed=seed, std=std))
    return model.eval()


@pytest.fixture(scope="module")
def lm():
    return make_model("lm")


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 257, (3, 9), generator=g)
