"""dM tables: each run's change against its pretrained reference, which needs no baseline run.

D (dM minus the baseline's dM) needs a baseline run of the same cell and seed; dM alone needs only
spectra_base.csv. So every complete analysed run gets its dM here, with or without a baseline:

- changes.csv: cell x category x level x metric: mean over seeds of the run's layer-mean dM,
  sd, 95 % Student-t CI, n_seeds, n_runs and how many of those runs have a baseline (n_with_baseline);
- missing_baselines.csv: per (cell, seed, starting checkpoint) that has runs but no baseline run,
  the runs waiting for it: what to train so that D can be formed.

Layers unchanged by fine-tuning in every run of a cell are left out, as in the D tables; so is a
run analysed with other options than its baseline (skipped.csv says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from wdiv.report import stats
from wdiv.report.cells import BASELINE, UNSHARED_REFERENCES, annotate, label, match_baselines, unmatched_reason
from wdiv.report.collect import Collection
from wdiv.report.deltas import frozen_layers, run_means
from wdiv.report.samples import seed_values
from wdiv.report.tables import CELL, ORPHAN_NOTE, RUN_KEYS, layer_columns, options_conflicts, sort_table, unchanged_exclusions

CHANGE_COLUMNS = [*CELL, "category", "arm", "variant", "level", "level_index", "metric", "mean_dM", "sd_dM",
                  "ci_low_dM", "ci_high_dM", "n_seeds", "n_runs", "n_with_baseline"]
MISSING_COLUMNS = [*CELL, "seed", "pretrained_sha256", "n_runs", "runs", "why"]


@dataclass
class Changes:
    """dM of every complete analysed run (with or without a baseline)."""

    runs: pd.DataFrame  # one row per run: config, baseline_run_id (NaN: none), mean_*_pre/_ft, mean_dM_*, n_layers
    layers: pd.DataFrame  # run x layer: pre, ft, dM (no D)
    table: pd.DataFrame  # changes.csv
    missing: pd.DataFrame  # missing_baselines.csv
    excluded_layers: pd.DataFrame
    metrics: list[str]
    notes: list[str] = field(default_factory=list)


def change_table(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """changes.csv: per cell, category and level, the seeds' layer-mean dM (seeds as samples)."""
    rows = []
    for cell_key, cell_runs in runs.groupby(CELL, sort=False):
        cell_row = dict(zip(CELL, cell_key))
        for category, grp in cell_runs.groupby("category", sort=False):
            for _, lvl in grp.groupby(grp["level"].map(label), sort=False):
                first = lvl.iloc[0]
                for m in metrics:
                    ci = stats.t_interval(seed_values(lvl, f"mean_dM_{m}"))
                    rows.append({**cell_row, "category": category, "arm": first["arm"], "variant": first["variant"],
                                 "level": first["level"], "level_index": first["level_index"], "metric": m,
                                 "mean_dM": ci["mean"], "sd_dM": ci["sd"], "ci_low_dM": ci["ci_low"],
                                 "ci_high_dM": ci["ci_high"], "n_seeds": ci["n"], "n_runs": len(lvl),
                                 "n_with_baseline": int(lvl["baseline_run_id"].notna().sum())})
    out = pd.DataFrame(rows, columns=CHANGE_COLUMNS)
    return sort_table(out) if not out.empty else out


def _why(orphan: pd.Series, runs: pd.DataFrame) -> str:
    same_cell = runs[(runs["cell"] == orphan["cell"]) & (runs["arm"] == BASELINE)]
    if same_cell.empty:
        return "no baseline run in this cell"
    same_seed = same_cell[same_cell["seed"] == orphan["seed"]]
    if same_seed.empty:
        return "no baseline run with this seed"
    return "the cell's baselines of this seed started from another checkpoint"


def missing_baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """The baselines the D tables lack: one row per (cell, seed, starting checkpoint) with waiting runs."""
    orphans = runs[runs["baseline_run_id"].isna()].copy()
    if orphans.empty:
        return pd.DataFrame(columns=MISSING_COLUMNS)
    shared = ~orphans.get("pretrained_kind", pd.Series(index=orphans.index, dtype=object)).isin(UNSHARED_REFERENCES)
    orphans["pretrained_sha256"] = orphans["pretrained_sha256"].map(label).where(shared, "")
    rows = []
    for key, grp in orphans.groupby([*CELL, "seed", "pretrained_sha256"], sort=True):
        ids = sorted(grp["run_id"])
        rows.append(dict(zip([*CELL, "seed", "pretrained_sha256"], key)) | {
            "n_runs": len(ids), "runs": "; ".join(ids[:5]) + (f"; ... ({len(ids) - 5} more)" if len(ids) > 5 else ""),
            "why": _why(grp.iloc[0], runs)})
    return pd.DataFrame(rows, columns=MISSING_COLUMNS)


def build_changes(collection: Collection, keep_unchanged: bool = False) -> Changes:
    """dM per run and the changes / missing-baselines tables, from every complete analysed run."""
    runs = collection.runs.copy()
    if "cell" not in runs:
        runs = annotate(runs)
    metrics = collection.metrics
    runs["baseline_run_id"], _ = match_baselines(runs)
    # a run analysed otherwise than its baseline is skipped by the D tables (and listed there): not averaged here either
    runs = runs[~runs["run_id"].isin(set(options_conflicts(runs, collection.options)))].reset_index(drop=True)
    kept = collection.layers[collection.layers["run_id"].isin(set(runs["run_id"]))]
    layers = runs[[c for c in RUN_KEYS if c in runs.columns]].merge(kept, on="run_id", how="right")
    excluded = [collection.excluded_layers[collection.excluded_layers["run_id"].isin(set(runs["run_id"]))]]
    frozen = frozen_layers(layers, ["cell"])
    unchanged_table, notes = unchanged_exclusions(layers, frozen)
    if not keep_unchanged:
        excluded.append(unchanged_table)
        layers = layers[~frozen.to_numpy()]
    layers = layers[layer_columns(layers, metrics)]
    runs = runs.merge(run_means(layers, metrics), on="run_id", how="left")
    runs = runs[runs["n_layers"].notna()].reset_index(drop=True)
    excluded_table = pd.concat([t for t in excluded if not t.empty] or [excluded[0]], ignore_index=True)
    excluded_table = runs[["run_id", *CELL]].merge(excluded_table, on="run_id", how="right")
    return Changes(runs=runs, layers=layers, table=change_table(runs, metrics), missing=missing_baselines(runs),
                   excluded_layers=excluded_table, metrics=metrics, notes=[*collection.notes, *notes])


def orphans_skipped(skipped: pd.DataFrame, changes: Changes) -> pd.DataFrame:
    """The skipped table plus the runs without a baseline (in no D table, but in changes.csv)."""
    orphans = changes.runs[changes.runs["baseline_run_id"].isna()]
    if orphans.empty:
        return skipped
    extra = pd.DataFrame({"run_id": orphans["run_id"], "file": "",
                          "reason": orphans.apply(unmatched_reason, axis=1) + ORPHAN_NOTE})
    return pd.concat([skipped, extra], ignore_index=True) if not skipped.empty else extra.reset_index(drop=True)


def missing_lines(missing: pd.DataFrame) -> list[str]:
    """One line per missing baseline, for summary.md and stdout."""
    out = []
    for r in missing.itertuples(index=False):
        sha = f", checkpoint {r.pretrained_sha256[:12]}" if isinstance(r.pretrained_sha256, str) and r.pretrained_sha256 else ""
        seed = r.seed if not (isinstance(r.seed, float) and math.isnan(r.seed)) else "?"
        out.append(f"cell {r.cell} (recipe {r.recipe}), seed {seed}{sha}: {r.why}; waiting: {r.n_runs} run(s) ({r.runs})")
    return out
