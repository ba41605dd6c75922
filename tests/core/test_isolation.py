"""The dependency rule: gpt2_core imports no framework; conversion imports backends lazily."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
bad = sorted(m for m in ("torch", "tensorflow", "jax", "flax", "keras") if m in sys.modules)
print(",".join(bad))
"""


@pytest.mark.parametrize(
    "module",
    [
        "gpt2_core",
        "gpt2_core.checkpoint",
        "gpt2_core.formats.torch_bin",
        "gpt2_core.formats.tf_h5",
        "gpt2_core.formats.flax_msgpack",
        "gpt2_core.generation_config",
        "gpt2_core.reference",
        "gpt2_core.cpu_kernels",
        "conversion.cli",
        "conversion.convert",
    ],
)
def test_no_framework_imported(module):
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"


def test_backends_do_not_import_each_other():
    import pathlib
    import re

    root = pathlib.Path(__file__).parents[2]
    for pkg, others in [
        ("gpt2_torch", ("gpt2_tf", "gpt2_flax", "tensorflow", "jax", "flax")),
        ("gpt2_tf", ("gpt2_torch", "gpt2_flax", "torch", "jax", "flax")),
        ("gpt2_flax", ("gpt2_torch", "gpt2_tf", "torch", "tensorflow")),
    ]:
        for f in (root / pkg).rglob("*.py"):
            text = f.read_text()
            for other in others:
                assert not re.search(rf"^\s*(import|from)\s+{other}\b", text, re.M), (f, other)
    for f in (root / "gpt2_core").rglob("*.py"):
        text = f.read_text()
        assert not re.search(
            r"^(import|from)\s+(gpt2_torch|gpt2_tf|gpt2_flax|conversion)\b", text, re.M
        ), f
