"""scripts/gpu_check.py: without CUDA it says so and exits 0; its steps run end to end on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_without_cuda_it_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no CUDA device: gpu_check skipped"


@pytest.mark.slow
def test_a_cpu_dry_run_passes_every_check(tmp_path):
    """The same three checks (train, throughput, analyze device vs cpu) on a tiny model."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--model", "vit_micro", "--epochs", "3", "--bench-rounds", "1",
                           "--bench-repeat", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("wdiv gpu_check on cpu (dry run)") and lines[1].split() == ["check", "result", "detail"]
    checks = {line.split("  ")[0].strip(): line for line in lines[3:]}
    assert list(checks) == ["train vit_micro", "loop throughput", "analyze cpu vs cpu"], proc.stdout
    assert "max |d alpha| 0.0e+00" in checks["analyze cpu vs cpu"] and (tmp_path / "run" / "model.safetensors").is_file()
    # the throughput ratio on a loaded 2-core CI box is not asserted; the other checks must pass
    assert " ok " in checks["train vit_micro"] and " ok " in checks["analyze cpu vs cpu"], proc.stdout
    assert proc.returncode in (0, 1)
