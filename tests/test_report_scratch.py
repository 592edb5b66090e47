"""A from-scratch mini study (model.pretrained=none) through train, analyze and report: each run's
own initial weights are its reference, baselines match on recipe and seed, and their D is exactly 0."""

import subprocess
import sys

import pandas as pd
import pytest

TINY = ["model=vit_micro", "model.pretrained=none", "trainer.epochs=1", "trainer.progress=false",
        "diversity.compute=false", "seed=0,1"]


@pytest.mark.slow
def test_from_scratch_study_goes_through_train_analyze_report(tmp_path):
    runs = tmp_path / "runs"
    for exp in ("+exp=baseline", "+exp=dropout"):
        res = subprocess.run([sys.executable, "-m", "wdiv.train", "-m", exp, *TINY, f"paths.runs_dir={runs}"],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "wdiv.analyze", str(runs), "--base"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "wdiv.report", str(runs), "--no-figures"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = runs / "report"
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 2 + 4 * 2 and pd.read_csv(out / "skipped.csv").empty
    assert set(table["pretrained_kind"]) == {"initial"}
    assert table["recipe"].nunique() == 1
    layers = pd.read_csv(out / "layers.csv")
    base = layers[layers["arm"] == "baseline"]
    assert len(base) > 0 and (base["D_log_norm"] == 0).all() and (base["dM_log_norm"] != 0).any()
    drop = table[table["arm"] == "dropout"]
    assert (drop["baseline_run_id"] == "baseline/default/seed" + drop["seed"].astype(str)).all()
