"""Report tables -> text: summary.md (for people), summary.json (for notebooks), LaTeX tables.

Significance in summary.md is read from Holm-adjusted p-values only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from wdiv.report.cells import label
from wdiv.report.changes import Changes, missing_lines
from wdiv.report.tables import CELL, OUTCOMES, Report
from wdiv.report.trajectories import onset_lines as trajectory_onset_lines

KEY_METRICS = ("log_norm", "log_spectral_norm", "alpha", "alpha_weighted", "stable_rank", "entropy")
ALPHA = 0.05


def num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.{digits}g}"


def with_ci(mean, low, high, n) -> str:
    if n == 1:
        return f"{num(mean)} (n=1, no CI)"
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    if table.empty:
        return "_(none)_\n"
    cells = table.astype(object).map(lambda v: num(v) if isinstance(v, (float, np.floating)) else str(v))
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(s.replace("|", "\\|") for s in row) + " |" for row in cells.to_numpy().tolist()]
    return "\n".join([head, rule, *body]) + "\n"


def _star(p_holm) -> str:
    return " *" if isinstance(p_holm, float) and p_holm < ALPHA else ""


def category_display(categories: pd.DataFrame, metrics: list[str], statistic: str = "D") -> pd.DataFrame:
    """cell/category/level rows x metric columns, cells 'mean [95 % CI]' (* = Holm-adjusted p < 0.05)."""
    keep = categories[categories["metric"].isin(metrics)]
    rows = []
    for (cell, cat, level), grp in keep.groupby(["cell", "category", keep["level"].map(label)], sort=False):
        row = {"cell": cell, "category": cat, "level": level or "-", "n seeds": int(grp["n_seeds"].max())}
        for r in grp.itertuples(index=False):
            r = r._asdict()
            text = with_ci(r[f"mean_{statistic}"], r[f"ci_low_{statistic}"], r[f"ci_high_{statistic}"], r["n_seeds"])
            row[r["metric"]] = text + (_star(r["p_holm"]) if statistic == "D" else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty and out["cell"].nunique() == 1:
        out = out.drop(columns="cell")
    return out


def accuracy_display(accuracy: pd.DataFrame) -> pd.DataFrame:
    out = accuracy[["cell", "category", "level", "n_seeds"]].copy()
    out["level"] = out["level"].map(lambda v: label(v) or "-")
    for col in (c for c in OUTCOMES if c in accuracy.columns):
        out[col] = [with_ci(r[col], r[f"{col}_ci_low"], r[f"{col}_ci_high"], r["n_seeds"]) for _, r in accuracy.iterrows()]
    if out["cell"].nunique() == 1:
        out = out.drop(columns="cell")
    return out


def tests_display(anova: pd.DataFrame) -> pd.DataFrame:
    cols = ["cell", "metric", "samples", "test", "F", "df_num", "df_den", "p", "n", "note"]
    out = anova[cols].copy()
    if out["cell"].nunique() == 1:
        out = out.drop(columns="cell")
    return out


def significant_pairs(pairwise: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Pairs whose Holm-adjusted p is below 0.05, one line each (seeds scheme first)."""
    if pairwise.empty:
        return []
    hits = pairwise[pairwise["metric"].isin(metrics) & (pairwise["p_holm"] < ALPHA)]
    return [f"{r.cell}, {r.metric}, {r.samples}: {r.category_a} vs {r.category_b} "
            f"({num(r.mean_a)} vs {num(r.mean_b)}; {r.test}, p={num(r.p)}, Holm p={num(r.p_holm)}, BH q={num(r.q_bh)})"
            for r in hits.itertuples(index=False)]


D_NEEDS_BASELINES = ("D (dM minus the dM of the baseline of the same cell and seed) needs baseline runs: a run with "
                     "arm=baseline of the same model, data, recipe and seed, fine-tuned from the same checkpoint.")


def changes_lines(changes: Changes, with_d: bool) -> list[str]:
    """summary.md's dM section (every run, with or without a baseline) and the missing baselines."""
    key = [m for m in KEY_METRICS if m in changes.metrics]
    lines = [
        "## Change against the pretrained reference, every run (dM per category and level; changes.csv)",
        "",
        "dM = fine-tuned minus pretrained per layer, layer mean per run, then mean over seeds (95 % Student-t CI). "
        "Needs no baseline run" + (", so runs without one are in it too (n_with_baseline in changes.csv)." if with_d
                                   else "."),
        "",
        markdown_table(category_display(changes.table, key, "dM")),
    ]
    missing = missing_lines(changes.missing)
    if missing:
        lines += ["## Missing baselines", "", D_NEEDS_BASELINES + " These are missing (missing_baselines.csv):", ""]
        lines += [f"- {m}" for m in missing] + [""]
    return lines


def changes_only_markdown(changes: Changes, runs_dir: Path, skipped: pd.DataFrame) -> str:
    """summary.md of a study whose runs have no matching baseline: dM tables only, and what D needs."""
    runs = changes.runs
    counts = runs.groupby(["cell", "category"], sort=False).agg(runs=("run_id", "count"), seeds=("seed", "nunique")).reset_index()
    lines = [
        "# wdiv report",
        "",
        f"Runs directory: `{runs_dir}`. {len(runs)} complete analysed runs in {runs['cell'].nunique()} cell(s); "
        f"skipped {len(skipped)} (runs without a baseline among them: they are in the dM tables, not in any D).",
        "",
        "## No D tables: no run has a matching baseline",
        "",
        D_NEEDS_BASELINES + " Without one only dM is reported below (no D, no category tests, no headline).",
        "",
        "## Runs used for dM",
        "",
        markdown_table(counts),
    ]
    lines += [f"- Note: {note}" for note in changes.notes] + ([""] if changes.notes else [])
    lines += changes_lines(changes, with_d=False)
    lines += ["## Skipped runs (not in any D table)", "", markdown_table(skipped)]
    if not changes.excluded_layers.empty:
        ex = changes.excluded_layers.groupby(["cell", "longname", "reason"], sort=False).size().reset_index(name="runs")
        lines += ["## Layers left out of every mean", "", markdown_table(ex)]
    lines += ["## Files", "", "runs.csv, layers.csv (no D columns), changes.csv, missing_baselines.csv, skipped.csv, "
              "excluded_layers.csv, summary.json, figures/ (dM against strength).", ""]
    return "\n".join(lines)


def changes_only_json(changes: Changes, runs_dir: Path, skipped: pd.DataFrame) -> dict:
    return {
        "runs_dir": str(runs_dir), "n_runs": int(len(changes.runs)), "n_skipped": int(len(skipped)), "d_tables": False,
        "n_cells": int(changes.runs["cell"].nunique()), "metrics": changes.metrics, "cells": [],
        "headline": "No D: " + D_NEEDS_BASELINES,
        "missing_baselines": [{k: _jsonable(v) for k, v in r.items()} for r in changes.missing.to_dict("records")],
        "notes": changes.notes,
    }


def summary_markdown(report: Report, runs_dir: Path, across_text: dict[str, str] | None = None,
                     changes: Changes | None = None) -> str:
    runs = report.runs
    key = [m for m in KEY_METRICS if m in report.metrics]
    counts = runs.groupby(["cell", "category"], sort=False).agg(runs=("run_id", "count"), seeds=("seed", "nunique")).reset_index()
    n_cells = runs["cell"].nunique()
    lines = [
        "# wdiv report",
        "",
        f"Runs directory: `{runs_dir}`. Used {len(runs)} complete analysed runs in {n_cells} cell(s); skipped {len(report.skipped)}.",
        "",
        "A cell is (model, data, recipe); every table and test below stays inside one cell (recipe = hash of the "
        "training config without the arm's knob, seed and execution keys). A category is (arm, variant). "
        "dM = fine-tuned minus pretrained per layer; D = dM minus the dM of the baseline of the same cell and seed. "
        "Layers unchanged by fine-tuning in every run of a cell are left out (excluded_layers.csv). Statistics take "
        "seeds as samples (95 % Student-t CI; n = 1 has no CI and says so); * marks Holm-adjusted p < 0.05 "
        "(one-sample t-test of D against 0, family = the cell's levels of one metric).",
        "",
        "## Headline",
        "",
    ]
    for h in report.headlines.itertuples(index=False):
        lines.append(f"- {h.cell}: {h.statement}" if n_cells > 1 else h.statement)
    lines += ["", "## Runs used", "", markdown_table(counts)]
    lines += [f"- Note: {note}" for note in report.notes] + ([""] if report.notes else [])
    lines += [
        "## Mean D per category and level (layer mean per seed, then mean over seeds)",
        "",
        markdown_table(category_display(report.categories, key, "D")),
        "## Mean dM per category and level (fine-tuned minus pretrained; the published per-level quantity)",
        "",
        markdown_table(category_display(report.categories, [m for m in ("log_norm", "log_spectral_norm", "alpha") if m in key], "dM")),
        "## Category comparison within each cell",
        "",
        "Which test is which: `seeds` = one sample per seed (the category's layer-mean D, its levels pooled per seed): "
        "the tests wdiv trusts, one-way and Welch ANOVA, pairwise Welch t-tests. `layers (published)` = the published "
        "statistic exactly: per layer, D averaged over seeds and then over the category's configurations, one sample "
        "per layer, one-way ANOVA (scipy f_oneway) and Student t-tests; layers of one network are not independent, so "
        "its p-values are optimistic. Pairwise tests carry Holm p and BH q within (cell, metric, scheme) in pairwise.csv.",
        "",
        markdown_table(tests_display(report.anova[report.anova["metric"].isin(key)])),
    ]
    pairs = significant_pairs(report.pairwise, key)
    lines += ["Pairs significant after Holm correction (p_holm < 0.05):", ""]
    lines += [f"- {p}" for p in pairs] if pairs else ["- none"]
    lines += [""]
    for dims, text in (across_text or {}).items():
        lines += [text, ""]
    if changes is not None:
        lines += changes_lines(changes, with_d=True)
    if report.trajectories is not None:
        from_runs = report.trajectories.runs
        lines += [
            "## Spectral trajectories over training (trajectories.csv, trajectory_bands.csv, figures/trajectory_D_*)",
            "",
            f"{from_runs['run_id'].nunique()} runs kept snapshots (epochs {', '.join(str(e) for e in sorted(from_runs['epoch'].unique()))}; "
            "0 = the starting checkpoint). D at an epoch = dM at that epoch minus the baseline's dM at the same epoch, "
            "over the layers of the final tables; the first epoch at which the seeds' 95 % interval excludes 0:",
            "",
            *trajectory_onset_lines(report.trajectories, key),
            "",
        ]
    if report.soups is not None:
        lines += [*soup_lines(report.soups, [m for m in ("log_norm", "alpha") if m in key]), ""]
    trend = report.trend[report.trend["metric"].isin(key)]
    lines += [
        "## Strength trend: Spearman of strength with layer-mean D, within each cell and category",
        "",
        "Numeric levels trend on their value; named levels (augmentation policies) on the run's measured diversity "
        "(`x` says which), never on their position in the grid.",
        "",
        markdown_table(trend.drop(columns=[c for c in ("model", "data", "recipe") if c in trend])),
        "## Accuracy, calibration and OOD accuracy",
        "",
        markdown_table(accuracy_display(report.accuracy)),
    ]
    wanted = {f"mean_{m}_ft" for m in key} | {f"mean_D_{m}" for m in ("log_norm", "alpha") if m in key}
    corr = report.correlations
    corr = corr[corr["x"].str.startswith("diversity_") | corr["x"].isin(wanted)]
    if not corr.empty:
        lines += [
            "## Spectral metrics and diversity vs test / OOD accuracy (one sample per run, per cell; all of correlations.csv)",
            "",
            "Runs pool arms, levels and seeds: a seed-to-seed difference shared by every arm can drive these "
            "correlations on its own.",
            "",
            markdown_table(corr.drop(columns=["model", "data", "recipe"])),
        ]
    lines += ["## Skipped runs (not in any D table or average; a run without a baseline is in changes.csv)", "",
              markdown_table(report.skipped)]
    if not report.excluded_layers.empty:
        ex = report.excluded_layers.groupby(["cell", "longname", "reason"], sort=False).size().reset_index(name="runs")
        lines += ["## Layers left out of every mean and test", "", markdown_table(ex)]
    lines += [
        "## Files",
        "",
        "runs.csv, layers.csv, categories.csv (cell x category x level x metric), anova.csv and pairwise.csv (both "
        "sample schemes, column `samples`), level_trend.csv, correlations.csv, accuracy.csv, skipped.csv, "
        "excluded_layers.csv, summary.json, categories.tex, accuracy.tex, figures/"
        + (", changes.csv, missing_baselines.csv" if changes is not None else "")
        + (", across_*.csv" if across_text else "")
        + (", trajectories.csv, trajectory_bands.csv, trajectory_onsets.csv" if report.trajectories is not None else "")
        + (", soups.csv" if report.soups is not None else "") + ".",
        "",
    ]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def summary_json(report: Report, runs_dir: Path, changes: Changes | None = None) -> dict:
    """The headline facts, machine-readable (the notebook reads this, never summary.md)."""
    cells = []
    cats = report.categories
    for h in report.headlines.to_dict("records"):
        pooled = cats[(cats["cell"] == h["cell"]) & (cats["level"].astype(str) == "all")]
        means = {}
        for r in pooled.to_dict("records"):
            means.setdefault(r["category"], {})[r["metric"]] = {
                k: _jsonable(r.get(k)) for k in ("mean_D", "ci_low_D", "ci_high_D", "n_seeds", "p_holm", "published_mean_D")}
        anova = report.anova[report.anova["cell"] == h["cell"]]
        cells.append({
            **{k: h[k] for k in CELL}, "n_runs": int(h["n_runs"]), "n_seeds": int(h["n_seeds"]),
            "headline": h["statement"], "weight_decay_monotonic": h["monotonic"],
            "weight_decay_dlog_norm": {f"{lvl:g}": _jsonable(v) for lvl, v in zip(json.loads(h["levels"]), json.loads(h["means"]))},
            "category_mean_D": means,
            "anova": [{k: _jsonable(v) for k, v in r.items() if k in ("metric", "samples", "test", "F", "p")}
                      for r in anova.to_dict("records")],
        })
    return {
        "runs_dir": str(runs_dir), "n_runs": int(len(report.runs)), "n_skipped": int(len(report.skipped)),
        "n_cells": len(cells), "metrics": report.metrics, "cells": cells,
        "headline": cells[0]["headline"] if len(cells) == 1 else [f"{c['cell']}: {c['headline']}" for c in cells],
        "n_excluded_layer_rows": int(len(report.excluded_layers)), "notes": report.notes,
        "across": sorted(report.across), "d_tables": True,
        "trajectory_onsets": [] if report.trajectories is None else
        [{k: _jsonable(v) for k, v in r.items()} for r in report.trajectories.onsets.to_dict("records")],
        "soups": [] if report.soups is None else [{k: _jsonable(v) for k, v in r.items()} for r in report.soups.to_dict("records")],
        "missing_baselines": [] if changes is None else
        [{k: _jsonable(v) for k, v in r.items()} for r in changes.missing.to_dict("records")],
    }


def _latex(table: pd.DataFrame, caption: str, label_: str) -> str:
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, caption=caption, label=label_, position="ht")


def latex_tables(report: Report) -> dict[str, str]:
    key = [m for m in KEY_METRICS if m in report.metrics]
    cats = category_display(report.categories, key, "D")
    acc = accuracy_display(report.accuracy)
    return {
        "categories.tex": _latex(cats, "Mean double difference D per category and level (seeds as samples, 95\\% CI; "
                                       "* Holm-adjusted p < 0.05).", "tab:wdiv-categories"),
        "accuracy.tex": _latex(acc, "Test accuracy, ECE and OOD accuracy (mean over seeds, 95\\% CI).", "tab:wdiv-accuracy"),
    }


def no_report_markdown(why: str, runs_dir: Path, skipped: pd.DataFrame) -> str:
    """summary.md when no run could be used at all: why, and every skipped run with its file and reason."""
    return f"# wdiv report\n\nNo report: {why} under `{runs_dir}`.\n\n## Skipped runs\n\n{markdown_table(skipped)}"


def soup_lines(table: pd.DataFrame, metrics: list[str]) -> list[str]:
    """summary.md's soup section (report.soups): soup vs best and mean member (all columns in soups.csv)."""
    shown = pd.DataFrame({
        "cell": table["cell"], "soup": "soup:" + table["kind"].astype(str) + " " + table["group"].astype(str),
        "members": table["n_members"].astype(str) + "/" + table["n_pool"].astype(str),
        "val acc soup / best": [f"{num(a)} / {num(b)}" for a, b in zip(table["soup_val_acc"], table["best_member_val_acc"])],
    })
    for col, name in (("test_acc", "test acc"), ("test_ece", "ECE"), ("ood_acc", "OOD acc")):
        shown[f"{name} soup / best / mean"] = [f"{num(a)} / {num(b)} / {num(c)}" for a, b, c in
                                               zip(table[f"soup_{col}"], table[f"best_member_{col}"], table[f"mean_member_{col}"])]
    for m in metrics:
        shown[f"D({m}) soup / mean member"] = [f"{num(a)} / {num(b)}" for a, b in
                                               zip(table[f"soup_D_{m}"], table[f"mean_member_D_{m}"])]
    if table["cell"].nunique() == 1:
        shown = shown.drop(columns=["cell"])
    return [
        "## Model soups against their members (soups.csv)",
        "",
        "Each soup averages the final weights of its pool (runs sharing start, recipe, model, data and the soup's group): "
        "`uniform` all of them, `greedy` those that did not lower validation accuracy, best first. Best member = the pool's "
        "highest validation accuracy; mean member = the pool's mean. D of a soup is against the baseline of its seed "
        "(its members' shared seed, else their lowest); the members' D each against their own seed's baseline.",
        "",
        markdown_table(shown),
    ]
