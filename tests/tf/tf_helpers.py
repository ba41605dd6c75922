"""Helpers of the TensorFlow/Keras backend tests: tiny odd configs, large weights, cached models.

Models are cached per (head, config) for the whole session: building and tracing Keras models
is the slow part of these tests, so every test reuses the same few models and input shapes.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gpt2_core.init import random_state_dict, tiny_config
from gpt2_tf import load_canonical
from gpt2_tf.modeling import MODEL_CLASSES

HEADS = tuple(MODEL_CLASSES)
#: the default test config: pad id 0 so the classifier pools by padding, 3 labels
CONFIG = {"pad_token_id": 0, "num_labels": 3}
_CACHE: dict = {}


def make_model(head: str, seed: int = 0, dtype=None, **overrides):
    """A (cached) model of ``head`` with seeded std-0.3 weights; returns (model, state_dict)."""
    key = (head, seed, dtype, tuple(sorted(overrides.items())))
    if key not in _CACHE:
        cfg = tiny_config(**{**CONFIG, **overrides})
        sd = random_state_dict(cfg, head, seed=seed, std=0.3)
        model = MODEL_CLASSES[head](cfg, dtype=dtype)
        load_canonical(model, sd)
        _CACHE[key] = (model, sd)
    return _CACHE[key]


def ids_like(rng, shape, vocab=257, low=1):
    """Random ids avoiding the pad id 0."""
    return rng.integers(low, vocab, shape).astype(np.int32)
