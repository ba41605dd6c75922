"""Training-test fixtures: each framework's reference run, trained once per session."""

from __future__ import annotations

import pytest
import train_helpers as H


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the OpenMP
    barrier makes two threads ~2x slower than one; restored afterwards for other tests."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _jax_compile_cache(tmp_path_factory):
    """Each ``train`` call jits fresh closures; the crash run, the resumed run and the
    reference compile the same programs, so a session-local persistent cache saves the
    repeats. Restored afterwards."""
    try:
        import jax
    except ImportError:
        yield
        return
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for n, v in before.items():
        jax.config.update(n, v)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return H.write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data(corpus):
    return H.datasets(corpus)


@pytest.fixture(scope="session")
def torch_run(data, tmp_path_factory):
    """The reference torch run: (out dir, result)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("torch_run")
    return out, H.train_fn("torch")(
        H.fresh_model("torch"), *data, H.train_config(), out, progress=False
    )


@pytest.fixture(scope="session")
def tf_run(data, tmp_path_factory):
    pytest.importorskip("tensorflow")
    out = tmp_path_factory.mktemp("tf_run")
    return out, H.train_fn("tf")(H.fresh_model("tf"), *data, H.train_config(), out, progress=False)


@pytest.fixture(scope="session")
def flax_run(data, tmp_path_factory):
    pytest.importorskip("flax")
    out = tmp_path_factory.mktemp("flax_run")
    return out, H.train_fn("flax")(
        H.fresh_model("flax"), *data, H.train_config(), out, progress=False
    )
