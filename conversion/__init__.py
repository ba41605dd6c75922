"""conversion: any GPT-2 checkpoint to any framework, through the canonical state dict.

Top of the dependency graph (core <- backends <- conversion): it imports backends lazily,
only when a command runs a framework. Also home of the ``gpt2`` command line.
"""
