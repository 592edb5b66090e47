"""Gather analysed run directories into tables for the report.

A usable run has run.json with status "complete", a spectra.csv and the spectra of its
reference (spectra_base.csv beside it, as `wdiv.analyze --base` writes it). Without
spectra_base.csv the reference is analysed once per (checkpoint sha256, options), with exactly
the options recorded in the run's spectra_summary.json, never with defaults. Every other run is
kept in a `skipped` table with the reason, so the report lists it instead of silently dropping
or averaging it.

Every file is checked before use (`checks`): run.json for its keys and value types, spectra.csv
and spectra_base.csv against the record analyze wrote last (spectra_summary.json's wdiv.files:
size, sha256, rows) or, without one (an older wdiv), for their structure. A damaged file skips
the run, with the file (relative to RUNS_DIR) and the reason in the skipped table. A folder with
a run's outputs (spectra_base.csv, history.csv) but no run.json is listed too, never dropped unseen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from wdiv.errors import InputError
from wdiv.references import resolve_pretrained
from wdiv.report import checks
from wdiv.report.cells import annotate
from wdiv.report.checks import BASE, RUN_FILE, SPECTRA, RunSkipped
from wdiv.report.deltas import OPTIONAL_METRICS, SPECTRAL_METRICS, layer_deltas, metrics_present

log = logging.getLogger(__name__)

CONFIG_KEYS = ("exp", "arm", "level", "level_index", "variant", "seed", "model", "data", "recipe")
REQUIRED_KEYS = checks.REQUIRED_KEYS
METRIC_KEYS = checks.METRIC_KEYS
SKIPPED_COLUMNS = ["run_id", "file", "reason"]
EXCLUDED_COLUMNS = ["run_id", "longname", "slice_index", "reason"]
# Files that only a run directory holds: a folder with one of them but no run.json is listed as skipped.
RUN_OUTPUTS = ("spectra_base.csv", "history.csv")
# Folders the report itself makes beside its output while writing (see cli.write_atomically).
STAGING_MARKS = (".staging-", ".old-")


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
    files: dict[str, dict] = field(default_factory=dict)  # run_id -> its record's file entries (wdiv.files)
    notes: list[str] = field(default_factory=list)


def _staging(path: Path, runs_dir: Path) -> bool:
    parts = path.relative_to(runs_dir).parts
    return any(p.startswith(".") and any(m in p for m in STAGING_MARKS) for p in parts)


def find_run_files(runs_dir: Path) -> list[Path]:
    """Every run.json below runs_dir, plus the run.json a folder of run outputs lacks, in a stable order."""
    found = {p for p in runs_dir.rglob(RUN_FILE)}
    for name in RUN_OUTPUTS:
        found |= {p.parent / RUN_FILE for p in runs_dir.rglob(name)}
    return sorted(p for p in found if not _staging(p, runs_dir))


def run_row(record: dict, run_id: str) -> dict:
    """Flatten run.json into one table row: config keys, metrics, OOD sets, diversity, synth."""
    row: dict = {"run_id": run_id}
    for key in CONFIG_KEYS:
        row[key] = record.get(key)
    row["seed"] = checks.as_integer(record["seed"])
    row["level"] = checks.as_level(record.get("level"))
    if row["level_index"] is not None:
        row["level_index"] = checks.as_integer(row["level_index"])
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
    try:
        meta = checks.read_summary(run_dir)
    except RunSkipped:
        return None
    return (meta or {}).get("options")


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

    def for_run(self, run_dir: Path, record: dict, options: dict | None, files: dict | None = None) -> pd.DataFrame:
        """spectra_base.csv (checked against its entry in `files`, the run's record), else the
        reference analysed with the recorded options; a recorded spectra_base.csv that is gone is
        damage, not a reason to recompute."""
        files = files or {}
        beside = run_dir / BASE
        if beside.exists() or BASE in files:
            return read_spectra(beside, files.get(BASE))
        pretrained = record.get("pretrained") or {}
        path, sha = pretrained.get("path"), pretrained.get("sha256")
        if not path:
            raise RunSkipped("no spectra_base.csv and run.json has no pretrained.path")
        if options is None:
            raise RunSkipped("no spectra_base.csv, and no spectra_summary.json recording the options spectra.csv was "
                             "made with: rerun `python -m wdiv.analyze RUNS_DIR --base`")
        try:
            path = str(resolve_pretrained(pretrained, run_dir))  # this machine's cache; a scratch run's own dir
        except InputError as err:
            raise RunSkipped(f"no spectra_base.csv and {err}") from None
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


def read_spectra(path: Path, entry: dict | None = None, n_layers=None) -> pd.DataFrame:
    """A spectra table checked before use (checks.read_spectra); RunSkipped names the file."""
    return checks.read_spectra(path, entry, n_layers)


@dataclass
class LoadedRun:
    row: dict
    layers: pd.DataFrame
    excluded: pd.DataFrame
    options: dict | None
    files: dict
    errors: list


def load_run(run_file: Path, runs_dir: Path, references: ReferenceSpectra) -> LoadedRun:
    """One run, every file checked before use; raises RunSkipped with the reason (and the file)."""
    if not run_file.exists():
        raise RunSkipped(f"no {RUN_FILE} beside the run's outputs", run_file)
    record = checks.read_record(run_file)
    status = record["status"]
    if status != "complete":
        reason = f"status={status}"
        if record.get("error"):
            reason += f": {record['error']}"
        raise RunSkipped(reason)
    run_dir = run_file.parent
    meta = checks.read_summary(run_dir)
    files = checks.entries(meta)
    spectra_file = run_dir / SPECTRA
    if not spectra_file.exists() and SPECTRA not in files:
        raise RunSkipped(f"no {SPECTRA} (run `python -m wdiv.analyze RUNS_DIR --base`)", spectra_file)
    finetuned = read_spectra(spectra_file, files.get(SPECTRA), (meta or {}).get("n_layers"))
    options = (meta or {}).get("options")
    pretrained = references.for_run(run_dir, record, options, files)
    metrics = metrics_present(finetuned, pretrained)
    if not metrics:
        raise RunSkipped("spectra.csv and the reference share no spectral metric")
    layers, excluded = layer_deltas(finetuned, pretrained, metrics)
    if layers.empty:
        raise RunSkipped("no layer matches the pretrained reference by name and shape")
    run_id = run_dir.relative_to(runs_dir).as_posix() or "."
    return LoadedRun(run_row(record, run_id), layers, excluded, options, files, list((meta or {}).get("errors") or []))


def relative(path: Path | None, runs_dir: Path) -> str:
    if path is None:
        return ""
    try:
        return path.relative_to(runs_dir).as_posix()
    except ValueError:
        return str(path)


def collect(runs_dir: Path, analyze: Callable[[str, dict], pd.DataFrame] | None = None, exclude: Path | None = None) -> Collection:
    """Read every run under runs_dir; `exclude` (the report folder) is never searched.

    `analyze(path, options)` analyses a reference whose spectra_base.csv is missing (tests pass a fake).
    """
    runs_dir = Path(runs_dir)
    references = ReferenceSpectra(analyze)
    exclude = Path(exclude).resolve() if exclude is not None else None
    rows, layer_tables, excluded_tables, skipped, run_dirs, options, files, notes = [], [], [], [], {}, {}, {}, []
    for run_file in find_run_files(runs_dir):
        if exclude is not None and exclude in run_file.resolve().parents:
            continue
        run_id = run_file.parent.relative_to(runs_dir).as_posix() or "."
        try:
            run = load_run(run_file, runs_dir, references)
        except RunSkipped as why:
            log.info("skipping %s: %s", run_id, why)
            skipped.append({"run_id": run_id, "file": relative(why.file, runs_dir), "reason": str(why)})
            continue
        rows.append(run.row)
        run_dirs[run_id] = run_file.parent
        options[run_id] = json.dumps(run.options, sort_keys=True) if run.options is not None else ""
        files[run_id] = run.files
        if run.errors:
            notes.append(f"{run_id}: its analysis reported {len(run.errors)} error(s) (spectra_summary.json), "
                         f"the first: {run.errors[0]}")
        layer_tables.append(run.layers.assign(run_id=run_id))
        excluded_tables.append(run.excluded.assign(run_id=run_id))
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
        files=files,
        notes=notes,
    )
