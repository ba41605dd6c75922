"""benchmarks/gpu_check.sh: the GPU readiness script runs end to end (here as its CPU dry run).

No GPU is needed: ``--device cpu`` runs the same parity / generate / attention checks against
the transformers golden outputs, so a broken check is found before anyone spends GPU time.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_shell_wrapper_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


@pytest.mark.slow
def test_torch_dry_run_passes_every_check():
    pytest.importorskip("torch")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--framework",
            "torch",
            "--device",
            "cpu",
            "--quick",
            "--skip",
            "speed",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "GPT2_ZOO_HF_PYTHON": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    checks = {r["check"]: r["status"] for r in rows}
    for name in (
        "parity fp32 nomask",
        "parity bf16 left_pad",
        "generate greedy",
        "generate beam",
        "generate sample (seeded)",
        "attn sdpa (fp32)",
    ):
        assert checks[name] == "PASS", rows
    assert checks["attn flash_attention_2"] in ("PASS", "SKIP")


def test_missing_gpu_is_a_failure_not_a_pass():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--framework", "torch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "FAIL device: no GPU visible to torch" in proc.stdout
