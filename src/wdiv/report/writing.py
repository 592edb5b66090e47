"""Report tables and figures -> files: everything is written into a staging folder beside the
output and swapped in at the end (write_atomically), so a failure leaves the previous report as it was.

Figures: per cell, D per layer and D / dM against strength; the ESD overlay from the eigenvalues
`wdiv.analyze --save-esd` saved (esd.npz, esd_base.npz), each checked against the run's record
first: a damaged or missing file drops that figure with a warning naming the file, nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from wdiv.io import atomic_write, write_json, write_text
from wdiv.report import render
from wdiv.report.across import across_markdown
from wdiv.report.cells import BASELINE, cell_slug
from wdiv.report.changes import Changes
from wdiv.report.checks import ESD, ESD_BASE, file_problem
from wdiv.report.tables import Report

log = logging.getLogger(__name__)


def write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda p: table.to_csv(p, index=False))


# ----------------------------------------------------------------------------- figures


def load_esd(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as found:
        return {k: found[k] for k in found.files}


def esd_problem(path: Path, entry: dict | None) -> str | None:
    """Why saved eigenvalues cannot be drawn (checked against the run's record entry), or None."""
    return file_problem(path, entry)


def choose_esd_run(runs: pd.DataFrame) -> str:
    """The strongest weight-decay run (lowest seed) of the first cell if any, else its first non-baseline run."""
    runs = runs[runs["cell"] == runs["cell"].iloc[0]]
    wd = runs[runs["arm"] == "weight_decay"].assign(_lvl=lambda d: pd.to_numeric(d["level"], errors="coerce"))
    if not wd.empty:
        return wd.sort_values(["_lvl", "seed"], ascending=[False, True])["run_id"].iloc[0]
    others = runs[runs["arm"] != BASELINE]
    return (others if not others.empty else runs)["run_id"].iloc[0]


def choose_esd_layer(layers: pd.DataFrame, run_id: str) -> str:
    """The largest kept layer of the run (most eigenvalues: the clearest histogram)."""
    sub = layers[layers["run_id"] == run_id]
    size = sub["M"] * sub.get("rf", 1) if "M" in sub.columns else pd.Series(range(len(sub)), index=sub.index)
    return sub.loc[size.idxmax(), "longname"]


def esd_figure(report: Report, run_id: str | None, longname: str | None):
    """Pretrained vs fine-tuned (vs its baseline) ESD of one layer, from the eigenvalues that
    `wdiv.analyze --save-esd` wrote (esd.npz, esd_base.npz); None with a logged reason otherwise."""
    from wdiv.report import figures  # matplotlib only when figures are asked for

    run_id = run_id or choose_esd_run(report.runs)
    if run_id not in set(report.runs["run_id"]):
        log.warning("ESD overlay skipped: run %s is not among the used runs", run_id)
        return None
    longname = longname or choose_esd_layer(report.layers, run_id)
    base = report.runs.set_index("run_id").at[run_id, "baseline_run_id"]
    run_dir = report.run_dirs[run_id]
    files = report.run_files.get(run_id, {})
    sources = {"pretrained": (run_dir / ESD_BASE, files.get(ESD_BASE)),
               f"fine-tuned ({run_id})": (run_dir / ESD, files.get(ESD))}
    if base != run_id:
        sources[f"baseline ({base})"] = (report.run_dirs[base] / ESD, report.run_files.get(base, {}).get(ESD))
    missing = [str(path) for path, _ in sources.values() if not path.exists()]
    if missing:
        log.warning("ESD overlay skipped: no saved eigenvalues (run `wdiv.analyze RUNS_DIR --base --save-esd`): %s",
                    ", ".join(missing))
        return None
    esds = {}
    for name, (path, entry) in sources.items():
        problem = esd_problem(path, entry)
        if problem is None:
            try:
                found = load_esd(path)
            except Exception as err:  # noqa: BLE001 - a damaged archive member raises zlib/zipfile/ValueError errors
                problem = f"unreadable ({type(err).__name__}: {err})"
        if problem is not None:
            log.warning("ESD overlay skipped: %s: %s", path, problem)
            return None
        layer = longname
        if layer not in found:
            log.warning("ESD overlay skipped: layer %s not in %s", layer, path)
            return None
        esds[name] = found[layer]
    return figures.esd_overlay(esds, title=f"ESD of {longname}")


def cell_figures(report: Report, cell: str, metrics: list[str]) -> dict:
    from wdiv.report import figures

    layers = report.layers[report.layers["cell"] == cell]
    cats = report.categories[report.categories["cell"] == cell]
    runs = report.runs[report.runs["cell"] == cell]
    out = {}
    for m in metrics:
        out[f"per_layer_D_{m}"] = figures.per_layer_d(layers, m)
        out[f"level_D_{m}"] = figures.metric_vs_level(cats, m, "D")
    if "log_norm" in report.metrics:
        out["level_dM_log_norm"] = figures.metric_vs_level(cats, "log_norm", "dM")
    if report.trajectories is not None:
        bands = report.trajectories.bands[report.trajectories.bands["cell"] == cell]
        for m in metrics:
            if (bands["metric"] == m).any():
                out[f"trajectory_D_{m}"] = figures.trajectory_d(bands, m)
    wvs = "diversity_weighted_vs"
    if wvs in runs.columns and runs[wvs].notna().any():
        out["accuracy_vs_weighted_vs"] = figures.accuracy_vs_diversity(runs, wvs)
    else:
        log.info("accuracy-vs-diversity figure skipped for %s: no run measured diversity", cell)
    for fig in out.values():
        if fig._suptitle is not None:
            fig.suptitle(f"{fig._suptitle.get_text()}\n{cell}", fontsize="medium")
    return out


def write_figures(report: Report, fig_dir: Path, formats: list[str], esd_run=None, esd_layer=None,
                  metrics: list[str] | None = None) -> list[Path]:
    """Per-cell figures (one folder per cell when there are several), plus the ESD overlay."""
    metrics = [m for m in report.metrics if metrics is None or m in metrics]
    cells = list(dict.fromkeys(report.runs["cell"]))
    figures_by_dir: dict[Path, dict] = {}
    for cell in cells:
        folder = fig_dir if len(cells) == 1 else fig_dir / cell_slug(cell)
        figures_by_dir[folder] = cell_figures(report, cell, metrics)
    esd = esd_figure(report, esd_run, esd_layer)
    if esd is not None:
        figures_by_dir.setdefault(fig_dir, {})["esd_overlay"] = esd
    written = []
    for folder, figs in figures_by_dir.items():
        folder.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            for fmt in formats:
                path = folder / f"{name}.{fmt}"
                atomic_write(path, lambda p, fig=fig, fmt=fmt: fig.savefig(p, format=fmt, dpi=120))
                written.append(path)
                fig.set_layout_engine("none")  # keep the solved layout: later formats skip re-solving it
    return written


# ----------------------------------------------------------------------------- writing


def long_layers(wide: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, category, metric) with mean_D: the across table in categories.csv's shape."""
    d_cols = [c for c in wide.columns if c.startswith("D_")]
    ids = [c for c in wide.columns if c not in d_cols]
    out = wide.melt(id_vars=ids, value_vars=d_cols, var_name="metric", value_name="mean_D")
    out["metric"] = out["metric"].str.removeprefix("D_")
    return out


def write_report(report: Report, out_dir: Path, runs_dir: Path, formats: list[str] | None, esd_run=None, esd_layer=None,
                 figure_metrics: list[str] | None = None, changes: Changes | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "runs.csv": report.runs, "layers.csv": report.layers, "categories.csv": report.categories,
        "anova.csv": report.anova, "pairwise.csv": report.pairwise, "level_trend.csv": report.trend,
        "correlations.csv": report.correlations, "accuracy.csv": report.accuracy, "headlines.csv": report.headlines,
        "skipped.csv": report.skipped, "excluded_layers.csv": report.excluded_layers,
    }
    if changes is not None:
        tables |= {"changes.csv": changes.table, "missing_baselines.csv": changes.missing}
    if report.trajectories is not None:
        tables |= {"trajectories.csv": report.trajectories.runs, "trajectory_bands.csv": report.trajectories.bands,
                   "trajectory_onsets.csv": report.trajectories.onsets}
    if report.soups is not None:
        tables["soups.csv"] = report.soups
    across_text = {}
    for dims, result in report.across.items():
        tag = dims.replace(",", "_")
        tables[f"across_{tag}_layers.csv"] = long_layers(result.layers)
        tables[f"across_{tag}_tests.csv"] = result.tests
        tables[f"across_{tag}_pairwise.csv"] = result.pairwise
        tables[f"across_{tag}_model.csv"] = result.model_tests
        across_text[dims] = across_markdown(result, [m for m in render.KEY_METRICS if m in report.metrics], render.markdown_table)
    for name, table in tables.items():
        write_csv(out_dir / name, table)
    for name, text in render.latex_tables(report).items():
        write_text(out_dir / name, text)
    if formats:
        write_figures(report, out_dir / "figures", formats, esd_run, esd_layer, figure_metrics)
    write_json(out_dir / "summary.json", render.summary_json(report, runs_dir, changes))
    write_text(out_dir / "summary.md", render.summary_markdown(report, runs_dir, across_text, changes))


def change_figures(changes: Changes, fig_dir: Path, formats: list[str], metrics: list[str] | None = None) -> list[Path]:
    """dM against strength per cell and metric (the figures a study without baselines can have)."""
    from wdiv.report import figures  # matplotlib only when figures are asked for

    metrics = [m for m in changes.metrics if metrics is None or m in metrics]
    cells = list(dict.fromkeys(changes.runs["cell"]))
    written = []
    for cell in cells:
        folder = fig_dir if len(cells) == 1 else fig_dir / cell_slug(cell)
        folder.mkdir(parents=True, exist_ok=True)
        table = changes.table[changes.table["cell"] == cell]
        for m in metrics:
            fig = figures.metric_vs_level(table, m, "dM")
            fig.suptitle(f"{fig._suptitle.get_text()}\n{cell}", fontsize="medium")
            for fmt in formats:
                path = folder / f"level_dM_{m}.{fmt}"
                atomic_write(path, lambda p, fig=fig, fmt=fmt: fig.savefig(p, format=fmt, dpi=120))
                written.append(path)
                fig.set_layout_engine("none")
    return written


def write_changes_report(changes: Changes, skipped: pd.DataFrame, out_dir: Path, runs_dir: Path,
                         formats: list[str] | None, figure_metrics: list[str] | None = None) -> None:
    """The report of a study without a single matched baseline: dM tables, what D would need."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {"runs.csv": changes.runs, "layers.csv": changes.layers, "changes.csv": changes.table,
              "missing_baselines.csv": changes.missing, "skipped.csv": skipped,
              "excluded_layers.csv": changes.excluded_layers}
    for name, table in tables.items():
        write_csv(out_dir / name, table)
    if formats:
        change_figures(changes, out_dir / "figures", formats, figure_metrics)
    write_json(out_dir / "summary.json", render.changes_only_json(changes, runs_dir, skipped))
    write_text(out_dir / "summary.md", render.changes_only_markdown(changes, runs_dir, skipped))


def write_no_report(why: str, out_dir: Path, runs_dir: Path, skipped: pd.DataFrame) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "skipped.csv", skipped)
    write_text(out_dir / "summary.md", render.no_report_markdown(why, runs_dir, skipped))


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """write(folder) into a staging folder beside out_dir, then swap it in for out_dir.

    If write fails, out_dir is untouched and the staging folder removed. The swap is two renames
    (old report aside, new one in) and the old one is deleted after."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    old = None
    try:
        write(staging)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except OSError:
            if old is not None:  # put the previous report back
                os.replace(old, out_dir)
                old = None
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
