"""Long wdiv.train checks (pytest -m slow): real SIGKILL + resume, launchers, the default's accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from test_train import TINY, cli

pytestmark = pytest.mark.slow


def test_sigkill_mid_run_then_same_command_resumes_to_identical_result(tmp_path):
    args = ["+exp=dropout", "level=0.3", *TINY, "trainer.epochs=8", "seed=0"]
    cli(*args, f"paths.runs_dir={tmp_path / 'full'}", cwd=tmp_path)
    killed_root = tmp_path / "killed"
    cmd = [sys.executable, "-m", "wdiv.train", *args, f"paths.runs_dir={killed_root}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    state = killed_root / "dropout" / "p0.3" / "seed0" / "checkpoints" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait()
    run_dir = state.parent.parent
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    done_epochs = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done_epochs < 8
    cli(*args, f"paths.runs_dir={killed_root}", cwd=tmp_path)
    full = tmp_path / "full" / "dropout" / "p0.3" / "seed0"
    a, b = json.loads((full / "run.json").read_text()), json.loads((run_dir / "run.json").read_text())
    assert b["status"] == "complete" and a["metrics"] == b["metrics"]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_multirun_through_a_launcher(launcher, tmp_path):
    extra = ["hydra.launcher.timeout_min=10"] if launcher == "submitit_local" else ["hydra.launcher.n_jobs=2"]
    cli("-m", "+exp=weight_decay", "level=1e-4,1e-3", *TINY, f"hydra/launcher={launcher}", *extra, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    for tag in ("wd0.0001", "wd0.001"):
        info = json.loads((tmp_path / "weight_decay" / tag / "seed0" / "run.json").read_text())
        assert info["status"] == "complete" and info["arm"] == "weight_decay"


def test_slurm_launcher_config_composes(tmp_path):
    out = cli("+exp=dropout", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path).stdout
    assert "partition: gpu" in out and "gpus_per_node: 1" in out and "timeout_min: 120" in out


def test_embedded_default_baseline_reaches_090_target_accuracy(tmp_path):
    cli("+exp=baseline", "trainer.progress=false", f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    info = json.loads((tmp_path / "baseline" / "default" / "seed0" / "run.json").read_text())
    assert info["model"] == "vit_small32" and info["metrics"]["test_acc"] >= 0.9


@pytest.mark.gpu
def test_cuda_run_uses_bf16_autocast_and_loader_workers(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cli("+exp=augment", "level=randaugment", *TINY, "trainer.device=auto", f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    info = json.loads((tmp_path / "augment" / "randaugment" / "seed0" / "run.json").read_text())
    assert info["status"] == "complete" and info["device"].startswith("cuda")
