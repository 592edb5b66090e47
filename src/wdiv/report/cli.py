"""python -m wdiv.report RUNS_DIR [--out DIR]: analysed runs -> tables, statistics, figures.

Writes into RUNS_DIR/report (or --out): runs.csv, layers.csv, categories.csv, anova.csv,
pairwise.csv, level_trend.csv, correlations.csv, accuracy.csv, headlines.csv, changes.csv,
missing_baselines.csv, skipped.csv, excluded_layers.csv, summary.md, summary.json,
categories.tex, accuracy.tex, figures/ and, with --across, across_<dims>_*.csv. A study whose
runs have no matching baseline gets the dM tables only (changes.csv) and the list of missing
baselines. Every option is checked before any file is read (one line on stderr, exit 2); the
report is written into a staging folder and swapped in whole, so a failure leaves the previous
report as it was.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wdiv.report import soups, trajectories
from wdiv.report.changes import build_changes, missing_lines, orphans_skipped
from wdiv.report.collect import collect
from wdiv.report.deltas import OPTIONAL_METRICS, SPECTRAL_METRICS
from wdiv.report.tables import NoBaselines, NoRuns, build
from wdiv.report.writing import esd_figure, write_atomically, write_changes_report, write_no_report, write_report

__all__ = ["esd_figure", "main", "parse_args"]

log = logging.getLogger(__name__)

ACROSS_DIMS = ("data", "model")
FIGURE_FORMATS = ("png", "pdf", "svg")
KNOWN_METRICS = (*SPECTRAL_METRICS, *OPTIONAL_METRICS)
REPORT_MARKS = ("summary.md", "skipped.csv")  # a folder holding one of them is a report --out may replace


class OptionError(ValueError):
    """A bad command line: one line for stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line too, not usage + error
        raise OptionError(message)


@dataclass
class Options:
    runs_dir: Path
    out_dir: Path
    formats: list[str]
    figure_metrics: list[str] | None
    esd_run: str | None
    esd_layer: str | None
    keep_unchanged: bool
    across: list[tuple[str, ...]]
    verbose: bool


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="python -m wdiv.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="directory holding analysed run directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/report); an existing one must be a "
                                                 "report (it is replaced whole) or empty")
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


def _items(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def _check_out(out_dir: Path, runs_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir} is a file, not a folder")
    out_res, runs_res = out_dir.resolve(), runs_dir.resolve()
    if runs_res == out_res or runs_res.is_relative_to(out_res):
        raise OptionError(f"--out {out_dir} holds RUNS_DIR {runs_dir}: the report needs a folder of its own")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not any((out_dir / m).is_file() for m in REPORT_MARKS):
        raise OptionError(f"--out {out_dir} is a folder with other files and no report in it (no "
                          f"{' or '.join(REPORT_MARKS)}): it would be replaced; give a new or report folder")
    if (out_dir / "run.json").exists():
        raise OptionError(f"--out {out_dir} is a run directory")


def check_options(args: argparse.Namespace) -> Options:
    """Every option, checked before any file is read; OptionError with one line otherwise."""
    runs_dir = args.runs_dir
    if not runs_dir.exists():
        raise OptionError(f"RUNS_DIR {runs_dir} does not exist (it is not a directory)")
    if not runs_dir.is_dir():
        raise OptionError(f"RUNS_DIR {runs_dir} is not a directory")
    formats = [] if args.no_figures else [f for f in _items(args.formats) if f]
    bad = [f for f in formats if f not in FIGURE_FORMATS]
    if bad:
        raise OptionError(f"--formats {','.join(bad)}: not one of {','.join(FIGURE_FORMATS)}")
    formats = list(dict.fromkeys(formats))
    figure_metrics = None
    if args.figure_metrics is not None:
        figure_metrics = _items(args.figure_metrics)
        unknown = [m for m in figure_metrics if m not in KNOWN_METRICS]
        if unknown or not figure_metrics:
            raise OptionError(f"--figure-metrics {','.join(unknown) or repr(args.figure_metrics)}: not among "
                              f"{','.join(KNOWN_METRICS)}")
    across = []
    for item in args.across:
        dims = tuple(d for d in _items(item) if d)
        if not dims or any(d not in ACROSS_DIMS for d in dims) or len(set(dims)) < len(dims):
            raise OptionError(f"--across {item}: give data, model or data,model")
        across.append(dims)
    esd_run = args.esd_run
    if esd_run is not None:
        parts = PurePosixPath(esd_run).parts
        if not esd_run.strip() or "\\" in esd_run or esd_run.startswith("/") or ".." in parts:
            raise OptionError(f"--esd-run {esd_run!r}: give a run_id, the run's folder relative to RUNS_DIR")
    if args.esd_layer is not None and not args.esd_layer.strip():
        raise OptionError("--esd-layer: give a layer longname")
    out_dir = args.out or runs_dir / "report"
    if args.out is not None:  # RUNS_DIR/report is the report's by contract; any other folder must look like one
        _check_out(out_dir, runs_dir)
    return Options(runs_dir, out_dir, formats, figure_metrics, esd_run, args.esd_layer, args.keep_unchanged, across,
                   args.verbose)


def _error(message: str, code: int) -> int:
    print(f"wdiv.report: error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    try:
        opts = check_options(parse_args(argv))
    except OptionError as err:
        return _error(str(err), 2)
    logging.basicConfig(level=logging.INFO if opts.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runs_dir, out_dir = opts.runs_dir, opts.out_dir
    inside = out_dir.resolve().is_relative_to(runs_dir.resolve())
    collection = collect(runs_dir, exclude=out_dir.resolve() if inside else None)
    report, changes = None, None
    try:
        if collection.runs.empty:
            raise NoRuns("no complete analysed run found")
        changes = build_changes(collection, keep_unchanged=opts.keep_unchanged)
        report = build(collection, keep_unchanged=opts.keep_unchanged, across=opts.across)
        report.trajectories = trajectories.build(report)
        if report.trajectories is not None:
            report.notes += report.trajectories.notes
        report.soups = soups.build(report)
    except NoBaselines:
        pass  # dM tables only
    except NoRuns as err:
        why = str(err)
        write_atomically(out_dir, lambda d: write_no_report(why, d, runs_dir, collection.skipped))
        return _error(f"{why} under {runs_dir} (reasons in {out_dir / 'summary.md'})", 1)
    metrics = report.metrics if report is not None else changes.metrics
    unknown = sorted(set(opts.figure_metrics or []) - set(metrics))
    if unknown and opts.formats:
        return _error(f"--figure-metrics {','.join(unknown)} not among this study's metrics {','.join(metrics)}", 2)
    if report is not None:
        write_atomically(out_dir, lambda d: write_report(report, d, runs_dir, opts.formats, opts.esd_run, opts.esd_layer,
                                                         opts.figure_metrics, changes))
        print(f"wdiv.report: {len(report.runs)} runs in {report.runs['cell'].nunique()} cell(s), "
              f"{len(report.skipped)} skipped -> {out_dir}")
        for h in report.headlines.itertuples(index=False):
            print(h.statement if len(report.headlines) == 1 else f"{h.cell}: {h.statement}")
        return 0
    skipped = orphans_skipped(collection.skipped, changes)
    write_atomically(out_dir, lambda d: write_changes_report(changes, skipped, d, runs_dir, opts.formats, opts.figure_metrics))
    print(f"wdiv.report: {len(changes.runs)} runs in {changes.runs['cell'].nunique()} cell(s), none with a matching "
          f"baseline: dM tables only (changes.csv), no D -> {out_dir}")
    for line in missing_lines(changes.missing):
        print(f"missing baseline: {line}")
    return 0
