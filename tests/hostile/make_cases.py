"""The hostile-input corpus: crafted checkpoints that try to read outside SRC, poison later
loads, slip past validation, exhaust memory or time, or abuse ``gpt2 convert``.

Every case is built from scratch in a temporary directory (nothing binary is committed):

    python tests/hostile/make_cases.py OUTDIR        # write every case under OUTDIR/<name>/
    python tests/hostile/make_cases.py --list        # names, areas and expected errors

Each :class:`Case` builds ``<root>/src`` (a checkpoint directory, hostile in one way) next to
``<root>/secret.txt``, a file outside the checkpoint whose marker must never appear in any
output. ``tests/hostile/test_hostile.py`` runs each case through ``gpt2 convert`` (or the
reader named by ``action``) and asserts a one-line error that names the file and matches
``match``; ``bomb`` cases run in a subprocess whose peak RSS and time are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gpt2_core import checkpoint
from gpt2_core.formats import flax_msgpack
from gpt2_core.formats import torch_bin as tb
from gpt2_core.init import random_state_dict, tiny_config

CFG = tiny_config()
#: written into secret.txt (outside SRC): no output may ever contain it
MARKER = b"HOSTILE-SECRET-7f3a9c"


@dataclass
class Case:
    name: str
    area: str
    build: Callable[[Path], Path]
    #: regex the one-line error must match
    match: str
    #: a file name the error must contain
    names: str
    #: "convert" (gpt2 convert SRC OUT), "read" (read_state_dict without a config),
    #: "load" (load_pretrained), or "tokenizer"
    action: str = "convert"
    #: run in a subprocess with peak RSS (MB) and time (s) bounds
    bomb: bool = False
    #: the reference safetensors package must refuse this file too
    reference_refuses: bool | None = None


# ---------------------------------------------------------------------------- builders
def _secret(root: Path) -> Path:
    p = root / "secret.txt"
    p.write_bytes(MARKER * 4096)
    return p


def _src(root: Path, fmt: str = "safetensors", head: str = "lm") -> Path:
    src = root / "src"
    sd = random_state_dict(CFG, head, seed=0, std=0.3)
    checkpoint.save_pretrained(sd, CFG, src, head, formats=(fmt,))
    (src / "vocab.json").write_text("{}")
    _secret(root)
    return src


def _h5_dataset_path(f: h5py.File, suffix: str) -> str:
    found = []
    f.visititems(
        lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and n.endswith(suffix) else None
    )
    return found[0]


def _h5_replace(
    root: Path, suffix: str, make: Callable[[h5py.File, str, h5py.Dataset], None]
) -> Path:
    src = _src(root, "tf")
    with h5py.File(src / "tf_model.h5", "r+") as f:
        path = _h5_dataset_path(f, suffix)
        ds = f[path]
        keep = (ds.shape, ds.dtype)
        del f[path]
        make(f, path, keep)
    return src


def h5_external_storage(root: Path) -> Path:
    secret = root / "secret.txt"

    def make(f, path, keep):
        shape, dtype = keep
        nbytes = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset(path, shape=shape, dtype=dtype, external=[(str(secret), 0, nbytes)])

    return _h5_replace(root, "wpe/embeddings:0", make)


def h5_external_link(root: Path) -> Path:
    def make(f, path, keep):
        with h5py.File(root / "outside.h5", "w") as g:
            n = int(np.prod(keep[0])) * 4
            g.create_dataset(
                "data", data=np.frombuffer((MARKER * 4096)[:n], np.float32).reshape(keep[0])
            )
        f[path] = h5py.ExternalLink(str(root / "outside.h5"), "/data")

    return _h5_replace(root, "wpe/embeddings:0", make)


def h5_virtual_dataset(root: Path) -> Path:
    def make(f, path, keep):
        shape, dtype = keep
        with h5py.File(root / "outside.h5", "w") as g:
            g.create_dataset("data", shape=shape, dtype=dtype)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[...] = h5py.VirtualSource(str(root / "outside.h5"), "data", shape=shape)
        f.create_virtual_dataset(path, layout)

    return _h5_replace(root, "wpe/embeddings:0", make)


def h5_soft_link_alias(root: Path) -> Path:
    def make(f, path, keep):
        other = _h5_dataset_path(f, "wte/embeddings:0")
        f[path] = h5py.SoftLink("/" + other)

    return _h5_replace(root, "ln_f/gamma:0", make)


def h5_fill_value_bomb(root: Path) -> Path:
    def make(f, path, keep):
        # 4 GB declared, nothing stored: reading it would materialise the fill value
        f.create_dataset(path, shape=(2**30,), dtype="f4", fillvalue=1.0, chunks=(2**20,))

    return _h5_replace(root, "ln_f/gamma:0", make)


def h5_string_dataset(root: Path) -> Path:
    def make(f, path, keep):
        f.create_dataset(path, data=np.array([b"x" * 10] * keep[0][0]))

    return _h5_replace(root, "ln_f/gamma:0", make)


def h5_int_weights(root: Path) -> Path:
    def make(f, path, keep):
        f.create_dataset(path, data=np.full(keep[0], 7, dtype=np.int32))

    return _h5_replace(root, "wte/embeddings:0", make)


def h5_layer_external_link(root: Path) -> Path:
    src = _src(root, "tf")
    with h5py.File(src / "tf_model.h5", "r+") as f:
        with h5py.File(root / "outside.h5", "w") as g:
            f.copy(f["transformer"], g, "transformer")
        del f["transformer"]
        f["transformer"] = h5py.ExternalLink(str(root / "outside.h5"), "/transformer")
    return src


# -- safetensors: raw files, checked against the reference package too
def _st_file(root: Path, header: dict | bytes, data: bytes = b"") -> Path:
    src = _src(root)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    (src / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return src


def _t(shape, begin, end, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def st_overlap(root):
    return _st_file(root, {"a": _t([2], 0, 8), "b": _t([1], 4, 8)}, b"\0" * 8)


def st_hole(root):
    return _st_file(root, {"a": _t([1], 4, 8)}, b"\0" * 8)


def st_trailing(root):
    return _st_file(root, {"a": _t([1], 0, 4)}, b"\0" * 8)


def st_duplicate_key(root):
    raw = (
        b'{"a":'
        + json.dumps(_t([1], 0, 4)).encode()
        + b',"a":'
        + json.dumps(_t([1], 0, 4)).encode()
        + b"}"
    )
    return _st_file(root, raw, b"\0" * 4)


def st_header_too_large(root):
    src = _src(root)
    (src / "model.safetensors").write_bytes((100_000_001).to_bytes(8, "little") + b"{}")
    return src


def st_header_past_end(root):
    src = _src(root)
    (src / "model.safetensors").write_bytes((1000).to_bytes(8, "little") + b"{}")
    return src


def st_float_shape(root):
    return _st_file(root, {"a": _t([1.0], 0, 4)}, b"\0" * 4)


def st_string_offset(root):
    return _st_file(
        root, {"a": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}}, b"\0" * 4
    )


def st_negative_dim(root):
    return _st_file(root, {"a": _t([-1], 0, 4)}, b"\0" * 4)


def st_three_offsets(root):
    return _st_file(
        root, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}}, b"\0" * 4
    )


def st_nan_in_header(root):
    return _st_file(root, b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', b"\0" * 4)


def st_metadata_not_string(root):
    return _st_file(root, {"__metadata__": {"format": 1}, "a": _t([1], 0, 4)}, b"\0" * 4)


def st_unknown_dtype(root):
    return _st_file(root, {"a": _t([1], 0, 4, "F33")}, b"\0" * 4)


def st_size_mismatch(root):
    return _st_file(root, {"a": _t([3], 0, 16)}, b"\0" * 16)


def st_too_short(root):
    src = _src(root)
    (src / "model.safetensors").write_bytes(b"\1\0")
    return src


def st_deep_nesting(root):
    return _st_file(root, b"[" * 200_000 + b"]" * 200_000)


def st_many_entries(root):
    # 200,000 entries (12 MB header): refused before json parses it
    n = 200_000
    parts = [f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n)]
    return _st_file(root, ("{" + ",".join(parts) + "}").encode())


def st_int_weights(root):
    src = root / "src"
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    sd = {k: (v * 1000).astype(np.int32) if k.endswith("wte.weight") else v for k, v in sd.items()}
    from gpt2_core.formats import safetensors as st

    src.mkdir(parents=True)
    CFG.save_pretrained(src)
    st.save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, src / "model.safetensors")
    _secret(root)
    return src


def _sharded(root: Path, fmt: str) -> tuple[Path, dict]:
    src = root / "src"
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    checkpoint.save_pretrained(sd, CFG, src, "lm", formats=(fmt,), max_shard_size=20_000)
    _secret(root)
    return src, sd


def st_shard_unlisted_key(root):
    from gpt2_core.formats import safetensors as st

    src, sd = _sharded(root, "safetensors")
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(idx["weight_map"].values()))[0]
    tensors = st.load_file(src / shard, mmap=False)
    tensors["transformer.h.9.extra"] = np.ones(3, np.float32)
    st.save_file(tensors, src / shard)
    return src


def st_shard_redefines_key(root):
    from gpt2_core.formats import safetensors as st

    src, sd = _sharded(root, "safetensors")
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(set(idx["weight_map"].values()))
    other = next(k for k, v in idx["weight_map"].items() if v == shards[1])
    tensors = st.load_file(src / shards[0], mmap=False)
    tensors[other] = np.zeros_like(sd[other])
    st.save_file(tensors, src / shards[0])
    return src


def st_index_duplicate_key(root):
    src, _ = _sharded(root, "safetensors")
    p = src / "model.safetensors.index.json"
    text = p.read_text()
    idx = json.loads(text)
    k, v = next(iter(idx["weight_map"].items()))
    p.write_text(text.replace('"weight_map": {', f'"weight_map": {{\n    "{k}": "{v}",', 1))
    return src


# -- pytorch_model.bin
def _write_bin(
    path: Path, pkl: bytes, storages: dict[str, bytes], compress: int = zipfile.ZIP_STORED
) -> None:
    with zipfile.ZipFile(path, "w", compress) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        for k, raw in storages.items():
            zf.writestr(f"archive/data/{k}", raw)


def _bin_src(root: Path) -> Path:
    return _src(root, "pytorch")


def bin_code_execution(root):
    src = _bin_src(root)
    target = root / "pwned"
    pkl = (
        b"\x80\x02"
        + tb._op_global("os", "system")
        + tb._op_tuple([tb._op_str(f"touch {target}")])
        + pickle.REDUCE
        + pickle.STOP
    )
    _write_bin(src / "pytorch_model.bin", pkl, {})
    return src


def _bin_payload(root: Path, body: bytes) -> Path:
    src = _bin_src(root)
    _write_bin(src / "pytorch_model.bin", body + pickle.STOP, {})
    return src


def _touch(root: Path) -> bytes:
    return tb._op_str(f"touch {root / 'pwned'}")


def bin_stack_global(root):
    # protocol 4 STACK_GLOBAL: module and name from the stack
    return _bin_payload(
        root,
        b"\x80\x04"
        + tb._op_str("os")
        + tb._op_str("system")
        + pickle.STACK_GLOBAL
        + tb._op_tuple([_touch(root)])
        + pickle.REDUCE,
    )


def bin_inst_opcode(root):
    # protocol 0 INST: calls the class with the marked arguments
    return _bin_payload(root, pickle.MARK + _touch(root) + b"ios\nsystem\n")


def bin_obj_opcode(root):
    return _bin_payload(
        root,
        b"\x80\x02"
        + pickle.MARK
        + tb._op_global("subprocess", "Popen")
        + tb._op_tuple([_touch(root)])
        + pickle.OBJ,
    )


def bin_builtins_eval(root):
    return _bin_payload(
        root,
        b"\x80\x02"
        + tb._op_global("builtins", "eval")
        + tb._op_tuple([tb._op_str("__import__('os').system('true')")])
        + pickle.REDUCE,
    )


def bin_allowed_name_other_module(root):
    # an allow-listed name under another module must not resolve
    return _bin_payload(
        root, b"\x80\x02" + tb._op_global("os", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    )


def bin_persistent_id_not_storage(root):
    return _bin_payload(
        root,
        b"\x80\x02" + tb._op_tuple([tb._op_str("module"), tb._op_str("os")]) + pickle.BINPERSID,
    )


def bin_build_poison(root):
    src = _bin_src(root)
    good = tb._pickle_state_dict([("transformer.wte.weight", "FloatStorage", "0", 4, (4,), (1,))])
    # BUILD on the FloatStorage stand-in: {"dtype": None} made every later load read uint8
    poison = (
        b"\x80\x02"
        + tb._op_global("torch", "FloatStorage")
        + pickle.EMPTY_DICT
        + tb._op_str("dtype")
        + pickle.NONE
        + pickle.SETITEM
        + pickle.BUILD
        + pickle.POP
    )
    _write_bin(
        src / "pytorch_model.bin", poison + good[2:], {"0": np.ones(4, np.float32).tobytes()}
    )
    return src


def bin_build_on_tensor(root):
    src = _bin_src(root)
    good = tb._pickle_state_dict([("transformer.wte.weight", "FloatStorage", "0", 4, (4,), (1,))])
    # a REDUCE result (an ndarray) given state by BUILD: refused
    body = good[2:-2]  # without PROTO ... SETITEMS STOP
    pkl = b"\x80\x02" + body + pickle.EMPTY_DICT + pickle.BUILD + pickle.SETITEMS + pickle.STOP
    _write_bin(src / "pytorch_model.bin", pkl, {"0": np.ones(4, np.float32).tobytes()})
    return src


def bin_stride_zero(root):
    src = _bin_src(root)
    # one float of storage viewed as 2**29 elements (2 GB) through stride 0
    pkl = tb._pickle_state_dict(
        [("transformer.wte.weight", "FloatStorage", "0", 1, (2**29,), (0,))]
    )
    _write_bin(src / "pytorch_model.bin", pkl, {"0": np.ones(1, np.float32).tobytes()})
    return src


def bin_zip_bomb(root):
    src = _bin_src(root)
    numel = 2**28  # 1 GiB of zeros, ~1 MB deflated
    pkl = tb._pickle_state_dict(
        [("transformer.wte.weight", "FloatStorage", "0", numel, (numel,), (1,))]
    )
    path = src / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("archive/data.pkl", pkl)
        with zf.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(numel * 4 // len(chunk)):
                f.write(chunk)
    return src


def bin_storage_size_lie(root):
    src = _bin_src(root)
    pkl = tb._pickle_state_dict(
        [("transformer.wte.weight", "FloatStorage", "0", 2**30, (4,), (1,))]
    )
    _write_bin(src / "pytorch_model.bin", pkl, {"0": np.ones(4, np.float32).tobytes()})
    return src


def bin_legacy_huge_count(root):
    src = _bin_src(root)
    pkl = tb._pickle_state_dict([("transformer.wte.weight", "FloatStorage", "0", 4, (4,), (1,))])
    with open(src / "pytorch_model.bin", "wb") as f:
        for obj in (tb._LEGACY_MAGIC, tb._LEGACY_PROTOCOL, {"little_endian": True}):
            f.write(pickle.dumps(obj, protocol=2))
        f.write(pkl)
        f.write(pickle.dumps(["0"], protocol=2))
        f.write(struct.pack("<q", 2**40) + b"\0" * 16)
    return src


def bin_bytearray8(root):
    src = _bin_src(root)
    _write_bin(src / "pytorch_model.bin", b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".", {})
    return src


def bin_binbytes8(root):
    src = _bin_src(root)
    _write_bin(src / "pytorch_model.bin", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b".", {})
    return src


def _bin_sharded(root):
    """A two-shard pytorch_model.bin checkpoint (our writer does not shard .bin)."""
    src = root / "src"
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    sd.pop("lm_head.weight")
    src.mkdir(parents=True)
    CFG.save_pretrained(src)
    keys = list(sd)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), 1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        tb.save({k: sd[k] for k in part}, src / name)
        weight_map.update({k: name for k in part})
    idx = {"metadata": {}, "weight_map": weight_map}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(idx))
    _secret(root)
    return src, sd, idx


def bin_shard_redefines_key(root):
    src, sd, idx = _bin_sharded(root)
    shards = sorted(set(idx["weight_map"].values()))
    other = next(k for k, v in idx["weight_map"].items() if v == shards[1])
    part = tb.load(src / shards[0])
    part[other] = np.zeros_like(sd[other])
    tb.save(part, src / shards[0])
    return src


def bin_shard_unlisted_key(root):
    src, sd, idx = _bin_sharded(root)
    shard = sorted(set(idx["weight_map"].values()))[0]
    part = tb.load(src / shard)
    part["transformer.h.9.extra"] = np.ones(3, np.float32)
    tb.save(part, src / shard)
    return src


# -- flax_model.msgpack
def _flax_src(
    root: Path, tree_edit: Callable[[dict], None] | None = None, raw: bytes | None = None
) -> Path:
    src = _src(root, "flax")
    if raw is None:
        sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
        tree = flax_msgpack.to_tree(sd, CFG, "lm")
        if tree_edit:
            tree_edit(tree)
        raw = msgpack.packb(
            tree, default=flax_msgpack._pack_default, use_bin_type=True, strict_types=False
        )
    (src / "flax_model.msgpack").write_bytes(raw)
    return src


def msgpack_two_paths_one_key(root):
    def edit(tree):
        tree["transformer"]["wte"]["weight"] = tree["transformer"]["wte"]["embedding"] * 0

    return _flax_src(root, edit)


def msgpack_int_and_str_key(root):
    def edit(tree):
        tree["transformer"]["h"][0] = tree["transformer"]["h"]["0"]

    return _flax_src(root, edit)


def msgpack_duplicate_map_key(root):
    sd = random_state_dict(CFG, "lm", seed=0, std=0.3)
    tree = flax_msgpack.to_tree(sd, CFG, "lm")
    packer = msgpack.Packer(default=flax_msgpack._pack_default, use_bin_type=True)
    raw = packer.pack_map_header(2)
    for _ in range(2):
        raw += packer.pack("transformer") + packer.pack(tree["transformer"])
    return _flax_src(root, raw=raw)


def msgpack_object_dtype(root):
    def edit(tree):
        payload = msgpack.packb(((2,), "O", b"\0" * 16), use_bin_type=True)
        tree["transformer"]["ln_f"]["bias"] = msgpack.ExtType(1, payload)

    return _flax_src(root, edit)


def msgpack_deep_nesting(root):
    return _flax_src(root, raw=b"\x81\xa1a" * 100_000 + b"\xc0")


def msgpack_int_weights(root):
    def edit(tree):
        tree["transformer"]["wte"]["embedding"] = (
            tree["transformer"]["wte"]["embedding"] * 1000
        ).astype(np.int32)

    return _flax_src(root, edit)


# -- config.json and side files
def _config_edit(root: Path, text: str) -> Path:
    src = _src(root)
    (src / "config.json").write_text(text)
    return src


def config_infinite_eps(root):
    d = CFG.to_dict()
    d["layer_norm_epsilon"] = float("inf")
    return _config_edit(root, json.dumps(d))


def config_deep_nesting(root):
    return _config_edit(root, '{"a":' + "[" * 100_000 + "]" * 100_000 + "}")


def config_huge_n_layer(root):
    d = CFG.to_dict()
    d["n_layer"] = 10**6
    return _config_edit(root, json.dumps(d))


def config_fifo(root):
    src = _src(root)
    (src / "config.json").unlink()
    os.mkfifo(src / "config.json")
    return src


def config_dev_zero(root):
    src = _src(root)
    (src / "config.json").unlink()
    (src / "config.json").symlink_to("/dev/zero")
    return src


def config_symlink_outside(root):
    src = _src(root)
    (root / "config.json").write_text((src / "config.json").read_text())
    (src / "config.json").unlink()
    (src / "config.json").symlink_to(root / "config.json")
    return src


def side_file_symlink(root):
    src = _src(root)
    (src / "vocab.json").unlink()
    (src / "vocab.json").symlink_to(root / "secret.txt")
    return src


def side_file_fifo(root):
    src = _src(root)
    os.mkfifo(src / "generation_config.json")
    return src


def weights_symlink_outside(root):
    src = _src(root)
    (src / "model.safetensors").rename(root / "elsewhere.safetensors")
    (src / "model.safetensors").symlink_to(root / "elsewhere.safetensors")
    return src


def shard_symlink_outside(root):
    src, _ = _sharded(root, "safetensors")
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    shard = sorted(set(idx["weight_map"].values()))[0]
    (src / shard).rename(root / shard)
    (src / shard).symlink_to(root / shard)
    return src


def index_shard_escapes(root):
    src, _ = _sharded(root, "safetensors")
    p = src / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = "../secret.txt"
    p.write_text(json.dumps(idx))
    return src


# -- the backends' native files (checked before Keras / Flax build anything)
def _keras_src(root: Path, spec: dict) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    with zipfile.ZipFile(src / "model.keras", "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.15.0"}))
        zf.writestr("config.json", json.dumps(spec))
        zf.writestr("model.weights.h5", b"\0" * 4096)
    _secret(root)
    return src


def keras_huge_n_layer(root):
    d = CFG.to_dict()
    d["n_layer"] = 3000
    return _keras_src(
        root,
        {
            "module": "gpt2_tf.modeling",
            "class_name": "GPT2LMHeadModel",
            "config": {"config": d, "name": "m"},
        },
    )


def keras_foreign_class(root):
    return _keras_src(
        root,
        {
            "module": "keras.layers",
            "class_name": "Lambda",
            "config": {"config": {}, "function": "os.system"},
        },
    )


def nnx_huge_n_layer(root):
    src = root / "src"
    src.mkdir(parents=True)
    d = CFG.to_dict()
    d["n_layer"] = 10**6
    (src / "config.json").write_text(json.dumps(d))
    (src / "nnx_state.msgpack").write_bytes(msgpack.packb({"wte": {}}))
    _secret(root)
    return src


def nnx_duplicate_key(root):
    src = root / "src"
    src.mkdir(parents=True)
    CFG.save_pretrained(src)
    raw = (
        b"\x82"
        + msgpack.packb("wte")
        + msgpack.packb({})
        + msgpack.packb("wte")
        + msgpack.packb({})
    )
    (src / "nnx_state.msgpack").write_bytes(raw)
    _secret(root)
    return src


# ---------------------------------------------------------------------------- the corpus
CASES: list[Case] = [
    # reading outside the checkpoint
    Case("h5_external_storage", "outside", h5_external_storage, "external file", "tf_model.h5"),
    Case("h5_external_link", "outside", h5_external_link, "external link", "tf_model.h5"),
    Case("h5_virtual_dataset", "outside", h5_virtual_dataset, "virtual dataset", "tf_model.h5"),
    Case("h5_soft_link_alias", "outside", h5_soft_link_alias, "soft link", "tf_model.h5"),
    Case(
        "h5_layer_external_link", "outside", h5_layer_external_link, "external link", "tf_model.h5"
    ),
    Case("side_file_symlink", "outside", side_file_symlink, "outside the checkpoint", "vocab.json"),
    Case(
        "config_symlink_outside",
        "outside",
        config_symlink_outside,
        "outside the checkpoint",
        "config.json",
    ),
    Case(
        "weights_symlink_outside",
        "outside",
        weights_symlink_outside,
        "outside the checkpoint",
        "model.safetensors",
    ),
    Case(
        "shard_symlink_outside",
        "outside",
        shard_symlink_outside,
        "outside the checkpoint",
        "model-00001",
    ),
    Case(
        "index_shard_escapes",
        "outside",
        index_shard_escapes,
        "invalid shard file name",
        "model.safetensors.index.json",
    ),
    # pickles: code execution and poisoning later loads
    Case(
        "bin_code_execution",
        "pickle",
        bin_code_execution,
        "refusing to load global 'os.system'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_stack_global",
        "pickle",
        bin_stack_global,
        "refusing to load global 'os.system'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_inst_opcode",
        "pickle",
        bin_inst_opcode,
        "refusing to load global 'os.system'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_obj_opcode",
        "pickle",
        bin_obj_opcode,
        "refusing to load global 'subprocess.Popen'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_builtins_eval",
        "pickle",
        bin_builtins_eval,
        "refusing to load global 'builtins.eval'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_allowed_name_other_module",
        "pickle",
        bin_allowed_name_other_module,
        "refusing to load global 'os.OrderedDict'",
        "pytorch_model.bin",
    ),
    Case(
        "bin_persistent_id_not_storage",
        "pickle",
        bin_persistent_id_not_storage,
        "unsupported persistent id",
        "pytorch_model.bin",
    ),
    Case(
        "bin_build_poison",
        "pickle",
        bin_build_poison,
        "sets the state of a _StorageType",
        "pytorch_model.bin",
    ),
    Case(
        "bin_build_on_tensor",
        "pickle",
        bin_build_on_tensor,
        "sets the state of a ndarray",
        "pytorch_model.bin",
    ),
    Case("bin_bytearray8", "pickle", bin_bytearray8, "out-of-band", "pytorch_model.bin", bomb=True),
    Case(
        "bin_binbytes8", "pickle", bin_binbytes8, "malformed pickle", "pytorch_model.bin", bomb=True
    ),
    # safetensors, rule for rule with the reference
    Case(
        "st_overlap",
        "safetensors",
        st_overlap,
        "overlap another tensor or leave a hole",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_hole",
        "safetensors",
        st_hole,
        "overlap another tensor or leave a hole",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_trailing",
        "safetensors",
        st_trailing,
        "trailing bytes",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_duplicate_key",
        "safetensors",
        st_duplicate_key,
        "duplicate key 'a'",
        "model.safetensors",
        reference_refuses=False,
    ),
    Case(
        "st_header_too_large",
        "safetensors",
        st_header_too_large,
        "over the 100000000-byte limit",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_header_past_end",
        "safetensors",
        st_header_past_end,
        "header length 1000 is invalid",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_float_shape",
        "safetensors",
        st_float_shape,
        "not an unsigned integer",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_string_offset",
        "safetensors",
        st_string_offset,
        "not an unsigned integer",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_negative_dim",
        "safetensors",
        st_negative_dim,
        "not an unsigned integer",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_three_offsets",
        "safetensors",
        st_three_offsets,
        "must have 2 elements",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_nan_in_header",
        "safetensors",
        st_nan_in_header,
        "NaN is not JSON",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_metadata_not_string",
        "safetensors",
        st_metadata_not_string,
        "__metadata__ must map strings to strings",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_unknown_dtype",
        "safetensors",
        st_unknown_dtype,
        "unsupported dtype 'F33'",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_size_mismatch",
        "safetensors",
        st_size_mismatch,
        "needs 12",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_too_short",
        "safetensors",
        st_too_short,
        "too short",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_deep_nesting",
        "safetensors",
        st_deep_nesting,
        "nested too deeply",
        "model.safetensors",
        reference_refuses=True,
    ),
    Case(
        "st_many_entries",
        "safetensors",
        st_many_entries,
        "declares 200000 tensors",
        "model.safetensors",
        bomb=True,
    ),
    # duplicate keys by other routes
    Case(
        "st_shard_unlisted_key", "duplicates", st_shard_unlisted_key, "does not list", "model-00001"
    ),
    Case(
        "st_shard_redefines_key",
        "duplicates",
        st_shard_redefines_key,
        "assigns to model-00002",
        "model-00001",
    ),
    Case(
        "st_index_duplicate_key",
        "duplicates",
        st_index_duplicate_key,
        "duplicate key",
        "model.safetensors.index.json",
    ),
    Case(
        "bin_shard_redefines_key",
        "duplicates",
        bin_shard_redefines_key,
        "assigns to pytorch_model-00002",
        "pytorch_model-00001",
    ),
    Case(
        "bin_shard_unlisted_key",
        "duplicates",
        bin_shard_unlisted_key,
        "does not list",
        "pytorch_model-00001",
    ),
    Case(
        "msgpack_two_paths_one_key",
        "duplicates",
        msgpack_two_paths_one_key,
        "both map to transformer.wte.weight",
        "flax_model.msgpack",
    ),
    Case(
        "msgpack_int_and_str_key",
        "duplicates",
        msgpack_int_and_str_key,
        "two keys spell transformer/h/0",
        "flax_model.msgpack",
    ),
    Case(
        "msgpack_duplicate_map_key",
        "duplicates",
        msgpack_duplicate_map_key,
        "duplicate key 'transformer'",
        "flax_model.msgpack",
    ),
    # non-float weights, non-finite config
    Case(
        "st_int_weights",
        "dtypes",
        st_int_weights,
        "wte.weight .*has dtype int32",
        "model.safetensors",
    ),
    Case("h5_int_weights", "dtypes", h5_int_weights, "wte.weight .*has dtype int32", "tf_model.h5"),
    Case("h5_string_dataset", "dtypes", h5_string_dataset, "non-numeric type", "tf_model.h5"),
    Case(
        "msgpack_int_weights",
        "dtypes",
        msgpack_int_weights,
        "wte.weight .*has dtype int32",
        "flax_model.msgpack",
    ),
    Case(
        "msgpack_object_dtype",
        "dtypes",
        msgpack_object_dtype,
        "dtype 'O' is not numeric",
        "flax_model.msgpack",
    ),
    Case(
        "config_infinite_eps",
        "dtypes",
        config_infinite_eps,
        "layer_norm_epsilon must be a finite number",
        "config.json",
    ),
    # resource exhaustion
    Case(
        "bin_stride_zero",
        "resources",
        bin_stride_zero,
        "overlapping",
        "pytorch_model.bin",
        bomb=True,
    ),
    Case(
        "bin_zip_bomb",
        "resources",
        bin_zip_bomb,
        "decompression bomb",
        "pytorch_model.bin",
        bomb=True,
    ),
    Case(
        "bin_storage_size_lie",
        "resources",
        bin_storage_size_lie,
        "its archive entry holds",
        "pytorch_model.bin",
        bomb=True,
    ),
    Case(
        "bin_legacy_huge_count",
        "resources",
        bin_legacy_huge_count,
        "more than the file holds",
        "pytorch_model.bin",
        bomb=True,
    ),
    Case(
        "h5_fill_value_bomb",
        "resources",
        h5_fill_value_bomb,
        "declares 4294967296 bytes",
        "tf_model.h5",
        action="read",
        bomb=True,
    ),
    Case(
        "h5_fill_value_bomb_with_config",
        "resources",
        h5_fill_value_bomb,
        "larger than any weight of its config",
        "tf_model.h5",
        bomb=True,
    ),
    Case(
        "config_huge_n_layer",
        "resources",
        config_huge_n_layer,
        "declares .* parameters \\(n_layer=1000000",
        "model.safetensors",
        bomb=True,
    ),
    Case("config_fifo", "resources", config_fifo, "not a regular file", "config.json", bomb=True),
    Case(
        "config_dev_zero",
        "resources",
        config_dev_zero,
        "outside the checkpoint",
        "config.json",
        bomb=True,
    ),
    Case(
        "config_deep_nesting", "resources", config_deep_nesting, "nested too deeply", "config.json"
    ),
    Case(
        "msgpack_deep_nesting",
        "resources",
        msgpack_deep_nesting,
        "nested too deeply",
        "flax_model.msgpack",
    ),
    Case(
        "side_file_fifo",
        "resources",
        side_file_fifo,
        "not a regular file",
        "generation_config.json",
        bomb=True,
    ),
    Case(
        "keras_huge_n_layer",
        "resources",
        keras_huge_n_layer,
        "declares .* parameters \\(n_layer=3000",
        "model.keras",
        bomb=True,
    ),
    Case(
        "keras_foreign_class", "pickle", keras_foreign_class, "not a gpt2_tf model", "model.keras"
    ),
    Case(
        "nnx_huge_n_layer",
        "resources",
        nnx_huge_n_layer,
        "declares .* parameters \\(n_layer=1000000",
        "nnx_state.msgpack",
        bomb=True,
    ),
    Case(
        "nnx_duplicate_key",
        "duplicates",
        nnx_duplicate_key,
        "duplicate key 'wte'",
        "nnx_state.msgpack",
    ),
]
BY_NAME = {c.name: c for c in CASES}


def build_all(out: Path) -> list[Path]:
    made = []
    for case in CASES:
        root = out / case.name
        root.mkdir(parents=True)
        made.append(case.build(root))
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="directory to write every case into")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    args = p.parse_args(argv)
    if args.list or not args.out:
        for c in CASES:
            print(f"{c.area:12s} {c.name:32s} {c.names}: {c.match}")
        print(f"{len(CASES)} cases")
        return 0
    build_all(Path(args.out))
    print(f"wrote {len(CASES)} cases under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
