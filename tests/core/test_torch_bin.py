"""pytorch_model.bin through the restricted unpickler: zip and legacy formats, no code execution."""

import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from gpt2_core.formats import torch_bin

torch = pytest.importorskip("torch")


def _sd():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    return {
        "w": w,
        "tied": w,
        "transposed": w.t(),
        "view": w[1:3, 2:],
        "ids": torch.arange(6, dtype=torch.int64),
        "half": torch.randn(3, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "flag": torch.tensor([True]),
    }


def _np(t):
    t = t.detach()
    return t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_saves(tmp_path, zip_format):
    sd = _sd()
    p = tmp_path / "pytorch_model.bin"
    torch.save(sd, p, _use_new_zipfile_serialization=zip_format)
    got = torch_bin.load(p)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == _np(v).dtype and got[k].shape == tuple(v.shape), k
        assert np.array_equal(got[k], _np(v)), k


def test_writes_what_torch_loads_with_weights_only(tmp_path):
    sd = {k: _np(v) for k, v in _sd().items()}
    sd["tied"] = sd["w"]  # the same array object: stored once
    p = torch_bin.save(sd, tmp_path / "pytorch_model.bin")
    back = torch.load(p, weights_only=True)
    for k, v in sd.items():
        ref = (
            torch.from_numpy(v.astype(np.float32)).bfloat16()
            if v.dtype == ml_dtypes.bfloat16
            else torch.from_numpy(np.array(v))
        )
        assert torch.equal(back[k], ref), k
    assert back["w"].data_ptr() == back["tied"].data_ptr()
    assert np.array_equal(torch_bin.load(p)["transposed"], sd["transposed"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/gpt2zoo-pwned",))


@pytest.mark.parametrize("container", ["zip", "plain"])
def test_refuses_pickle_that_would_run_code(tmp_path, container):
    p = tmp_path / "pytorch_model.bin"
    payload = pickle.dumps({"w": _Evil()})
    if container == "zip":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", payload)
    else:
        p.write_bytes(payload)
    with pytest.raises(
        torch_bin.UnsafeCheckpointError, match="refusing to load global '(posix|os).system'"
    ):
        torch_bin.load(p)
    import os

    assert not os.path.exists("/tmp/gpt2zoo-pwned")


def test_refuses_other_globals_even_from_torch(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    # a GLOBAL opcode naming builtins.eval, wrapped in a legal legacy header
    evil = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R."
    with open(p, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(evil)
    with pytest.raises(torch_bin.UnsafeCheckpointError, match="builtins.eval"):
        torch_bin.load(p)


def test_malformed_files(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(torch_bin.TorchBinError):
        torch_bin.load(p)
    torch.save({"w": torch.ones(3)}, p)
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
        entries = {n: z.read(n) for n in names if "/data/" not in n}
    with zipfile.ZipFile(tmp_path / "y.bin", "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    with pytest.raises(torch_bin.TorchBinError, match="storage 0 is missing"):
        torch_bin.load(tmp_path / "y.bin")
    torch.save({"w": "a string"}, p)
    with pytest.raises(torch_bin.TorchBinError, match="'w' is not a tensor"):
        torch_bin.load(p)
