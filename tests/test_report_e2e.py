"""scripts/run_study.py and the whole train -> analyze -> report chain on a real tiny study."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from test_notebook import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_study.py"


def run_study(*args, timeout=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_run_study_dry_run_builds_one_multirun_per_arm(tmp_path):
    res = run_study("--dry-run", "--runs-dir", str(tmp_path), "--seeds", "0,1",
                    "--arms", "baseline,weight_decay,synthetic,nosuch", "--levels", "weight_decay=1e-4,1e-3",
                    "--levels", "synthetic=0.5", "--sweep", "synthetic:synth.mode=replace,add", "--n-jobs", "2",
                    "--", "model=vit_micro")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    # synthetic sweeps two knobs (mode x filter): 2 modes x 2 filters x 1 level x 2 seeds
    assert "runs to train: baseline 2, weight_decay 4, synthetic 8; total 14" in out
    assert "+exp=synthetic seed=0,1" in out and "level=0.5 synth.mode=replace,add" in out
    assert "-m +exp=baseline seed=0,1 hydra/launcher=joblib hydra.launcher.n_jobs=2" in out
    assert "+exp=weight_decay" in out and "level=1e-4,1e-3" in out and "model=vit_micro" in out
    assert "no configs/exp/nosuch.yaml: arm nosuch skipped" in out
    assert f"wdiv.analyze {tmp_path} --base --save-esd" in out and f"wdiv.report {tmp_path}" in out
    bad = run_study("--dry-run", "--levels", "weight_decay")
    assert bad.returncode == 2 and "ARM=L1,L2" in bad.stderr
    for args, says in ((("--seeds", "0,x"), "--seeds"), (("--n-jobs", "0"), "--n-jobs"),
                       (("--analyze-jobs", "0"), "--analyze-jobs"), (("--runs-dir", str(SCRIPT)), "--runs-dir")):
        bad = run_study("--dry-run", *args)
        assert bad.returncode == 2 and bad.stderr.startswith(f"run_study: error: {says}"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "===" not in bad.stdout


@pytest.mark.slow
def test_tiny_real_study_end_to_end(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    res = run_study("--runs-dir", str(runs), "--seeds", "0,1", "--arms", "baseline,dropout,weight_decay",
                    "--levels", "dropout=0.1,0.5", "--levels", "weight_decay=1e-4,5e-3",
                    "--", "model=vit_micro", "trainer.epochs=1", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "stage wall times" in res.stdout and "report" in res.stdout
    report_dir = runs / "report"
    runs_csv = pd.read_csv(report_dir / "runs.csv")
    assert len(runs_csv) == 2 + 4 + 4
    assert pd.read_csv(report_dir / "skipped.csv").empty
    layers = pd.read_csv(report_dir / "layers.csv")
    base = layers[layers["arm"] == "baseline"]
    for metric in ("log_norm", "log_spectral_norm", "stable_rank", "entropy"):
        assert (base[f"D_{metric}"] == 0.0).all()
        assert layers[f"dM_{metric}"].notna().all()
    cats = pd.read_csv(report_dir / "categories.csv")
    assert {"dropout", "weight_decay"} <= set(cats["category"])
    assert (cats.loc[cats.category != "baseline", "n_seeds"] == 2).all()
    summary = (report_dir / "summary.md").read_text()
    assert re.search(r"(Yes: mean dlog_norm falls|No: mean dlog_norm does not fall) monotonically with weight_decay", summary)
    for fig in ("level_D_log_norm", "per_layer_D_alpha", "accuracy_vs_weighted_vs", "esd_overlay"):
        assert (report_dir / "figures" / f"{fig}.png").is_file() and (report_dir / "figures" / f"{fig}.pdf").is_file()
    nb = execute_notebook(report_dir, monkeypatch, tmp_path)
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_weight_decay_sweep_without_baselines_through_the_real_chain(tmp_path):
    """No baseline run anywhere: train -> analyze --base -> report still exits 0 with dM and the missing baselines."""
    runs = tmp_path / "runs"
    res = run_study("--runs-dir", str(runs), "--seeds", "0", "--arms", "weight_decay",
                    "--levels", "weight_decay=1e-4,5e-3", "--", "model=vit_micro", "trainer.epochs=1", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    report_dir = runs / "report"
    changes = pd.read_csv(report_dir / "changes.csv")
    assert sorted(changes["level"].unique()) == [1e-4, 5e-3]
    assert (changes["n_with_baseline"] == 0).all() and changes["mean_dM"].notna().all()
    missing = pd.read_csv(report_dir / "missing_baselines.csv")
    assert len(missing) == 1 and missing.at[0, "n_runs"] == 2 and missing.at[0, "seed"] == 0
    assert not (report_dir / "categories.csv").exists()  # no D without a baseline
    summary = (report_dir / "summary.md").read_text()
    assert "D needs baseline runs" in summary or "needs baseline runs" in summary
    assert "weight_decay/wd0.0001/seed0" in summary
