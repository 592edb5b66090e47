"""python -m wdiv.report RUNS_DIR [--out DIR]: analysed runs -> tables, statistics, figures.

Writes into RUNS_DIR/report (or --out): runs.csv, layers.csv, categories.csv, anova.csv,
pairwise.csv, level_trend.csv, correlations.csv, accuracy.csv, headlines.csv, skipped.csv,
excluded_layers.csv, summary.md, summary.json, categories.tex, accuracy.tex, figures/ and, with
--across, across_<dims>_*.csv. Every file is written to a temporary name and moved into place, so
an interrupted report never leaves half a table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from wdiv.io import atomic_write, write_json, write_text
from wdiv.report import render
from wdiv.report.across import across_markdown
from wdiv.report.cells import BASELINE, cell_slug
from wdiv.report.collect import collect
from wdiv.report.tables import NoRuns, Report, build

log = logging.getLogger(__name__)

ACROSS_DIMS = ("data", "model")
FIGURE_FORMATS = ("png", "pdf", "svg")


def write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda p: table.to_csv(p, index=False))


# ----------------------------------------------------------------------------- figures


def load_esd(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as found:
        return {k: found[k] for k in found.files}


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
    sources = {"pretrained": (run_dir / "esd_base.npz", longname), f"fine-tuned ({run_id})": (run_dir / "esd.npz", longname)}
    if base != run_id:
        sources[f"baseline ({base})"] = (report.run_dirs[base] / "esd.npz", longname)
    missing = [str(path) for path, _ in sources.values() if not path.is_file()]
    if missing:
        log.warning("ESD overlay skipped: no saved eigenvalues (run `wdiv.analyze RUNS_DIR --base --save-esd`): %s",
                    ", ".join(missing))
        return None
    esds = {}
    for name, (path, layer) in sources.items():
        found = load_esd(path)
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
                 figure_metrics: list[str] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "runs.csv": report.runs, "layers.csv": report.layers, "categories.csv": report.categories,
        "anova.csv": report.anova, "pairwise.csv": report.pairwise, "level_trend.csv": report.trend,
        "correlations.csv": report.correlations, "accuracy.csv": report.accuracy, "headlines.csv": report.headlines,
        "skipped.csv": report.skipped, "excluded_layers.csv": report.excluded_layers,
    }
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
    write_json(out_dir / "summary.json", render.summary_json(report, runs_dir))
    write_text(out_dir / "summary.md", render.summary_markdown(report, runs_dir, across_text))


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wdiv.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="directory holding analysed run directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/report)")
    parser.add_argument("--formats", default="png,pdf", help=f"figure formats ({','.join(FIGURE_FORMATS)}), comma-separated; '' for none")
    parser.add_argument("--no-figures", action="store_true", help="tables and summary only")
    parser.add_argument("--figure-metrics", help="comma-separated metrics to draw per-metric figures for (default: all)")
    parser.add_argument("--esd-run", help="run_id (path under RUNS_DIR) for the ESD overlay; default: strongest weight decay")
    parser.add_argument("--esd-layer", help="layer longname for the ESD overlay; default: the largest layer")
    parser.add_argument("--keep-unchanged", action="store_true",
                        help="keep layers that fine-tuning left unchanged in every run of a cell (left out by default)")
    parser.add_argument("--across", action="append", default=[], metavar="DIMS",
                        help="also pool cells across data and/or model, e.g. --across data, --across data,model (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _error(message: str, code: int) -> int:
    print(f"wdiv.report: error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runs_dir = args.runs_dir
    if not runs_dir.is_dir():
        return _error(f"RUNS_DIR {runs_dir} is not a directory", 2)
    formats = [] if args.no_figures else [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        return _error(f"--formats {','.join(bad)}: not one of {','.join(FIGURE_FORMATS)}", 2)
    across = []
    for item in args.across:
        dims = tuple(d.strip() for d in item.split(",") if d.strip())
        if not dims or any(d not in ACROSS_DIMS for d in dims):
            return _error(f"--across {item}: give data, model or data,model", 2)
        across.append(dims)
    out_dir = args.out or runs_dir / "report"
    inside = out_dir.resolve().is_relative_to(runs_dir.resolve())
    collection = collect(runs_dir, exclude=out_dir.resolve() if inside else None)
    try:
        report = build(collection, keep_unchanged=args.keep_unchanged, across=across)
    except NoRuns as why:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(out_dir / "skipped.csv", collection.skipped)
        write_text(out_dir / "summary.md", render.no_report_markdown(str(why), runs_dir, collection.skipped))
        return _error(f"{why} under {runs_dir} (reasons in {out_dir / 'summary.md'})", 1)
    figure_metrics = [m.strip() for m in args.figure_metrics.split(",")] if args.figure_metrics else None
    unknown = sorted(set(figure_metrics or []) - set(report.metrics))
    if unknown:
        return _error(f"--figure-metrics {','.join(unknown)} not among {','.join(report.metrics)}", 2)
    write_report(report, out_dir, runs_dir, formats, args.esd_run, args.esd_layer, figure_metrics)
    print(f"wdiv.report: {len(report.runs)} runs in {report.runs['cell'].nunique()} cell(s), "
          f"{len(report.skipped)} skipped -> {out_dir}")
    for h in report.headlines.itertuples(index=False):
        print(h.statement if len(report.headlines) == 1 else f"{h.cell}: {h.statement}")
    return 0
