"""Gather analysed run directories into tables for the report.

A usable run has run.json with status "complete", a spectra.csv and the spectra of its
reference (spectra_base.csv beside it, as `wdiv.analyze --base` writes it). Without
spectra_base.csv the reference is analysed once per (checkpoint sha256, options), with exactly
the options recorded in the run's spectra_summary.json, never with defaults. Every other run is
kept in a `skipped` table with the reason, so the report lists it instead of silently dropping
or averaging it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from wdiv.report.cells import annotate
from wdiv.report.deltas import OPTIONAL_METRICS, SPECTRAL_METRICS, layer_deltas, metrics_present

log = logging.getLogger(__name__)

CONFIG_KEYS = ("exp", "arm", "level", "level_index", "variant", "seed", "model", "data", "recipe")
REQUIRED_KEYS = ("status", "arm", "seed")
METRIC_KEYS = ("test_acc", "test_ece", "test_loss", "ood_acc")
SKIPPED_COLUMNS = ["run_id", "reason"]
EXCLUDED_COLUMNS = ["run_id", "longname", "slice_index", "reason"]


class RunSkipped(Exception):
    """A run that cannot enter the report; the message is the reason shown to the user."""


@dataclass
class Collection:
    """What was found under a runs directory (layers hold pre/ft/dM and `unchanged`, not yet D)."""

    runs: pd.DataFrame
    layers: pd.DataFrame
    skipped: pd.DataFrame
    excluded_layers: pd.DataFrame
    metrics: list[str]
    run_dirs: dict[str, Path] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # run_id -> analysis options (JSON text)


def find_run_files(runs_dir: Path) -> list[Path]:
    """Every run.json below runs_dir, in a stable order."""
    return sorted(runs_dir.rglob("run.json"))


def run_row(record: dict, run_id: str) -> dict:
    """Flatten run.json into one table row: config keys, metrics, OOD sets, diversity, synth."""
    row: dict = {"run_id": run_id}
    for key in CONFIG_KEYS:
        row[key] = record.get(key)
    pretrained = record.get("pretrained") or {}
    row["pretrained_sha256"] = pretrained.get("sha256")
    row["pretrained_path"] = pretrained.get("path")
    row["pretrained_kind"] = pretrained.get("kind")
    row["wall_time_s"] = record.get("wall_time_s")
    metrics = record.get("metrics") or {}
    for key in METRIC_KEYS:
        row[key] = metrics.get(key)
    for name, acc in (metrics.get("ood") or {}).items():
        row[f"ood_{name}"] = acc
    for group in ("diversity", "synth"):
        for key, value in (record.get(group) or {}).items():
            if not isinstance(value, (dict, list)):
                row[f"{group}_{key}"] = value
    return row


def recorded_options(run_dir: Path) -> dict | None:
    """The options spectra.csv was made with (spectra_summary.json's wdiv.options), or None."""
    path = run_dir / "spectra_summary.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text()).get("wdiv") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return meta.get("options")


def engine_analyze(path: str, options: dict) -> pd.DataFrame:
    """Analyse a reference checkpoint with the recorded options (flat FARMS keys, as the API takes)."""
    from wdiv.spectral import analyze  # heavy (torch); only needed when spectra_base.csv is missing

    flat = dict(options)
    for key, value in (flat.pop("farms_options", None) or {}).items():
        flat[f"farms_{key}"] = value
    return analyze(path, **flat)


class ReferenceSpectra:
    """Spectra of reference checkpoints, computed at most once per (sha256, options)."""

    def __init__(self, analyze: Callable[[str, dict], pd.DataFrame] | None = None):
        self._analyze = analyze or engine_analyze
        self._cache: dict[tuple[str, str], pd.DataFrame | RunSkipped] = {}

    def for_run(self, run_dir: Path, record: dict, options: dict | None) -> pd.DataFrame:
        beside = run_dir / "spectra_base.csv"
        if beside.is_file():
            return read_spectra(beside)
        pretrained = record.get("pretrained") or {}
        path, sha = pretrained.get("path"), pretrained.get("sha256")
        if not path:
            raise RunSkipped("no spectra_base.csv and run.json has no pretrained.path")
        if options is None:
            raise RunSkipped("no spectra_base.csv, and no spectra_summary.json recording the options spectra.csv was "
                             "made with: rerun `python -m wdiv.analyze RUNS_DIR --base`")
        if not Path(path).is_absolute():
            path = str(run_dir / path)
        key = (sha or str(path), json.dumps(options, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = self._compute(path, options)
        found = self._cache[key]
        if isinstance(found, RunSkipped):
            raise found
        return found

    def _compute(self, path: str, options: dict) -> pd.DataFrame | RunSkipped:
        if not Path(path).exists():
            return RunSkipped(f"no spectra_base.csv and the pretrained checkpoint {path} is missing")
        log.info("analysing reference %s with the runs' recorded options", path)
        try:
            return self._analyze(path, options)
        except (TypeError, ValueError) as err:
            return RunSkipped(f"no spectra_base.csv, and the recorded options cannot be reproduced here ({err})")
        except Exception as err:  # noqa: BLE001 - any failure makes the reference unusable
            return RunSkipped(f"no spectra_base.csv and analysing {path} failed: {err}")


def read_spectra(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise RunSkipped(f"{path.name} unreadable ({type(err).__name__}: {err})") from None
    if "longname" not in table.columns:
        raise RunSkipped(f"{path.name} has no longname column")
    return table


def load_run(run_file: Path, runs_dir: Path, references: ReferenceSpectra) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict | None]:
    """One run: (row, matched layer table, excluded layers, options); raises RunSkipped with the reason."""
    try:
        record = json.loads(run_file.read_text())
    except (OSError, ValueError) as err:
        raise RunSkipped(f"unreadable run.json ({err})") from None
    if not isinstance(record, dict):
        raise RunSkipped("run.json is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise RunSkipped(f"run.json lacks {', '.join(missing)}")
    status = record["status"]
    if status != "complete":
        reason = f"status={status}"
        if record.get("error"):
            reason += f": {record['error']}"
        raise RunSkipped(reason)
    run_dir = run_file.parent
    spectra_file = run_dir / "spectra.csv"
    if not spectra_file.is_file():
        raise RunSkipped("no spectra.csv (run `python -m wdiv.analyze RUNS_DIR --base`)")
    finetuned = read_spectra(spectra_file)
    options = recorded_options(run_dir)
    pretrained = references.for_run(run_dir, record, options)
    metrics = metrics_present(finetuned, pretrained)
    if not metrics:
        raise RunSkipped("spectra.csv and the reference share no spectral metric")
    layers, excluded = layer_deltas(finetuned, pretrained, metrics)
    if layers.empty:
        raise RunSkipped("no layer matches the pretrained reference by name and shape")
    run_id = run_dir.relative_to(runs_dir).as_posix() or "."
    return run_row(record, run_id), layers, excluded, options


def collect(runs_dir: Path, analyze: Callable[[str, dict], pd.DataFrame] | None = None, exclude: Path | None = None) -> Collection:
    """Read every run under runs_dir; `exclude` (the report folder) is never searched.

    `analyze(path, options)` analyses a reference whose spectra_base.csv is missing (tests pass a fake).
    """
    runs_dir = Path(runs_dir)
    references = ReferenceSpectra(analyze)
    exclude = Path(exclude).resolve() if exclude is not None else None
    rows, layer_tables, excluded_tables, skipped, run_dirs, options = [], [], [], [], {}, {}
    for run_file in find_run_files(runs_dir):
        if exclude is not None and exclude in run_file.resolve().parents:
            continue
        run_id = run_file.parent.relative_to(runs_dir).as_posix() or "."
        try:
            row, layers, excluded, opts = load_run(run_file, runs_dir, references)
        except RunSkipped as why:
            log.info("skipping %s: %s", run_id, why)
            skipped.append({"run_id": run_id, "reason": str(why)})
            continue
        rows.append(row)
        run_dirs[run_id] = run_file.parent
        options[run_id] = json.dumps(opts, sort_keys=True) if opts is not None else ""
        layer_tables.append(layers.assign(run_id=run_id))
        excluded_tables.append(excluded.assign(run_id=run_id))
    runs = annotate(pd.DataFrame(rows)) if rows else pd.DataFrame()
    layers = pd.concat(layer_tables, ignore_index=True) if layer_tables else pd.DataFrame()
    excluded = pd.concat(excluded_tables, ignore_index=True) if excluded_tables else pd.DataFrame(columns=EXCLUDED_COLUMNS)
    metrics = [m for m in SPECTRAL_METRICS + OPTIONAL_METRICS if layer_tables and all(f"dM_{m}" in t for t in layer_tables)]
    return Collection(
        runs=runs,
        layers=layers,
        skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS),
        excluded_layers=excluded[EXCLUDED_COLUMNS],
        metrics=metrics,
        run_dirs=run_dirs,
        options=options,
    )
