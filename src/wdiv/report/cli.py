"""python -m wdiv.report RUNS_DIR [--out DIR]: analysed runs -> tables, statistics, figures.

Writes into RUNS_DIR/report (or --out): runs.csv, layers.csv, categories.csv, anova.csv,
pairwise.csv, level_trend.csv, correlations.csv, accuracy.csv, skipped.csv,
excluded_layers.csv, summary.md, categories.tex, accuracy.tex and figures/*.png|pdf.
Every file is written to a temporary name and moved into place, so an interrupted report never
leaves half a table.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from wdiv.report import stats as compare
from wdiv.report.collect import Collection, collect

log = logging.getLogger(__name__)

KEY_METRICS = ("log_norm", "log_spectral_norm", "alpha", "alpha_weighted", "stable_rank", "entropy")
OUTCOMES = ("test_acc", "test_ece", "ood_acc")


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
    skipped: pd.DataFrame
    excluded_layers: pd.DataFrame
    statement: str
    metrics: list[str]
    notes: list[str]
    run_dirs: dict[str, Path]


class NoRuns(RuntimeError):
    """Nothing usable was found; the message says why."""


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Outcome means over seeds per arm/variant/level with 95 % t CIs (n = 1 gives NaN CI)."""
    rows = []
    frame = runs.assign(_variant=runs["variant"].map(compare.level_label), _level=runs["level"].map(compare.level_label))
    for (arm, variant, _), grp in frame.groupby(["arm", "_variant", "_level"], sort=False):
        row = {"arm": arm, "variant": variant, "level": grp["level"].iloc[0], "level_index": grp["level_index"].iloc[0]}
        for col in (c for c in OUTCOMES if c in runs.columns):
            ci = compare.t_interval(grp[col])
            row |= {col: ci["mean"], f"{col}_ci_low": ci["ci_low"], f"{col}_ci_high": ci["ci_high"]}
        row["n_seeds"] = len(grp)
        rows.append(row)
    order = {a: i for i, a in enumerate([compare.BASELINE, "dropout", "weight_decay", "augment", "synthetic"])}
    out = pd.DataFrame(rows)
    out["_o"] = out["arm"].map(lambda a: order.get(a, len(order)))
    return out.sort_values(["_o", "arm", "variant", "level_index"], kind="stable").drop(columns="_o").reset_index(drop=True)


def _layer_columns(layers: pd.DataFrame, metrics: list[str]) -> list[str]:
    lead = [*compare.RUN_KEYS, "baseline_run_id", "longname", "slice_index", "layer_order"]
    lead += [c for c in compare.SHAPE_COLUMNS if c in layers.columns]
    per_metric = [c for m in metrics for c in (f"{m}_pre", f"{m}_ft", f"dM_{m}", f"D_{m}")]
    return [c for c in lead + per_metric if c in layers.columns]


def build(collection: Collection) -> Report:
    """Match baselines, compute D and every statistic; runs without a baseline move to skipped."""
    runs = collection.runs.copy()
    if runs.empty:
        raise NoRuns("no complete analysed run found")
    metrics = collection.metrics
    runs["baseline_run_id"] = compare.match_baselines(runs)
    notes = compare.baseline_conflicts(runs)
    orphans = runs["baseline_run_id"].isna()
    skipped = collection.skipped
    if orphans.any():
        keys = [k for k in compare.BASELINE_KEYS if k in runs.columns]
        reasons = runs[orphans].apply(
            lambda r: "no matching baseline (" + ", ".join(f"{k}={r[k]}" for k in keys) + ")", axis=1
        )
        skipped = pd.concat([skipped, pd.DataFrame({"run_id": runs.loc[orphans, "run_id"], "reason": reasons})])
        runs = runs[~orphans].reset_index(drop=True)
    if runs.empty:
        raise NoRuns("no complete analysed run has a matching baseline")
    keep = set(runs["run_id"])
    layers = collection.layers[collection.layers["run_id"].isin(keep)]
    config = runs[[c for c in compare.RUN_KEYS if c in runs.columns]]
    layers = config.merge(layers, on="run_id", how="right")
    layers = compare.double_differences(layers, runs, metrics)
    layers = layers[_layer_columns(layers, metrics)]
    runs = runs.merge(compare.run_means(layers, metrics), on="run_id", how="left")
    anova, pairwise = compare.category_tests(runs, layers, metrics)
    excluded = collection.excluded_layers
    excluded = excluded[excluded["run_id"].isin(keep)] if not excluded.empty else excluded
    return Report(
        runs=runs,
        layers=layers,
        categories=compare.level_summary(runs, metrics, layers, anova),
        anova=anova,
        pairwise=pairwise,
        trend=compare.level_trend(runs, metrics),
        correlations=compare.accuracy_correlations(runs, metrics),
        accuracy=accuracy_summary(runs),
        skipped=skipped.reset_index(drop=True),
        excluded_layers=excluded.reset_index(drop=True),
        statement=compare.monotonic_statement(runs),
        metrics=metrics,
        notes=notes,
        run_dirs={k: v for k, v in collection.run_dirs.items() if k in keep},
    )


# ----------------------------------------------------------------------------- writing


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda p: p.write_text(text))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    _atomic(path, lambda p: table.to_csv(p, index=False))


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.{digits}g}"


def _with_ci(mean, low, high, n) -> str:
    if n == 1:
        return f"{_num(mean)} (n=1, no CI)"
    return f"{_num(mean)} [{_num(low)}, {_num(high)}]"


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    if table.empty:
        return "_(none)_\n"
    cells = table.astype(object).map(lambda v: _num(v) if isinstance(v, (float, np.floating)) else str(v))
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(s.replace("|", "\\|") for s in row) + " |" for row in cells.to_numpy().tolist()]
    return "\n".join([head, rule, *body]) + "\n"


def category_display(categories: pd.DataFrame, metrics: list[str], statistic: str = "D") -> pd.DataFrame:
    """category/level rows x metric columns, cells 'mean [95 % CI]'."""
    keep = categories[categories["metric"].isin(metrics)]
    rows = []
    for (cat, variant, level), grp in keep.groupby(
        ["category", "variant", keep["level"].map(compare.level_label)], sort=False
    ):
        row = {"category": cat, "variant": variant, "level": level or "-", "n seeds": int(grp["n_seeds"].max())}
        for _, r in grp.iterrows():
            row[r["metric"]] = _with_ci(r[f"mean_{statistic}"], r[f"ci_low_{statistic}"], r[f"ci_high_{statistic}"], r["n_seeds"])
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty and (out["variant"] == "").all():
        out = out.drop(columns="variant")
    return out


def accuracy_display(accuracy: pd.DataFrame) -> pd.DataFrame:
    out = accuracy[["arm", "variant", "level", "n_seeds"]].copy()
    out["level"] = out["level"].map(lambda v: compare.level_label(v) or "-")
    for col in (c for c in OUTCOMES if c in accuracy.columns):
        out[col] = [
            _with_ci(r[col], r[f"{col}_ci_low"], r[f"{col}_ci_high"], r["n_seeds"]) for _, r in accuracy.iterrows()
        ]
    if (out["variant"] == "").all():
        out = out.drop(columns="variant")
    return out


def _tests_display(anova: pd.DataFrame) -> pd.DataFrame:
    wide = []
    for metric, grp in anova.groupby("metric", sort=False):
        row = {"metric": metric}
        for _, r in grp.iterrows():
            tag = "seeds" if r["samples"] == compare.SEED_SAMPLES else "layers (published)"
            row[f"F, {tag}"] = _num(r["F"])
            row[f"p, {tag}"] = _num(r["p"])
            row[f"n, {tag}"] = r["n"]
        wide.append(row)
    return pd.DataFrame(wide)


def summary_markdown(report: Report, runs_dir: Path) -> str:
    runs = report.runs
    key = [m for m in KEY_METRICS if m in report.metrics]
    counts = runs.groupby("arm").agg(runs=("run_id", "count"), seeds=("seed", "nunique")).reset_index()
    lines = [
        "# wdiv report",
        "",
        f"Runs directory: `{runs_dir}`. Used {len(runs)} complete analysed runs; skipped {len(report.skipped)}.",
        "D = dM - dM(baseline with the same seed, data, model and checkpoint), dM = fine-tuned minus pretrained, "
        "per layer; statistics take seeds as samples (95 % Student-t CI; n = 1 has no CI and says so).",
        "",
        "## Headline",
        "",
        report.statement,
        "",
        "## Runs used",
        "",
        markdown_table(counts),
        *[f"- Note: {note}" for note in report.notes],
        *([""] if report.notes else []),
        "## Mean D per category and level (layer mean per seed, then mean over seeds)",
        "",
        markdown_table(category_display(report.categories, key, "D")),
        "## Mean dM per category and level (fine-tuned minus pretrained; the published per-level quantity)",
        "",
        markdown_table(category_display(report.categories, [m for m in ("log_norm", "log_spectral_norm", "alpha") if m in key], "dM")),
        "## Category comparison: one-way ANOVA of D across categories",
        "",
        "`seeds`: one sample per seed (category mean over levels and layers) - the test wdiv trusts. "
        "`layers (published)`: one sample per (configuration, layer) as in the published study; layers of one "
        "network are not independent, so its p-values are optimistic. Pairwise Welch t-tests: pairwise.csv.",
        "",
        markdown_table(_tests_display(report.anova[report.anova["metric"].isin(key)])),
        "## Strength trend: Spearman of level with layer-mean D, within each arm",
        "",
        markdown_table(
            report.trend[report.trend["metric"].isin(key)][["arm", "variant", "metric", "x", "n_runs", "spearman_rho", "p", "note"]]
        ),
        "## Accuracy, calibration and OOD accuracy",
        "",
        markdown_table(accuracy_display(report.accuracy)),
    ]
    wanted = {f"mean_{m}_ft" for m in key} | {f"mean_D_{m}" for m in ("log_norm", "alpha") if m in key}
    corr = report.correlations
    corr = corr[corr["x"].str.startswith("diversity_") | corr["x"].isin(wanted)]
    if not corr.empty:
        lines += [
            "## Spectral metrics and diversity vs test / OOD accuracy (one sample per run; all of correlations.csv)",
            "",
            "Runs pool arms, levels and seeds: a seed-to-seed difference shared by every arm (e.g. a diversity "
            "measured on a seed-dependent subsample) can drive these correlations on its own.",
            "",
            markdown_table(corr),
        ]
    lines += ["## Skipped runs (not in any table or average)", "", markdown_table(report.skipped)]
    if not report.excluded_layers.empty:
        ex = report.excluded_layers.groupby(["longname", "reason"]).size().reset_index(name="runs")
        lines += ["## Layers excluded from dM (no same-shape layer in the reference)", "", markdown_table(ex)]
    lines += [
        "## Files",
        "",
        "runs.csv, layers.csv, categories.csv (category x level x metric), anova.csv and pairwise.csv (both "
        "sample schemes, column `samples`), level_trend.csv, correlations.csv, accuracy.csv, skipped.csv, "
        "excluded_layers.csv, categories.tex, accuracy.tex, figures/.",
        "",
    ]
    return "\n".join(lines)


def _latex(table: pd.DataFrame, caption: str, label: str) -> str:
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, caption=caption, label=label, position="ht")


def latex_tables(report: Report) -> dict[str, str]:
    key = [m for m in KEY_METRICS if m in report.metrics]
    cats = category_display(report.categories, key, "D")
    acc = accuracy_display(report.accuracy)
    return {
        "categories.tex": _latex(
            cats, "Mean double difference D per category and level (seeds as samples, 95\\% CI).", "tab:wdiv-categories"
        ),
        "accuracy.tex": _latex(acc, "Test accuracy, ECE and OOD accuracy (mean over seeds, 95\\% CI).", "tab:wdiv-accuracy"),
    }


# ----------------------------------------------------------------------------- figures


def layer_eigenvalues(weights_path: Path, longname: str) -> np.ndarray:
    """Eigenvalues of one layer as the spectral engine computes them (pooled conv slices, scaled)."""
    from wdiv.spectral.api import conv2d_scale  # lazy: heavy, and optional for the tables
    from wdiv.spectral.esd import gram_eigenvalues, pooled
    from wdiv.spectral.weights import iter_matrices, open_weights, select_layers

    with open_weights(weights_path) as source:
        specs = [s for s in select_layers(source, min_evals=1, max_evals=10**12, max_N=10**12) if s.longname == longname]
        if not specs:
            raise KeyError(f"{longname} not in {weights_path}")
        for spec, mats in iter_matrices(source, specs[:1]):
            return pooled(gram_eigenvalues(mats)) * conv2d_scale(spec, True)
    raise KeyError(longname)


def choose_esd_run(runs: pd.DataFrame) -> str:
    """The strongest weight-decay run (lowest seed) if any, else the first non-baseline run."""
    wd = runs[runs["arm"] == "weight_decay"]
    if not wd.empty:
        return wd.sort_values(["level_index", "seed"], ascending=[False, True])["run_id"].iloc[0]
    others = runs[runs["arm"] != compare.BASELINE]
    return (others if not others.empty else runs)["run_id"].iloc[0]


def choose_esd_layer(layers: pd.DataFrame, run_id: str) -> str:
    """The largest matched layer of the run (most eigenvalues: the clearest histogram)."""
    sub = layers[layers["run_id"] == run_id]
    size = sub["M"] * sub.get("rf", 1) if "M" in sub.columns else pd.Series(range(len(sub)), index=sub.index)
    return sub.loc[size.idxmax(), "longname"]


def esd_figure(report: Report, run_id: str | None, longname: str | None):
    """Pretrained vs fine-tuned (vs its baseline) ESD of one layer, or None with a logged reason."""
    run_id = run_id or choose_esd_run(report.runs)
    if run_id not in set(report.runs["run_id"]):
        log.warning("ESD overlay skipped: run %s is not among the used runs", run_id)
        return None
    longname = longname or choose_esd_layer(report.layers, run_id)
    row = report.runs.set_index("run_id").loc[run_id]
    sources = {"pretrained": Path(str(row["pretrained_path"])), f"fine-tuned ({run_id})": report.run_dirs[run_id] / "model.safetensors"}
    base = row["baseline_run_id"]
    if base != run_id:
        sources[f"baseline ({base})"] = report.run_dirs[base] / "model.safetensors"
    missing = [str(path) for path in sources.values() if not path.exists()]
    if missing:
        log.warning("ESD overlay skipped: weights not found: %s", ", ".join(missing))
        return None
    try:
        esds = {label: layer_eigenvalues(path, longname) for label, path in sources.items()}
    except Exception as err:  # noqa: BLE001 - the overlay is optional; say why and move on
        log.warning("ESD overlay skipped: %s", err)
        return None
    from wdiv.report import figures as plots

    return plots.esd_overlay(esds, title=f"ESD of {longname}")


def write_figures(
    report: Report, fig_dir: Path, formats: list[str], esd_run=None, esd_layer=None, metrics: list[str] | None = None
) -> list[Path]:
    """Per-metric figures for `metrics` (default: every metric), plus accuracy-vs-diversity and ESD."""
    from wdiv.report import figures as plots

    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for m in [m for m in report.metrics if metrics is None or m in metrics]:
        figures[f"per_layer_D_{m}"] = plots.per_layer_d(report.layers, m)
        figures[f"level_D_{m}"] = plots.metric_vs_level(report.categories, m, "D")
    figures["level_dM_log_norm"] = plots.metric_vs_level(report.categories, "log_norm", "dM")
    wvs = "diversity_weighted_vs"
    if wvs in report.runs.columns and report.runs[wvs].notna().any():
        figures["accuracy_vs_weighted_vs"] = plots.accuracy_vs_diversity(report.runs, wvs)
    else:
        log.info("accuracy-vs-diversity figure skipped: no run measured diversity")
    esd = esd_figure(report, esd_run, esd_layer)
    if esd is not None:
        figures["esd_overlay"] = esd
    written = []
    for name, fig in figures.items():
        for fmt in formats:
            path = fig_dir / f"{name}.{fmt}"
            _atomic(path, lambda p, fig=fig, fmt=fmt: fig.savefig(p, format=fmt, dpi=120))
            written.append(path)
            fig.set_layout_engine("none")  # keep the solved layout: later formats skip re-solving it
    return written


def write_report(
    report: Report, out_dir: Path, runs_dir: Path, formats: list[str] | None, esd_run=None, esd_layer=None,
    figure_metrics: list[str] | None = None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "runs.csv": report.runs,
        "layers.csv": report.layers,
        "categories.csv": report.categories,
        "anova.csv": report.anova,
        "pairwise.csv": report.pairwise,
        "level_trend.csv": report.trend,
        "correlations.csv": report.correlations,
        "accuracy.csv": report.accuracy,
        "skipped.csv": report.skipped,
        "excluded_layers.csv": report.excluded_layers,
    }
    for name, table in tables.items():
        write_csv(out_dir / name, table)
    for name, text in latex_tables(report).items():
        write_text(out_dir / name, text)
    if formats:
        write_figures(report, out_dir / "figures", formats, esd_run, esd_layer, figure_metrics)
    write_text(out_dir / "summary.md", summary_markdown(report, runs_dir))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wdiv.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="directory holding analysed run directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/report)")
    parser.add_argument("--formats", default="png,pdf", help="figure formats, comma-separated; '' for no figures")
    parser.add_argument("--no-figures", action="store_true", help="tables and summary only")
    parser.add_argument("--figure-metrics", help="comma-separated metrics to draw per-metric figures for (default: all)")
    parser.add_argument("--esd-run", help="run_id (path under RUNS_DIR) for the ESD overlay; default: strongest weight decay")
    parser.add_argument("--esd-layer", help="layer longname for the ESD overlay; default: the largest layer")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runs_dir = args.runs_dir
    if not runs_dir.is_dir():
        print(f"wdiv.report: error: RUNS_DIR {runs_dir} is not a directory", file=sys.stderr)
        return 2
    out_dir = args.out or runs_dir / "report"
    formats = [] if args.no_figures else [f.strip() for f in args.formats.split(",") if f.strip()]
    collection = collect(runs_dir, exclude=out_dir.resolve() if out_dir.resolve().is_relative_to(runs_dir.resolve()) else None)
    try:
        report = build(collection)
    except NoRuns as why:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(out_dir / "skipped.csv", collection.skipped)
        skipped = markdown_table(collection.skipped)
        write_text(out_dir / "summary.md", f"# wdiv report\n\nNo report: {why} under `{runs_dir}`.\n\n## Skipped runs\n\n{skipped}")
        print(f"wdiv.report: error: {why} under {runs_dir} (reasons in {out_dir / 'summary.md'})", file=sys.stderr)
        return 1
    figure_metrics = [m.strip() for m in args.figure_metrics.split(",")] if args.figure_metrics else None
    unknown = sorted(set(figure_metrics or []) - set(report.metrics))
    if unknown:
        print(f"wdiv.report: error: --figure-metrics {','.join(unknown)} not among {','.join(report.metrics)}", file=sys.stderr)
        return 2
    write_report(report, out_dir, runs_dir, formats, args.esd_run, args.esd_layer, figure_metrics)
    print(f"wdiv.report: {len(report.runs)} runs, {len(report.skipped)} skipped -> {out_dir}")
    print(report.statement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
