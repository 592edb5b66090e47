"""Gather analysed run directories into tables for the report.

A usable run has run.json with status "complete", a spectra.csv and the spectra of its
pretrained reference (spectra_base.csv beside it, or computed once per checkpoint sha256 through
``wdiv.spectral.analyze``). Every other run is kept in a `skipped` table with the reason, so the
report can list it instead of silently dropping or averaging it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from wdiv.report.stats import OPTIONAL_METRICS, SPECTRAL_METRICS, layer_deltas, metrics_present

log = logging.getLogger(__name__)

CONFIG_KEYS = ("exp", "arm", "level", "level_index", "variant", "seed", "model", "data")
REQUIRED_KEYS = ("status", "arm", "seed")
METRIC_KEYS = ("test_acc", "test_ece", "test_loss", "ood_acc")


class RunSkipped(Exception):
    """A run that cannot enter the report; the message is the reason shown to the user."""


@dataclass
class Collection:
    """What was found under a runs directory (layers hold pre/ft/dM, not yet D)."""

    runs: pd.DataFrame
    layers: pd.DataFrame
    skipped: pd.DataFrame
    excluded_layers: pd.DataFrame
    metrics: list[str]
    run_dirs: dict[str, Path] = field(default_factory=dict)


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


class ReferenceSpectra:
    """Spectra of pretrained checkpoints, computed at most once per sha256."""

    def __init__(self, analyze: Callable[[str], pd.DataFrame] | None = None):
        self._analyze = analyze
        self._cache: dict[str, pd.DataFrame | RunSkipped] = {}

    def for_run(self, run_dir: Path, record: dict) -> pd.DataFrame:
        beside = run_dir / "spectra_base.csv"
        if beside.is_file():
            return pd.read_csv(beside)
        pretrained = record.get("pretrained") or {}
        path, sha = pretrained.get("path"), pretrained.get("sha256")
        if not path:
            raise RunSkipped("no spectra_base.csv and run.json has no pretrained.path")
        key = sha or str(path)
        if key not in self._cache:
            self._cache[key] = self._compute(path)
        found = self._cache[key]
        if isinstance(found, RunSkipped):
            raise found
        return found

    def _compute(self, path: str) -> pd.DataFrame | RunSkipped:
        if not Path(path).exists():
            return RunSkipped(f"no spectra_base.csv and the pretrained checkpoint {path} is missing")
        analyze = self._analyze
        if analyze is None:
            try:
                from wdiv.spectral import analyze  # lazy: the spectral engine is heavy
            except ImportError as err:
                return RunSkipped(f"no spectra_base.csv and wdiv.spectral.analyze unavailable ({err})")
        log.info("analysing pretrained reference %s", path)
        try:
            return analyze(path)
        except Exception as err:  # noqa: BLE001 - any failure makes the reference unusable
            return RunSkipped(f"no spectra_base.csv and analysing {path} failed: {err}")


def load_run(run_file: Path, runs_dir: Path, references: ReferenceSpectra) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One run: (row, matched layer table, excluded layers); raises RunSkipped with the reason."""
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
    finetuned = pd.read_csv(spectra_file)
    if "longname" not in finetuned.columns:
        raise RunSkipped("spectra.csv has no longname column")
    pretrained = references.for_run(run_dir, record)
    metrics = metrics_present(finetuned, pretrained)
    if not metrics:
        raise RunSkipped("spectra.csv and the reference share no spectral metric")
    layers, excluded = layer_deltas(finetuned, pretrained, metrics)
    if layers.empty:
        raise RunSkipped("no layer matches the pretrained reference by name and shape")
    run_id = run_dir.relative_to(runs_dir).as_posix() or "."
    return run_row(record, run_id), layers, excluded


def collect(runs_dir: Path, analyze: Callable[[str], pd.DataFrame] | None = None, exclude: Path | None = None) -> Collection:
    """Read every run under runs_dir; `exclude` (the report folder) is never searched."""
    runs_dir = Path(runs_dir)
    references = ReferenceSpectra(analyze)
    exclude = Path(exclude).resolve() if exclude is not None else None
    rows, layer_tables, excluded_tables, skipped, run_dirs = [], [], [], [], {}
    for run_file in find_run_files(runs_dir):
        if exclude is not None and exclude in run_file.resolve().parents:
            continue
        run_id = run_file.parent.relative_to(runs_dir).as_posix() or "."
        try:
            row, layers, excluded = load_run(run_file, runs_dir, references)
        except RunSkipped as why:
            log.info("skipping %s: %s", run_id, why)
            skipped.append({"run_id": run_id, "reason": str(why)})
            continue
        rows.append(row)
        run_dirs[run_id] = run_file.parent
        layer_tables.append(layers.assign(run_id=run_id))
        excluded_tables.append(excluded.assign(run_id=run_id))
    runs = pd.DataFrame(rows)
    layers = pd.concat(layer_tables, ignore_index=True) if layer_tables else pd.DataFrame()
    excluded = pd.concat(excluded_tables, ignore_index=True) if excluded_tables else pd.DataFrame()
    metrics = [m for m in SPECTRAL_METRICS + OPTIONAL_METRICS if layer_tables and all(f"dM_{m}" in t for t in layer_tables)]
    return Collection(
        runs=runs,
        layers=layers,
        skipped=pd.DataFrame(skipped, columns=["run_id", "reason"]),
        excluded_layers=excluded if not excluded.empty else pd.DataFrame(columns=["run_id", "longname", "reason"]),
        metrics=metrics,
        run_dirs=run_dirs,
    )
