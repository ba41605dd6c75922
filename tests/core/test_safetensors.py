"""Our safetensors reader/writer: exact, memory-mapped, sharded, bf16, interoperable, strict."""

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy as stnp

from gpt2_core.formats import safetensors as st


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "c": np.arange(12, dtype=np.int64).reshape(2, 3, 2),
        "d": rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "flag": np.array([True, False]),
    }


def test_round_trip_and_mmap(tmp_path):
    t = _tensors()
    st.save_file(t, tmp_path / "x.safetensors", {"format": "pt"})
    back = st.load_file(tmp_path / "x.safetensors")
    for k, v in t.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert np.array_equal(back[k], v), k
    assert not back["a"].flags.owndata  # a view on the memory map, not a copy
    assert not back["a"].flags.writeable  # the map is read-only
    _, meta, _ = st.read_header(tmp_path / "x.safetensors")
    assert meta == {"format": "pt"}


def test_interop_with_safetensors_package(tmp_path):
    t = {k: v for k, v in _tensors().items() if k != "d"}  # the package's numpy API lacks bf16
    st.save_file(t, tmp_path / "ours.safetensors")
    theirs = stnp.load_file(tmp_path / "ours.safetensors")
    assert all(np.array_equal(theirs[k], v) for k, v in t.items())
    stnp.save_file(t, tmp_path / "theirs.safetensors")
    ours = st.load_file(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(ours[k], v) for k, v in t.items())


def test_bf16_interop_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    x = torch.randn(3, 4).bfloat16()
    save_file({"x": x}, tmp_path / "t.safetensors")
    got = st.load_file(tmp_path / "t.safetensors")["x"]
    assert got.dtype == ml_dtypes.bfloat16
    assert np.array_equal(got.astype(np.float32), x.float().numpy())
    st.save_file({"y": got}, tmp_path / "u.safetensors")
    assert torch.equal(load_file(tmp_path / "u.safetensors")["y"], x)


def test_sharded_round_trip(tmp_path):
    t = {f"w{i}": np.full((10, 10), i, np.float32) for i in range(7)}  # 400 bytes each
    files = st.save_sharded(t, tmp_path, max_shard_size=1000)
    index = json.loads((tmp_path / st.SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 2800
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert len(files) == 5
    back = st.load_sharded(tmp_path / st.SAFE_WEIGHTS_INDEX_NAME)
    assert all(np.array_equal(back[k], v) for k, v in t.items())
    # under the limit: one file, no index
    st.save_sharded(t, tmp_path / "one", max_shard_size="1MB")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.safetensors"]


def test_shard_plan_oversized_tensor_gets_its_own_shard():
    assert st.shard_plan({"a": 10, "b": 100, "c": 10}, 50) == [["a"], ["b"], ["c"]]


@pytest.mark.parametrize(
    "bad, match",
    [
        (b"\x01", "too short"),
        ((10**9).to_bytes(8, "little") + b"{}", "over the 100000000-byte limit"),
        ((1000).to_bytes(8, "little") + b"{}", "header length"),
        ((2).to_bytes(8, "little") + b"{x", "not valid JSON"),
    ],
)
def test_malformed_headers(tmp_path, bad, match):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(bad)
    with pytest.raises(st.SafetensorsError, match=match):
        st.load_file(p)


def test_offsets_outside_file_and_size_mismatch(tmp_path):
    def write(header, data=b""):
        raw = json.dumps(header).encode()
        p = tmp_path / "x.safetensors"
        p.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return p

    p = write({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(st.SafetensorsError, match="'w' data offsets"):
        st.load_file(p)
    p = write({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(st.SafetensorsError, match="needs 12"):
        st.load_file(p)
    p = write({"w": {"dtype": "Q8", "shape": [3], "data_offsets": [0, 3]}}, b"\0" * 3)
    with pytest.raises(st.SafetensorsError, match="tensor 'w' has unsupported dtype 'Q8'"):
        st.load_file(p)


def test_index_with_missing_or_escaping_shard(tmp_path):
    (tmp_path / st.SAFE_WEIGHTS_INDEX_NAME).write_text(
        json.dumps({"weight_map": {"a": "nope.safetensors"}})
    )
    with pytest.raises(st.SafetensorsError, match="shard nope.safetensors is missing"):
        st.load_sharded(tmp_path / st.SAFE_WEIGHTS_INDEX_NAME)
    (tmp_path / st.SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "../x"}}))
    with pytest.raises(st.SafetensorsError, match="invalid shard file name"):
        st.load_sharded(tmp_path / st.SAFE_WEIGHTS_INDEX_NAME)


def test_write_is_atomic(tmp_path):
    p = tmp_path / "model.safetensors"
    st.save_file({"a": np.ones(3, np.float32)}, p)
    with pytest.raises(st.SafetensorsError):
        st.save_file({"a": np.ones(3, np.float32), "b": np.array(["x"])}, p)
    assert np.array_equal(st.load_file(p)["a"], np.ones(3))  # old file intact
    assert [q.name for q in tmp_path.iterdir()] == ["model.safetensors"]  # no temp left


def test_interrupted_write_leaves_old_file(tmp_path):
    from gpt2_core.io_utils import atomic_output_file

    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_output_file(p) as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]
