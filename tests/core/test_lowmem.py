"""gpt2_core.lowmem: releasing memory-mapped pages and block-wise owned copies."""

import re

import ml_dtypes
import numpy as np
import pytest

from gpt2_core import lowmem
from gpt2_core.formats.safetensors import load_file, save_file


def _rss() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024


@pytest.fixture
def mapped(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.normal(size=(300, 257)).astype(np.float32),
        "b": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
        "c": rng.normal(size=(1024, 1031)).astype(np.float32),
    }
    save_file(tensors, tmp_path / "m.safetensors")
    return tensors, load_file(tmp_path / "m.safetensors")


def test_mapped_buffer_finds_the_map_only_for_mapped_arrays(mapped):
    _, sd = mapped
    assert all(lowmem.mapped_buffer(v) is not None for v in sd.values())
    assert lowmem.mapped_buffer(np.zeros(3)) is None
    assert lowmem.release(np.zeros(3)) is False
    assert lowmem.release(sd["a"][:0]) is False  # empty: nothing to release


def test_release_keeps_the_data_readable(mapped):
    tensors, sd = mapped
    for k, v in sd.items():
        assert lowmem.release(v) is True
        np.testing.assert_array_equal(v, tensors[k])  # faulted back in from the file
    # a non-contiguous view releases the span it covers
    assert lowmem.release(sd["c"][:, ::2].T) is True
    np.testing.assert_array_equal(sd["c"], tensors["c"])


@pytest.mark.skipif(lowmem._DONTNEED is None, reason="no madvise(MADV_DONTNEED) here")
def test_release_gives_back_resident_pages(mapped):
    tensors, sd = mapped
    big = sd["c"]  # 4.2 MB
    before = _rss()
    assert float(big.sum(dtype=np.float64)) == pytest.approx(
        float(tensors["c"].sum(dtype=np.float64))
    )
    touched = _rss()
    lowmem.release(big)
    after = _rss()
    assert touched - before > 3_000_000  # reading it made it resident...
    assert touched - after > 3_000_000  # ...and release gave it back


def test_release_skips_writable_maps(tmp_path):
    arr = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="w+", shape=(4096,))
    arr[:] = 3.0
    assert lowmem.release(arr) is False  # MADV_DONTNEED could drop unwritten-back data
    assert float(arr[5]) == 3.0


@pytest.mark.parametrize("dtype", [None, np.float64, ml_dtypes.bfloat16])
def test_owned_copy_is_an_aligned_equal_copy(mapped, monkeypatch, dtype):
    tensors, sd = mapped
    monkeypatch.setattr(lowmem, "BLOCK_BYTES", 10_000)  # several blocks, a ragged last one
    for k in ("a", "c", "b"):
        out = lowmem.owned_copy(sd[k], dtype)
        assert out.ctypes.data % 64 == 0 and out.flags.c_contiguous and out.flags.writeable
        assert lowmem.mapped_buffer(out) is None
        assert out.dtype == np.dtype(dtype or sd[k].dtype)
        np.testing.assert_array_equal(out, tensors[k].astype(out.dtype))
    t = lowmem.owned_copy(sd["a"].T)  # a transposed (non-contiguous) source
    np.testing.assert_array_equal(t, tensors["a"].T)
    assert lowmem.owned_copy(np.float32(2.5)).shape == ()
    assert lowmem.owned_copy(np.zeros((0, 3))).shape == (0, 3)


def test_cast_state_dict_casts_a_tied_weight_once_and_blockwise(mapped):
    from gpt2_core.checkpoint import cast_state_dict

    tensors, sd = mapped
    out = cast_state_dict({"wte": sd["c"], "head": sd["c"], "a": sd["a"]}, "bf16")
    assert out["wte"] is out["head"]  # one cast copy for the tied pair
    assert out["wte"].dtype == ml_dtypes.bfloat16 and lowmem.mapped_buffer(out["wte"]) is None
    np.testing.assert_array_equal(out["a"], tensors["a"].astype(ml_dtypes.bfloat16))


def test_private_maps_are_released_only_when_unwritten(tmp_path):
    """A copy-on-write map (``mmap="private"``) is writable: release leaves it alone (it could
    drop writes) unless the caller says nothing wrote to it; the data stays the file's."""
    want = np.arange(4096 * 4, dtype=np.float32).reshape(16, 1024)
    save_file({"w": want}, tmp_path / "p.safetensors")
    arr = load_file(tmp_path / "p.safetensors", mmap="private")["w"]
    assert arr.flags.writeable and lowmem.mapped_buffer(arr) is not None
    assert not lowmem.release(arr)
    assert lowmem.release(arr, unwritten=True)
    np.testing.assert_array_equal(arr, want)
    out = lowmem.owned_copy(arr, np.float16, unwritten=True)
    np.testing.assert_array_equal(out, want.astype(np.float16))
    arr[0, 0] = -1.0  # copy-on-write: the file keeps its value
    assert load_file(tmp_path / "p.safetensors")["w"][0, 0] == 0.0
