"""Snapshots during training, their analysis, and the report's trajectories (issue 16, items 1-2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from wdiv.io import sha256_file
from wdiv.train import CONFIG_DIR

EPOCHS = 3
TINY = ["model=vit_micro", f"trainer.epochs={EPOCHS}", "trainer.snapshot_every=1", "trainer.progress=false",
        "diversity.compute=false"]


def run_inprocess(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    return run(cfg, out_dir)


def snapshot_hashes(run_dir: Path) -> dict[str, str]:
    return {p.parent.name: sha256_file(p) for p in sorted((run_dir / "snapshots").glob("epoch*/model.safetensors"))}


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env=os.environ.copy())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert run_inprocess(out, "+exp=dropout")["status"] == "complete"
    return out


def test_snapshots_are_kept_every_epoch_and_recorded(uninterrupted):
    info = json.loads((uninterrupted / "run.json").read_text())
    snaps = info["snapshots"]
    assert snaps["every"] == 1
    assert snaps["epochs"][0] == {"epoch": 0, "weights": "pretrained"}  # the start is referred to, not copied
    assert [e["epoch"] for e in snaps["epochs"]] == list(range(EPOCHS + 1))
    hashes = snapshot_hashes(uninterrupted)
    assert sorted(hashes) == [f"epoch{e}" for e in range(1, EPOCHS + 1)] and not (uninterrupted / "snapshots" / "epoch0").exists()
    for entry in snaps["epochs"][1:]:
        assert entry["sha256"] == hashes[f"epoch{entry['epoch']}"] and entry["path"] == f"snapshots/epoch{entry['epoch']}/model.safetensors"
    assert len(set(hashes.values())) == EPOCHS  # the weights move every epoch
    assert hashes[f"epoch{EPOCHS}"] == sha256_file(uninterrupted / "model.safetensors")


def test_every_k_epochs_only(tmp_path):
    info = run_inprocess(tmp_path, "+exp=baseline", "trainer.snapshot_every=3")
    assert [e["epoch"] for e in info["snapshots"]["epochs"]] == [0, 3]
    assert sorted(snapshot_hashes(tmp_path)) == ["epoch3"]


def test_a_killed_run_resumes_to_the_same_snapshots(tmp_path, uninterrupted, monkeypatch):
    """SIGTERM's stop flag raised during epoch 3: run.json interrupted, the rerun ends with the same bytes."""
    from wdiv.training import interrupts, loop

    calls = {"n": 0}
    real = loop.train_epoch

    def flag_in_third_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            monkeypatch.setattr(interrupts, "_requested", signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_epoch", flag_in_third_epoch)
    with pytest.raises(interrupts.Interrupted):
        run_inprocess(tmp_path, "+exp=dropout")
    assert json.loads((tmp_path / "run.json").read_text())["interrupted"]["after_epoch"] == 2
    assert sorted(snapshot_hashes(tmp_path)) == ["epoch1", "epoch2"]
    monkeypatch.setattr(interrupts, "_requested", None)
    monkeypatch.setattr(loop, "train_epoch", real)
    info = run_inprocess(tmp_path, "+exp=dropout")
    assert info["status"] == "complete"
    assert snapshot_hashes(tmp_path) == snapshot_hashes(uninterrupted)
    assert info["snapshots"] == json.loads((uninterrupted / "run.json").read_text())["snapshots"]


def test_a_damaged_snapshot_of_a_complete_run_is_named_and_dropped(tmp_path, uninterrupted, caplog):
    """The final weights do not depend on it and the last resume state cannot rewrite it."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    snap = run_dir / "snapshots" / "epoch2" / "model.safetensors"
    snap.write_bytes(snap.read_bytes()[:100])
    info = run_inprocess(run_dir, "+exp=dropout")
    assert any(f"{snap}: truncated (100 of" in r.getMessage() and "trainer.resume=false retrains" in r.getMessage()
               for r in caplog.records)
    assert info["status"] == "complete" and not snap.exists()
    assert [e["epoch"] for e in info["snapshots"]["epochs"]] == [0, 1, 3]
    assert json.loads((run_dir / "run.json").read_text())["snapshots"] == info["snapshots"]
    kept = snapshot_hashes(uninterrupted)
    del kept["epoch2"]
    assert snapshot_hashes(run_dir) == kept
    assert sha256_file(run_dir / "model.safetensors") == sha256_file(uninterrupted / "model.safetensors")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Baseline and weight decay, 2 seeds, snapshots every epoch, analysed with --snapshots, reported."""
    runs = tmp_path_factory.mktemp("study")
    common = [*TINY, "seed=0,1", f"paths.runs_dir={runs}"]
    for exp in (["+exp=baseline"], ["+exp=weight_decay", "level=5e-3"]):
        proc = cli("wdiv.train", "-m", *exp, *common, cwd=runs)
        assert proc.returncode == 0, proc.stderr[-3000:]
    plain = cli("wdiv.analyze", str(runs), "--base", "-q", cwd=runs)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert not list(runs.rglob("snapshots/*/spectra.csv"))  # snapshots only when asked for
    proc = cli("wdiv.analyze", str(runs), "--base", "--snapshots", cwd=runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{4 * EPOCHS} written, 4 up to date" in proc.stderr
    proc = cli("wdiv.report", str(runs), "--formats", "png", cwd=runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs


def test_a_baseline_against_itself_has_d_exactly_zero_at_every_epoch(study):
    traj = pd.read_csv(study / "report" / "trajectories.csv")
    base = traj[traj["category"] == "baseline"]
    assert set(base["epoch"]) == set(range(EPOCHS + 1)) and base["run_id"].nunique() == 2
    assert (base["mean_D"] == 0.0).all()
    assert (traj[traj["epoch"] == 0][["mean_dM", "mean_D"]] == 0.0).all().all()  # epoch 0 is the start itself
    assert (traj[(traj["epoch"] > 0) & (traj["metric"] == "log_norm")]["mean_dM"] != 0.0).all()


def test_the_last_snapshot_ends_where_the_final_tables_are(study):
    """The last snapshot is the final weights: its layer means equal runs.csv's."""
    traj = pd.read_csv(study / "report" / "trajectories.csv")
    runs = pd.read_csv(study / "report" / "runs.csv").set_index("run_id")
    last = traj[traj["epoch"] == EPOCHS]
    assert len(last) > 0
    for row in last.itertuples(index=False):
        assert row.mean_dM == pytest.approx(runs.at[row.run_id, f"mean_dM_{row.metric}"], rel=1e-12, abs=1e-12)
        assert row.mean_D == pytest.approx(runs.at[row.run_id, f"mean_D_{row.metric}"], rel=1e-12, abs=1e-12)
        assert row.mean_M == pytest.approx(runs.at[row.run_id, f"mean_{row.metric}_ft"], rel=1e-12, abs=1e-12)


def test_bands_are_seed_intervals_and_onsets_are_in_the_summary(study):
    from scipy import stats

    report = study / "report"
    traj = pd.read_csv(report / "trajectories.csv")
    bands = pd.read_csv(report / "trajectory_bands.csv")
    wd = traj[(traj["category"] == "weight_decay") & (traj["metric"] == "log_norm") & (traj["epoch"] == 2)]
    row = bands[(bands["category"] == "weight_decay") & (bands["metric"] == "log_norm") & (bands["epoch"] == 2)].iloc[0]
    x = wd["mean_D"].to_numpy()
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / len(x) ** 0.5
    assert row["n"] == 2 and row["mean_D"] == pytest.approx(x.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    onsets = pd.read_csv(report / "trajectory_onsets.csv")
    summary = (report / "summary.md").read_text()
    assert "## Spectral trajectories over training" in summary
    for r in onsets[(onsets["category"] == "weight_decay") & onsets["metric"].isin(["log_norm", "alpha"])].itertuples():
        apart = bands[(bands["category"] == "weight_decay") & (bands["metric"] == r.metric)
                      & ((bands["ci_low"] > 0) | (bands["ci_high"] < 0))]
        if apart.empty:
            assert pd.isna(r.first_epoch) and f"weight_decay, D({r.metric}): never excludes 0 up to epoch {EPOCHS}" in summary
        else:
            assert r.first_epoch == apart["epoch"].min()
            assert f"weight_decay, D({r.metric}): first excludes 0 at epoch {int(r.first_epoch)} (of {EPOCHS})" in summary
    assert (report / "figures" / "trajectory_D_log_norm.png").stat().st_size > 1000


def test_an_unanalysed_snapshot_is_named_in_the_notes(study, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(study, runs, ignore=shutil.ignore_patterns("report"))
    gone = runs / "weight_decay" / "wd0.005" / "seed1" / "snapshots" / "epoch3"
    for name in ("spectra.csv", "spectra_summary.json"):
        (gone / name).unlink()
    proc = cli("wdiv.report", str(runs), "--no-figures", cwd=runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traj = pd.read_csv(runs / "report" / "trajectories.csv")
    assert 3 not in set(traj[traj["run_id"] == "weight_decay/wd0.005/seed1"]["epoch"])
    summary = (runs / "report" / "summary.md").read_text()
    assert "weight_decay/wd0.005/seed1: epoch 3 snapshot not analysed (run `python -m wdiv.analyze RUNS_DIR --snapshots`)" in summary
