"""Fixtures of the TensorFlow/Keras backend tests (helpers live in tf_helpers.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
pytest.importorskip("tensorflow")
pytest.importorskip("keras")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def lm():
    from tf_helpers import make_model

    return make_model("lm")[0]
