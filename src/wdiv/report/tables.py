"""The report's tables, computed within study cells from one Collection.

Every table carries the cell columns (model, data, recipe, cell); nothing is pooled across cells
here (the explicit cross-cell mode lives in `across`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from wdiv.report import stats
from wdiv.report.across import across as across_cells, normalise_dims
from wdiv.report.cells import BASELINE, CELL_KEYS, NO_RECIPE, annotate, label, match_baselines, sort_key, unmatched_reason
from wdiv.report.collect import Collection
from wdiv.report.deltas import LAYER_KEYS, SHAPE_COLUMNS, UNCHANGED, double_differences, frozen_layers, run_means
from wdiv.report.samples import layer_samples, seed_values

CELL = [*CELL_KEYS, "cell"]
RUN_KEYS = ("run_id", *CELL, "exp", "arm", "variant", "category", "level", "level_index", "seed")
DIVERSITY_COLUMNS = ("diversity_vendi_pixel", "diversity_vendi_embed", "diversity_rho", "diversity_weighted_vs")
TREND_DIVERSITY = ("diversity_vendi_embed", "diversity_weighted_vs")
ACCURACY_COLUMNS = ("test_acc", "ood_acc")
OUTCOMES = ("test_acc", "test_ece", "ood_acc")
ORPHAN_NOTE = ": no D; its dM is in changes.csv"


class NoRuns(RuntimeError):
    """Nothing usable was found; the message says why."""


class NoBaselines(NoRuns):
    """Complete analysed runs exist, but none has a matching baseline: D cannot be formed (dM can)."""


@dataclass
class Report:
    """All report tables, computed from one Collection."""

    runs: pd.DataFrame
    layers: pd.DataFrame
    categories: pd.DataFrame
    anova: pd.DataFrame
    pairwise: pd.DataFrame
    trend: pd.DataFrame
    correlations: pd.DataFrame
    accuracy: pd.DataFrame
    headlines: pd.DataFrame
    skipped: pd.DataFrame
    excluded_layers: pd.DataFrame
    metrics: list[str]
    notes: list[str]
    run_dirs: dict[str, Path]
    across: dict = field(default_factory=dict)  # dims label -> across.AcrossResult
    run_files: dict[str, dict] = field(default_factory=dict)  # run_id -> its record's file entries
    trajectories: object = None  # report.trajectories.Trajectories when runs kept training snapshots
    soups: pd.DataFrame | None = None  # report.soups: each model soup against its members (soups.csv)


# ----------------------------------------------------------------------------- levels


def level_order(frame: pd.DataFrame) -> pd.Series:
    """Sort position of each row's level: the numeric value when the level is a number, else
    the grid index, else the name (off-grid named levels have no index)."""
    numeric = pd.to_numeric(frame["level"], errors="coerce")
    index = pd.to_numeric(frame["level_index"], errors="coerce")
    return numeric.where(numeric.notna(), index)


def sort_table(table: pd.DataFrame, category: str = "category") -> pd.DataFrame:
    key = table.assign(
        _arm=sort_key(table[category]),
        _all=table["level"].astype(str) == "all",
        _lvl=level_order(table) if "level_index" in table else 0.0,
        _name=table["level"].map(label),
    )
    by = [*CELL_KEYS, "_arm", category, "_all", "_lvl", "_name"]
    return key.sort_values(by, kind="stable", na_position="last").drop(columns=["_arm", "_all", "_lvl", "_name"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- categories


def _row(cell_row: dict, category, arm, variant, level, level_index, metric, values: pd.Series, dm_values: pd.Series) -> dict:
    d, dm = stats.t_interval(values), stats.t_interval(dm_values)
    return {
        **cell_row, "category": category, "arm": arm, "variant": variant, "level": level, "level_index": level_index,
        "metric": metric, "mean_D": d["mean"], "sd_D": d["sd"], "ci_low_D": d["ci_low"], "ci_high_D": d["ci_high"],
        "mean_dM": dm["mean"], "sd_dM": dm["sd"], "ci_low_dM": dm["ci_low"], "ci_high_dM": dm["ci_high"],
        "n_seeds": d["n"], "p": stats.one_sample_p(values), "note": stats.small_n_note(d["n"]),
    }


def _published(layers: pd.DataFrame, metric: str) -> dict:
    ci = stats.t_interval(layer_samples(layers, metric))
    return {"published_mean_D": ci["mean"], "published_ci_low_D": ci["ci_low"], "published_ci_high_D": ci["ci_high"],
            "published_n_layers": ci["n"]}


def category_groups(runs: pd.DataFrame) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(category, arm, variant, runs) for every category, plus an arm pool for multi-variant arms."""
    groups = [(cat, grp["arm"].iloc[0], grp["variant"].iloc[0], grp) for cat, grp in runs.groupby("category", sort=False)]
    for arm, grp in runs.groupby("arm", sort=False):
        if grp["variant"].nunique() > 1:
            groups.append((arm, arm, "all", grp))
    return groups


def category_table(runs: pd.DataFrame, layers: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """categories.csv: cell x category x level x metric, seeds as samples, published columns beside."""
    rows = []
    for cell_key, cell_runs in runs.groupby(CELL, sort=False):
        cell_row = dict(zip(CELL, cell_key))
        cell_layers = layers[layers["cell"] == cell_row["cell"]]
        for category, arm, variant, grp in category_groups(cell_runs):
            ids = set(grp["run_id"])
            if variant != "all":
                for _, lvl in grp.groupby(grp["level"].map(label), sort=False):
                    lvl_layers = cell_layers[cell_layers["run_id"].isin(set(lvl["run_id"]))]
                    index = lvl["level_index"].iloc[0]
                    for m in metrics:
                        row = _row(cell_row, category, arm, variant, lvl["level"].iloc[0], index, m,
                                   seed_values(lvl, f"mean_D_{m}"), seed_values(lvl, f"mean_dM_{m}"))
                        rows.append(row | _published(lvl_layers, m))
            if arm == BASELINE:
                continue
            sub_layers = cell_layers[cell_layers["run_id"].isin(ids)]
            for m in metrics:
                row = _row(cell_row, category, arm, variant, "all", math.nan, m,
                           seed_values(grp, f"mean_D_{m}"), seed_values(grp, f"mean_dM_{m}"))
                rows.append(row | _published(sub_layers, m))
    out = pd.DataFrame(rows)
    per_level = (out["level"].astype(str) != "all") & (out["arm"] != BASELINE)
    out = stats.adjust_within(out, ["cell", "metric"], mask=per_level)
    pooled = stats.adjust_within(out, ["cell", "metric"], mask=out["level"].astype(str) == "all")
    is_all = out["level"].astype(str) == "all"
    out.loc[is_all, ["p_holm", "q_bh"]] = pooled.loc[is_all, ["p_holm", "q_bh"]]
    return sort_table(out)


# ----------------------------------------------------------------------------- tests


def category_samples(runs: pd.DataFrame, layers: pd.DataFrame, metric: str) -> dict[str, dict[str, np.ndarray]]:
    """Samples per non-baseline category of one cell, under both schemes (arm pools not included)."""
    out: dict[str, dict[str, np.ndarray]] = {stats.SEED_SAMPLES: {}, stats.LAYER_SAMPLES: {}}
    for category, grp in runs[runs["arm"] != BASELINE].groupby("category", sort=False):
        out[stats.SEED_SAMPLES][category] = seed_values(grp, f"mean_D_{metric}").to_numpy(dtype=float)
        sub = layers[layers["run_id"].isin(set(grp["run_id"]))]
        out[stats.LAYER_SAMPLES][category] = layer_samples(sub, metric).to_numpy(dtype=float)
    return out


def category_tests(runs: pd.DataFrame, layers: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Across categories within each cell: ANOVA (classic and Welch for seeds; classic for the
    published layers) and pairwise t-tests (Welch for seeds, Student for the published layers)."""
    anova_rows, pair_rows = [], []
    for cell_key, cell_runs in runs.groupby(CELL, sort=False):
        cell_row = dict(zip(CELL, cell_key))
        cell_layers = layers[layers["cell"] == cell_row["cell"]]
        cell_runs = cell_runs.assign(_o=sort_key(cell_runs["category"])).sort_values(["_o", "category"], kind="stable")
        for m in metrics:
            for scheme, groups in category_samples(cell_runs, cell_layers, m).items():
                base = {**cell_row, "metric": m, "samples": scheme}
                anova_rows.append(base | stats.anova(groups))
                if scheme == stats.SEED_SAMPLES:
                    anova_rows.append(base | stats.anova(groups, welch=True))
                pair_rows += [base | r for r in stats.pairwise(groups, equal_var=scheme == stats.LAYER_SAMPLES)]
    anova = pd.DataFrame(anova_rows)
    pairwise = pd.DataFrame(pair_rows)
    if not pairwise.empty:
        pairwise = stats.adjust_within(pairwise, ["cell", "metric", "samples"])
    return anova, pairwise


def attach_anova(categories: pd.DataFrame, anova: pd.DataFrame) -> pd.DataFrame:
    """The 'all' rows carry the across-category one-way ANOVA p-values of both schemes."""
    if anova.empty:
        return categories
    one_way = anova[anova["test"] == stats.ONE_WAY]
    wide = one_way.pivot_table(index=["cell", "metric"], columns="samples", values="p", aggfunc="first", dropna=False)
    wide = wide.rename(columns={stats.SEED_SAMPLES: "anova_p_seeds", stats.LAYER_SAMPLES: "anova_p_published"}).reset_index()
    out = categories.merge(wide, on=["cell", "metric"], how="left")
    not_all = out["level"].astype(str) != "all"
    out.loc[not_all, [c for c in ("anova_p_seeds", "anova_p_published") if c in out]] = math.nan
    return out


# ----------------------------------------------------------------------------- trends, accuracy


def level_trend(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Spearman of strength with run layer-mean D per cell and category.

    Numeric levels trend on their value. Named levels (augmentation policies) have no strength
    of their own: they trend on the measured diversity of each run when it was recorded, and
    otherwise get no trend (the grid position is an order chosen by hand, not a strength).
    """
    rows = []
    for key, grp in runs[runs["arm"] != BASELINE].groupby([*CELL, "category"], sort=False):
        base = dict(zip([*CELL, "category"], key))
        numeric = pd.to_numeric(grp["level"], errors="coerce")
        if numeric.notna().all():
            axes = [("level", numeric)]
        else:
            axes = [(c, pd.to_numeric(grp[c], errors="coerce")) for c in TREND_DIVERSITY
                    if c in grp and pd.to_numeric(grp[c], errors="coerce").notna().any()]
        if not axes:
            for m in metrics:
                rows.append(base | {"metric": m, "x": "", "n_runs": len(grp), "n_levels": grp["level"].map(label).nunique(),
                                    "spearman_rho": math.nan, "p": math.nan,
                                    "note": "named levels without recorded diversity: no strength to trend on"})
            continue
        for x_name, x in axes:
            for m in metrics:
                rho, p, n, note = stats.correlate(x, grp[f"mean_D_{m}"], sps.spearmanr)
                rows.append(base | {"metric": m, "x": x_name, "n_runs": n, "n_levels": grp["level"].map(label).nunique(),
                                    "spearman_rho": rho, "p": p, "note": note})
    columns = [*CELL, "category", "metric", "x", "n_runs", "n_levels", "spearman_rho", "p", "note"]
    return pd.DataFrame(rows, columns=columns)


def accuracy_correlations(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Pearson and Spearman of spectral metrics and diversity with test and OOD accuracy, per cell."""
    xs = [f"mean_{m}_ft" for m in metrics] + [f"mean_dM_{m}" for m in metrics] + [f"mean_D_{m}" for m in metrics]
    xs += [c for c in DIVERSITY_COLUMNS if c in runs.columns]
    rows = []
    for key, grp in runs.groupby(CELL, sort=False):
        base = dict(zip(CELL, key))
        for y_name in (c for c in ACCURACY_COLUMNS if c in grp.columns):
            for x_name in (c for c in xs if c in grp.columns):
                r, pr, n, note = stats.correlate(grp[x_name], grp[y_name], sps.pearsonr)
                rho, ps, _, _ = stats.correlate(grp[x_name], grp[y_name], sps.spearmanr)
                rows.append(base | {"x": x_name, "y": y_name, "n_runs": n, "pearson_r": r, "pearson_p": pr,
                                    "spearman_rho": rho, "spearman_p": ps, "note": note})
    columns = [*CELL, "x", "y", "n_runs", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "note"]
    return pd.DataFrame(rows, columns=columns)


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Outcome means over seeds per cell, category and level, with 95 % t CIs."""
    rows = []
    for key, grp in runs.groupby([*CELL, "category", runs["level"].map(label).rename("_level")], sort=False):
        row = dict(zip(CELL, key[:4])) | {"category": key[4], "arm": grp["arm"].iloc[0], "variant": grp["variant"].iloc[0],
                                          "level": grp["level"].iloc[0], "level_index": grp["level_index"].iloc[0]}
        for col in (c for c in OUTCOMES if c in grp.columns):
            ci = stats.t_interval(seed_values(grp, col))
            row |= {col: ci["mean"], f"{col}_ci_low": ci["ci_low"], f"{col}_ci_high": ci["ci_high"]}
        row["n_seeds"] = int(grp["seed"].nunique())
        rows.append(row)
    return sort_table(pd.DataFrame(rows))


def monotonic_statement(runs: pd.DataFrame, arm: str = "weight_decay", metric: str = "log_norm") -> dict:
    """Does the seed mean of the layer-mean dM fall monotonically with the level? (one cell's runs)

    Uses dM (fine-tuned minus pretrained), the quantity the published table reports per level.
    """
    col = f"mean_dM_{metric}"
    sub = runs[runs["arm"] == arm]
    name = f"mean d{metric}"
    result = {"arm": arm, "metric": f"d{metric}", "monotonic": None, "levels": [], "means": [], "n_seeds_per_level": []}
    if sub.empty or col not in sub.columns:
        return result | {"statement": f"Whether {name} falls monotonically with {arm} strength cannot be assessed: no complete {arm} runs."}
    sub = sub.assign(_level=pd.to_numeric(sub["level"], errors="coerce")).dropna(subset=["_level"])
    per_seed = sub.groupby(["_level", "seed"])[col].mean().reset_index()
    per_level = per_seed.groupby("_level").agg(mean=(col, "mean"), n=("seed", "nunique")).sort_index()
    result |= {"levels": per_level.index.tolist(), "means": per_level["mean"].tolist(),
               "n_seeds_per_level": per_level["n"].tolist()}
    if len(per_level) < 2:
        return result | {"statement": f"Whether {name} falls monotonically with {arm} strength cannot be assessed: fewer than 2 levels."}
    means = per_level["mean"].to_numpy()
    seeds = per_level["n"]
    n_text = f"n={seeds.min()}" if seeds.min() == seeds.max() else f"n={seeds.min()}-{seeds.max()}"
    values = ", ".join(f"{v:+.4g} ({lvl:g})" for lvl, v in zip(per_level.index, means))
    if np.any(np.isnan(means)):
        return result | {"statement": f"Whether {name} falls monotonically with {arm} strength cannot be assessed: NaN means ({values})."}
    steps = np.diff(means)
    if np.all(steps < 0):
        return result | {"monotonic": True, "statement": f"Yes: {name} falls monotonically with {arm} strength: {values} (seed means, {n_text} seeds per level)."}
    bad = [f"{per_level.index[i]:g} -> {per_level.index[i + 1]:g}" for i in np.flatnonzero(steps >= 0)]
    return result | {"monotonic": False, "statement": (
        f"No: {name} does not fall monotonically with {arm} strength (rises or stays between "
        f"{', '.join(bad)}): {values} (seed means, {n_text} seeds per level).")}


def headlines(runs: pd.DataFrame) -> pd.DataFrame:
    """The weight-decay headline of every cell."""
    rows = []
    for key, grp in runs.groupby(CELL, sort=False):
        found = monotonic_statement(grp)
        rows.append(dict(zip(CELL, key)) | {"n_runs": len(grp), "n_seeds": int(grp["seed"].nunique()), **found,
                                            "levels": json.dumps(found["levels"]), "means": json.dumps(found["means"]),
                                            "n_seeds_per_level": json.dumps(found["n_seeds_per_level"])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- build


def _options_mismatch(a: str, b: str) -> str:
    try:
        da, db = json.loads(a or "{}"), json.loads(b or "{}")
    except ValueError:
        return "unreadable options"
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return ", ".join(f"{k}={da.get(k)!r} vs {db.get(k)!r}" for k in keys)


def options_conflicts(runs: pd.DataFrame, options: dict[str, str]) -> dict[str, str]:
    """run_id -> how its analysis options differ from its baseline's, for every matched run whose do."""
    matched = runs["baseline_run_id"].notna()
    return {r: _options_mismatch(options.get(r, ""), options.get(b, "")) for r, b in
            zip(runs.loc[matched, "run_id"], runs.loc[matched, "baseline_run_id"]) if options.get(r, "") != options.get(b, "")}


def _unrecorded(run_id: str, options: dict[str, str]) -> str:
    """The record a run lacks when it has no recorded options (its file column in skipped.csv), else ''."""
    if options.get(run_id, ""):
        return ""
    return "spectra_summary.json" if run_id == "." else f"{run_id}/spectra_summary.json"


def layer_columns(layers: pd.DataFrame, metrics: list[str]) -> list[str]:
    lead = [*RUN_KEYS, "baseline_run_id", *LAYER_KEYS, "layer_order", *[c for c in SHAPE_COLUMNS if c in layers.columns]]
    per_metric = [c for m in metrics for c in (f"{m}_pre", f"{m}_ft", f"dM_{m}", f"D_{m}")]
    return [c for c in lead + per_metric if c in layers.columns]


def unchanged_exclusions(layers: pd.DataFrame, frozen: pd.Series) -> tuple[pd.DataFrame, list[str]]:
    gone = layers[frozen]
    table = gone[["run_id", *LAYER_KEYS]].assign(reason=UNCHANGED, evidence=gone["unchanged_by"].to_numpy())
    notes = []
    partial = layers[~frozen & layers["unchanged"]]
    for (cell, name), grp in partial.groupby(["cell", "longname"], sort=False):
        total = layers[(layers["cell"] == cell) & (layers["longname"] == name)]["run_id"].nunique()
        notes.append(f"{cell}: layer {name} is unchanged in {grp['run_id'].nunique()} of {total} runs; kept "
                     "(other runs changed it)")
    return table, notes


def build(collection: Collection, keep_unchanged: bool = False, across: list[tuple[str, ...]] | None = None) -> Report:
    """Match baselines within cells, leave out unchanged layers, compute D and every statistic."""
    runs = collection.runs.copy()
    if runs.empty:
        raise NoRuns("no complete analysed run found")
    if "cell" not in runs:
        runs = annotate(runs)
    metrics = collection.metrics
    runs["baseline_run_id"], notes = match_baselines(runs)
    notes = [*collection.notes, *notes]
    unrecorded = int((runs["recipe"] == NO_RECIPE).sum())
    if unrecorded:
        notes.append(f"{unrecorded} run(s) have no recipe in run.json (trained before wdiv recorded recipes, or brought "
                     f"in without one): within a model and data they count as one recipe, '{NO_RECIPE}'")
    skipped = [collection.skipped]
    orphans = runs["baseline_run_id"].isna()
    if orphans.any():
        skipped.append(pd.DataFrame({"run_id": runs.loc[orphans, "run_id"], "file": "",
                                     "reason": runs[orphans].apply(unmatched_reason, axis=1) + ORPHAN_NOTE}))
    options = collection.options
    differ = options_conflicts(runs, options)
    if differ:
        skipped.append(pd.DataFrame({"run_id": list(differ), "file": [_unrecorded(r, options) for r in differ], "reason": [
            f"analysed with other options than its baseline {runs.set_index('run_id').at[r, 'baseline_run_id']}: {why}"
            for r, why in differ.items()]}))
    runs = runs[~orphans & ~runs["run_id"].isin(set(differ))].reset_index(drop=True)
    if runs.empty:
        raise NoBaselines("no complete analysed run has a matching baseline")
    keep = set(runs["run_id"])
    layers = collection.layers[collection.layers["run_id"].isin(keep)]
    layers = runs[[c for c in RUN_KEYS if c in runs.columns]].merge(layers, on="run_id", how="right")
    excluded = [collection.excluded_layers[collection.excluded_layers["run_id"].isin(keep)]]
    frozen = frozen_layers(layers, ["cell"])
    unchanged_table, unchanged_notes = unchanged_exclusions(layers, frozen)
    notes += unchanged_notes
    if keep_unchanged:
        notes.append(f"--keep-unchanged: {int(frozen.sum())} layer rows unchanged by fine-tuning are kept in every mean")
    else:
        excluded.append(unchanged_table)
        layers = layers[~frozen.to_numpy()]
    layers = double_differences(layers, runs.set_index("run_id")["baseline_run_id"], metrics)
    layers = layers[layer_columns(layers, metrics)]
    runs = runs.merge(run_means(layers, metrics), on="run_id", how="left")
    empty = runs["n_layers"].isna()
    if empty.any():  # every layer of the run was left out
        skipped.append(pd.DataFrame({"run_id": runs.loc[empty, "run_id"], "file": "",
                                     "reason": "every layer unchanged by fine-tuning"}))
        runs = runs[~empty].reset_index(drop=True)
        if runs.empty:
            raise NoRuns("every layer of every matched run is unchanged by fine-tuning")
    anova, pairwise = category_tests(runs, layers, metrics)
    excluded_table = pd.concat(excluded, ignore_index=True)
    excluded_table = runs[["run_id", *CELL]].merge(excluded_table, on="run_id", how="right")
    report = Report(
        runs=runs,
        layers=layers,
        categories=attach_anova(category_table(runs, layers, metrics), anova),
        anova=anova,
        pairwise=pairwise,
        trend=level_trend(runs, metrics),
        correlations=accuracy_correlations(runs, metrics),
        accuracy=accuracy_summary(runs),
        headlines=headlines(runs),
        skipped=pd.concat(skipped, ignore_index=True),
        excluded_layers=excluded_table,
        metrics=metrics,
        notes=notes,
        run_dirs={k: v for k, v in collection.run_dirs.items() if k in keep},
        run_files={k: v for k, v in collection.files.items() if k in keep},
    )
    for dims in across or []:
        dims = normalise_dims(dims)
        report.across[",".join(dims)] = across_cells(layers, runs, metrics, dims=dims)
    return report
