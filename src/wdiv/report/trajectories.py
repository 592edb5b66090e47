"""Spectral trajectories: when during fine-tuning a regulariser leaves its mark on the spectra.

Runs trained with ``trainer.snapshot_every=K`` and analysed with ``wdiv.analyze --snapshots``
have spectra at epochs 0 (the starting checkpoint), K, 2K, ... Per run, epoch and metric:

- ``mean_M``: the layer mean of the metric at that epoch;
- ``mean_dM``: the layer mean of M(epoch) - M(starting checkpoint), so 0 at epoch 0;
- ``mean_D``: the layer mean of dM(epoch) - dM(the run's baseline, same layer, same epoch).

The layers are the ones the report keeps for the run (its final table: matched to the
reference by name and shape, unchanged layers left out), so a trajectory ends where the final
tables are. A category's band is the 95 % Student-t interval over seeds (a seed's value: the
mean over the category's runs of that seed, as in the final tables), and its onset is the first
epoch whose interval excludes 0.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wdiv.report import checks
from wdiv.report.checks import RunSkipped
from wdiv.report.deltas import LAYER_KEYS, layer_key
from wdiv.report.samples import seed_values
from wdiv.report.stats import t_interval
from wdiv.report.tables import CELL, Report, category_groups

log = logging.getLogger(__name__)

SPECTRA = "spectra.csv"
RUN_COLUMNS = [*CELL, "category", "arm", "variant", "level", "level_index", "run_id", "seed"]
TRAJECTORY_COLUMNS = [*RUN_COLUMNS, "epoch", "metric", "mean_M", "mean_dM", "mean_D", "n_layers"]
BAND_COLUMNS = [*CELL, "category", "arm", "variant", "epoch", "metric", "mean_D", "sd", "n", "ci_low", "ci_high"]
ONSET_COLUMNS = [*CELL, "category", "metric", "first_epoch", "last_epoch", "n_seeds"]


@dataclass
class Trajectories:
    """trajectories.csv (per run), trajectory_bands.csv (per category) and the onsets."""

    runs: pd.DataFrame
    bands: pd.DataFrame
    onsets: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def snapshot_entries(run_dir: Path) -> list[dict]:
    """run.json ``snapshots.epochs`` of a run (empty when it kept none)."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return []
    return list(((info.get("snapshots") or {}).get("epochs")) or [])


def _options(folder: Path) -> str:
    meta = checks.read_summary(folder) or {}
    return json.dumps(meta.get("options"), sort_keys=True)


def _snapshot_spectra(run_dir: Path, entry: dict, run_options: str) -> pd.DataFrame:
    """One snapshot's spectra, checked like a run's; RunSkipped names the file and why."""
    folder = run_dir / Path(entry["path"]).parent
    csv = folder / SPECTRA
    meta = checks.read_summary(folder)
    if meta is None and not csv.exists():
        raise RunSkipped(f"epoch {entry['epoch']} snapshot not analysed (run `python -m wdiv.analyze RUNS_DIR --snapshots`)", csv)
    if meta is not None and meta.get("errors"):
        raise RunSkipped(f"epoch {entry['epoch']} snapshot: its analysis failed: {meta['errors'][0]}", csv)
    if _options(folder) != run_options:
        raise RunSkipped(f"epoch {entry['epoch']} snapshot analysed with other options than the run's final weights", csv)
    return checks.read_spectra(csv, checks.entries(meta).get(SPECTRA), (meta or {}).get("n_layers"))


def _run_epochs(run_id: str, run_dir: Path, kept: pd.DataFrame, metrics: list[str], notes: list[str]) -> pd.DataFrame:
    """Per (epoch, layer): M and dM of every metric for one run's kept layers (epoch 0 included)."""
    pre = kept[[*LAYER_KEYS, *[f"{m}_pre" for m in metrics]]]
    frames = [pre.assign(epoch=0, **{f"M_{m}": pre[f"{m}_pre"] for m in metrics},
                         **{f"dM_{m}": 0.0 for m in metrics})]
    run_options = _options(run_dir)
    for entry in snapshot_entries(run_dir):
        if "path" not in entry:
            continue
        try:
            spectra = _snapshot_spectra(run_dir, entry, run_options)
        except RunSkipped as why:
            notes.append(f"{run_id}: {why}" + (f" ({why.file})" if getattr(why, "file", None) else ""))
            continue
        snap = layer_key(spectra)
        cols = [m for m in metrics if m in snap.columns]
        merged = pre.merge(snap[[*LAYER_KEYS, *cols]], on=list(LAYER_KEYS), how="left")
        frame = merged[list(LAYER_KEYS)].assign(epoch=int(entry["epoch"]))
        for m in metrics:
            now = pd.to_numeric(merged[m], errors="coerce") if m in merged else pd.Series(math.nan, index=merged.index)
            frame[f"M_{m}"] = now.to_numpy(dtype=float)
            frame[f"dM_{m}"] = now.to_numpy(dtype=float) - merged[f"{m}_pre"].to_numpy(dtype=float)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    return out.drop(columns=[f"{m}_pre" for m in metrics]).assign(run_id=run_id)


def build(report: Report) -> Trajectories | None:
    """The trajectory tables of every run with snapshots; None when no run kept any."""
    with_snapshots = [r for r in report.runs["run_id"] if any("path" in e for e in snapshot_entries(report.run_dirs[r]))]
    if not with_snapshots:
        return None
    metrics, notes = report.metrics, []
    epochs = []
    for run_id in with_snapshots:
        kept = report.layers[report.layers["run_id"] == run_id]
        epochs.append(_run_epochs(run_id, report.run_dirs[run_id], kept, metrics, notes))
    layers = pd.concat(epochs, ignore_index=True)
    baseline_of = report.runs.set_index("run_id")["baseline_run_id"]
    base = layers.rename(columns={"run_id": "baseline_run_id", **{f"dM_{m}": f"dM_{m}_base" for m in metrics}})
    base = base[["baseline_run_id", "epoch", *LAYER_KEYS, *[f"dM_{m}_base" for m in metrics]]]
    layers = layers.assign(baseline_run_id=layers["run_id"].map(baseline_of))
    layers = layers.merge(base, on=["baseline_run_id", "epoch", *LAYER_KEYS], how="left")
    for m in metrics:
        layers[f"D_{m}"] = layers[f"dM_{m}"] - layers[f"dM_{m}_base"]
    missing = layers[layers[[f"dM_{m}_base" for m in metrics]].isna().all(axis=1)]
    for (run_id, epoch), _ in missing.groupby(["run_id", "epoch"], sort=False):
        notes.append(f"{run_id}: no D at epoch {epoch}: its baseline {baseline_of[run_id]} has no analysed snapshot there")
    per_run = _layer_means(layers, metrics)
    keys = report.runs[[c for c in RUN_COLUMNS if c in report.runs.columns]]
    per_run = keys.merge(per_run, on="run_id", how="right")
    per_run = per_run.sort_values(["cell", "category", "run_id", "metric", "epoch"], kind="stable").reset_index(drop=True)
    bands = _bands(per_run)
    return Trajectories(runs=per_run[TRAJECTORY_COLUMNS], bands=bands, onsets=_onsets(bands, per_run), notes=notes)


def _layer_means(layers: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    rows = []
    for (run_id, epoch), grp in layers.groupby(["run_id", "epoch"], sort=False):
        for m in metrics:
            rows.append({"run_id": run_id, "epoch": int(epoch), "metric": m,
                         "mean_M": grp[f"M_{m}"].mean(), "mean_dM": grp[f"dM_{m}"].mean(),
                         "mean_D": grp[f"D_{m}"].mean(), "n_layers": int(grp[f"M_{m}"].notna().sum())})
    return pd.DataFrame(rows)


def _bands(per_run: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, category, epoch, metric): mean D over seeds with its 95 % interval."""
    rows = []
    for cell, cell_runs in per_run.groupby("cell", sort=False):
        first = cell_runs.iloc[0]
        cell_row = {k: first[k] for k in CELL}
        for category, arm, variant, grp in category_groups(cell_runs.drop_duplicates("run_id")):
            sub = cell_runs[cell_runs["run_id"].isin(grp["run_id"])]
            for (metric, epoch), at in sub.groupby(["metric", "epoch"], sort=True):
                ci = t_interval(seed_values(at, "mean_D"))
                rows.append({**cell_row, "category": category, "arm": arm, "variant": variant, "epoch": int(epoch),
                             "metric": metric, "mean_D": ci["mean"], "sd": ci["sd"], "n": ci["n"],
                             "ci_low": ci["ci_low"], "ci_high": ci["ci_high"]})
    return pd.DataFrame(rows, columns=BAND_COLUMNS)


def _onsets(bands: pd.DataFrame, per_run: pd.DataFrame) -> pd.DataFrame:
    """First epoch whose interval over seeds excludes 0 (None: never, within the snapshots)."""
    rows = []
    for (cell, category, metric), grp in bands.groupby(["cell", "category", "metric"], sort=False):
        grp = grp.sort_values("epoch")
        apart = grp[(grp["ci_low"] > 0) | (grp["ci_high"] < 0)]
        first = grp.iloc[0]
        rows.append({**{k: first[k] for k in CELL}, "category": category, "metric": metric,
                     "first_epoch": int(apart["epoch"].iloc[0]) if len(apart) else None,
                     "last_epoch": int(grp["epoch"].max()), "n_seeds": int(grp["n"].max())})
    return pd.DataFrame(rows, columns=ONSET_COLUMNS)


def onset_lines(traj: Trajectories, metrics: list[str]) -> list[str]:
    """summary.md: per cell, category and metric, when the seeds' interval first excludes 0."""
    lines = []
    onsets = traj.onsets[traj.onsets["metric"].isin(metrics) & (traj.onsets["category"] != "baseline")]
    several = onsets["cell"].nunique() > 1
    for row in onsets.itertuples(index=False):
        where = f"{row.cell}: " if several else ""
        if row.n_seeds < 2:
            when = f"no interval (n = {row.n_seeds} seed)"
        elif row.first_epoch is None or (isinstance(row.first_epoch, float) and np.isnan(row.first_epoch)):
            when = f"never excludes 0 up to epoch {row.last_epoch}"
        else:
            when = f"first excludes 0 at epoch {int(row.first_epoch)} (of {row.last_epoch})"
        lines.append(f"- {where}{row.category}, D({row.metric}): {when}")
    return lines
