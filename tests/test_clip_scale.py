"""The paper's model at its real input size through the real CLI on CPU: CLIP ViT-B/32 (from
scratch: no weights are downloaded) at 224 px, one short epoch on a CIFAR-format fixture (with
CIFAR-10-C files) and on a DomainNet-style fixture of three domains; run.json scores every
held-out domain / corruption. Slow: ~88M parameters at 224 px."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _data_fixtures import write_cifar10, write_cifar_c, write_domains

pytestmark = pytest.mark.slow

CLIP = ["model=clip_vit_b32", "model.pretrained=none", "trainer.epochs=1", "trainer.batch_size=8", "trainer.eval_batch_size=32",
        "trainer.threads=2", "trainer.progress=false"]


def train(tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    """Run ``python -m wdiv.train``; returns (run.json, config.yaml) of the single run it wrote."""
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "wdiv.train", *CLIP, *overrides, f"paths.runs_dir={runs}"],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_json,) = runs.rglob("run.json")
    return json.loads(run_json.read_text()), yaml.safe_load((run_json.parent / "config.yaml").read_text())


def test_clip_vit_b32_at_224_on_cifar_files_with_cifar_c(tmp_path):
    written = write_cifar10(tmp_path / "cifar", n_train=20, n_test=10)
    write_cifar_c(tmp_path / "cifar_c", written["test_y"], corruptions=("fog",))
    info, cfg = train(tmp_path, "+exp=augment", "level=flip+crop", "data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.check_md5=false",
                      "data.val_fraction=0.5", f"data.cifar_c_root={tmp_path / 'cifar_c'}")
    assert info["status"] == "complete" and info["model"] == "clip_vit_b32" and info["data"] == "cifar10"
    assert cfg["model"]["img_size"] == 224 and cfg["aug"]["at"] == "native" and cfg["aug"]["policy"] == "flip+crop"
    ood = info["metrics"]["ood"]
    assert sorted(ood) == [f"fog/{s}" for s in range(1, 6)] and all(0.0 <= v <= 1.0 for v in ood.values())
    assert info["metrics"]["ood_acc"] == pytest.approx(sum(ood.values()) / len(ood))
    assert info["pretrained"]["kind"] == "initial" and "error" not in (info.get("diversity") or {})


def test_clip_vit_b32_at_224_on_three_domains_scores_each_held_out_domain(tmp_path):
    root = write_domains(tmp_path / "dn", domains=("real", "sketch", "clipart"))
    info, cfg = train(tmp_path, "data=domainnet", f"data.root={root}", "data.train_domain=sketch", "data.val_fraction=0.34", "data.test_fraction=0.25")
    assert info["status"] == "complete" and info["data"] == "domainnet-sketch"
    assert cfg["model"]["img_size"] == 224
    ood = info["metrics"]["ood"]
    assert sorted(ood) == ["clipart", "real"] and all(0.0 <= v <= 1.0 for v in ood.values())
    assert info["metrics"]["ood_acc"] == pytest.approx((ood["clipart"] + ood["real"]) / 2)
    assert info["domains"] == {"train": "sketch", "ood": ["clipart", "real"], "test": "stratified 0.25"}
    assert info["metrics"]["test_acc"] is not None  # the held-out split of the training domain
    assert "error" not in (info.get("diversity") or {})  # images of assorted stored sizes are measured too
