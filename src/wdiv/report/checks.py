"""Is a run's file fit to use? Every file the report reads is checked here before it is used.

run.json must be a JSON object with the keys and value types of the run-directory contract.
spectra_summary.json is analyze's (and ingest's) record: when it lists a file under
``wdiv.files``, that file must match its entry (records.check: size, sha256, rows); files
without an entry (outputs of an older wdiv) are judged by their structure alone. A spectra
table must parse, hold ``longname`` and at least one layer, and carry numbers where the report
expects numbers. A damaged file raises RunSkipped naming the file and the reason: the run is
listed, never averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from wdiv import records
from wdiv.report.deltas import OPTIONAL_METRICS, SHAPE_COLUMNS, SPECTRAL_METRICS

RUN_FILE = "run.json"
SPECTRA = "spectra.csv"
BASE = "spectra_base.csv"
SUMMARY = "spectra_summary.json"
ESD = "esd.npz"
ESD_BASE = "esd_base.npz"
SPECTRA_COLUMNS = ("longname",)
NUMERIC_COLUMNS = (*SHAPE_COLUMNS, *SPECTRAL_METRICS, *OPTIONAL_METRICS)
REQUIRED_KEYS = ("status", "arm", "seed")
TEXT_KEYS = ("exp", "variant", "model", "data", "recipe")
METRIC_KEYS = ("test_acc", "test_ece", "test_loss", "ood_acc")


class RunSkipped(Exception):
    """A run that cannot enter the report: the message is the reason, `file` the file at fault (if one is)."""

    def __init__(self, reason: str, file: Path | None = None):
        super().__init__(reason)
        self.file = file


# ----------------------------------------------------------------------------- values


def _type(value) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_integer(value) -> int | None:
    """An integer seed / index from JSON (1 or 1.0, not True, not "1"), else None."""
    if is_number(value) and float(value).is_integer():
        return int(value)
    return None


def as_level(value):
    """A level as the tables group it: a number stays one, a numeric string becomes its number
    ("1e-3" and 0.001 are the same strength), a name stays a name."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number):
            return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    return value


def record_problem(record) -> str | None:
    """Why a parsed run.json cannot be used (one reason), or None."""
    if not isinstance(record, dict):
        return f"not a JSON object ({_type(record)})"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(record["status"], str):
        return f"status is {_type(record['status'])}, not a string"
    if not isinstance(record["arm"], str) or not record["arm"]:
        return f"arm {record['arm']!r} is not a name"
    if as_integer(record["seed"]) is None:
        return f"seed {record['seed']!r} is not an integer"
    level = record.get("level")
    if not (level is None or is_number(level) or isinstance(level, str)):
        return f"level {level!r} is neither a number nor a name"
    index = record.get("level_index")
    if index is not None and as_integer(index) is None:
        return f"level_index {index!r} is not an integer"
    for key in TEXT_KEYS:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
            return f"{key} is {_type(value)}, not a name"
    pretrained = record.get("pretrained")
    if pretrained is not None:
        if not isinstance(pretrained, dict):
            return f"pretrained is {_type(pretrained)}, not an object"
        for key in ("path", "sha256", "kind"):
            if pretrained.get(key) is not None and not isinstance(pretrained[key], str):
                return f"pretrained.{key} is {_type(pretrained[key])}, not a string"
    metrics = record.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            return f"metrics is {_type(metrics)}, not an object"
        for key in METRIC_KEYS:
            if metrics.get(key) is not None and not is_number(metrics[key]):
                return f"metrics.{key} {metrics[key]!r} is not a number"
        ood = metrics.get("ood")
        if ood is not None and not isinstance(ood, dict):
            return f"metrics.ood is {_type(ood)}, not an object"
        for key, value in (ood or {}).items():
            if value is not None and not is_number(value):
                return f"metrics.ood.{key} {value!r} is not a number"
    for group in ("diversity", "synth"):
        value = record.get(group)
        if value is not None and not isinstance(value, dict):
            return f"{group} is {_type(value)}, not an object"
    for key, value in (record.get("diversity") or {}).items():
        if value is not None and not isinstance(value, (dict, list)) and not is_number(value):
            return f"diversity.{key} {value!r} is not a number"
    wall = record.get("wall_time_s")
    if wall is not None and not is_number(wall):
        return f"wall_time_s {wall!r} is not a number"
    return None


def read_record(path: Path) -> dict:
    """run.json, checked; RunSkipped naming it otherwise."""
    try:
        record = records.read_json(path)
    except ValueError as err:
        reason = str(err).rsplit(": ", 1)[-1]
        if reason != f"{records.NOT_JSON} object":
            raise RunSkipped(f"unreadable {RUN_FILE} ({reason})", path) from None
        record = json.loads(path.read_text())  # valid JSON, but not an object: say what it is
    problem = record_problem(record)
    if problem:
        raise RunSkipped(f"{RUN_FILE} {problem}", path)
    return record


# ----------------------------------------------------------------------------- the analysis record


def read_summary(run_dir: Path) -> dict | None:
    """spectra_summary.json's ``wdiv`` part, checked; None when there is none (older outputs)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        summary = records.read_json(path)
    except ValueError as err:
        raise RunSkipped(f"{SUMMARY}: {str(err).rsplit(': ', 1)[-1]}", path) from None
    meta = summary.get("wdiv")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise RunSkipped(f"{SUMMARY}: wdiv is {_type(meta)}, not an object", path)
    files = meta.get("files")
    if files is not None and (not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values())):
        raise RunSkipped(f"{SUMMARY}: wdiv.files is not an object of file entries", path)
    errors = meta.get("errors")
    if errors is not None and not isinstance(errors, list):
        raise RunSkipped(f"{SUMMARY}: wdiv.errors is {_type(errors)}, not a list", path)
    options = meta.get("options")
    if options is not None and not isinstance(options, dict):
        raise RunSkipped(f"{SUMMARY}: wdiv.options is {_type(options)}, not an object", path)
    return meta


def entries(meta: dict | None) -> dict[str, dict]:
    """File name -> record entry, from a checked summary (empty for outputs without a record)."""
    return dict((meta or {}).get("files") or {})


# ----------------------------------------------------------------------------- tables


def numeric_problem(table: pd.DataFrame) -> str | None:
    """A metric or shape column holding text where numbers belong (empty cells are failed fits, fine)."""
    for col in (c for c in NUMERIC_COLUMNS if c in table.columns):
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any():
            return f"non-numeric values in column {col} ({int(bad.sum())} of {len(table)} rows)"
    return None


def read_spectra(path: Path, entry: dict | None = None, n_layers=None) -> pd.DataFrame:
    """A spectra table checked against its record entry (if any) and for its structure; without
    an entry, ``n_layers`` (what an older analyze wrote in spectra_summary.json) is the rows it
    must hold."""
    reason = records.check(path, entry, required_columns=SPECTRA_COLUMNS)
    if reason is None:
        try:
            table = pd.read_csv(path)
        except Exception:  # noqa: BLE001 - pandas raises many types for bytes that are no CSV
            reason = records.NOT_CSV
    if reason is None:
        missing = [c for c in SPECTRA_COLUMNS if c not in table.columns]
        names = table["longname"] if not missing else None
        if missing:
            reason = "missing columns: " + ", ".join(missing)
        elif table.empty:
            reason = "no layers (a header only)"
        elif entry is None and is_number(n_layers) and len(table) < n_layers:
            reason = f"fewer layers than recorded ({len(table)} of {int(n_layers)})"
        elif names.isna().any() or (names.astype(str).str.strip() == "").any():
            reason = f"rows without a longname ({int(names.isna().sum())} of {len(table)})"
        else:
            reason = numeric_problem(table)
    if reason is not None:
        raise RunSkipped(f"{path.name}: {reason}", path)
    table["longname"] = table["longname"].astype(str)
    for col in (c for c in NUMERIC_COLUMNS if c in table.columns):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def file_problem(path: Path, entry: dict | None = None) -> str | None:
    """Why an auxiliary file (esd.npz) may not be used, or None."""
    return records.check(path, entry)
