"""Framework-free readers and writers of transformers' checkpoint formats.

* :mod:`.safetensors` — ``model.safetensors`` (single or sharded), numpy + memory map.
* :mod:`.torch_bin` — ``pytorch_model.bin`` through a restricted unpickler (no code execution).
* :mod:`.tf_h5` — ``tf_model.h5`` (transformers' TF layout) through h5py.
* :mod:`.flax_msgpack` — ``flax_model.msgpack`` (transformers' Flax layout) through msgpack.

Each reader returns a canonical state dict (HF PyTorch names and layouts, see
:mod:`gpt2_core.naming`), each writer takes one, so any backend reads any format without
importing another framework.
"""
