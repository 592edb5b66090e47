"""WeightWatcher ``details`` tables -> wdiv run directories that ``wdiv.report`` reads like its own.

A META table (CSV, one row per fine-tuning run) names two saved ``watcher.analyze()`` frames per
run, before and after fine-tuning, and the run's config and metrics. Each row becomes
``RUNS_DIR/<run>/`` with run.json (the run-directory contract; ``pretrained.kind`` and
``source.kind`` are "weightwatcher"), spectra.csv (after), spectra_base.csv (before) in wdiv's
column layout, and spectra_summary.json, whose ``wdiv.options`` say the spectra came from
WeightWatcher tables, so the report never tries to re-run the engine for these runs, and whose
``wdiv.files`` is the same record analyze writes (records entries: sha256, bytes, rows of
spectra.csv and spectra_base.csv), so the report checks ingested runs like analysed ones.

Column mapping (WeightWatcher 0.7.7 ``details``): the metric columns carry wdiv's names already,
so they are copied, put in wdiv's order and made numeric. Deliberate changes:
- a failed power-law fit (WeightWatcher ``alpha=-1``, or ``status=failed``) becomes empty alpha,
  xmin, xmax, D, sigma, num_pl_spikes, alpha_weighted, log_alpha_norm (and Lambda, raw_alpha)
  with ``status=failed``, as wdiv writes one; a failed MP fit (``mp_softrank=-1``) empty MP columns;
- the MP columns (num_spikes, sigma_mp, bulk_max, bulk_min, mp_softrank) exist only when
  WeightWatcher ran with ``mp_fit=True``; they are not invented otherwise;
- WeightWatcher-only columns (has_esd, layer_type, spectral_norm, sv_max, sv_min, rank_loss,
  weak_rank_loss, W_scale, ...) are kept after wdiv's; a saved index column is dropped;
- ``layer_id`` stays WeightWatcher's (it counts modules, wdiv counts weights); layers pair by
  ``longname``. Without a longname in both files they pair by ``layer_id`` and get
  ``longname = layer<id>.<name>`` in both files, so the layer counts must agree.
"""

from __future__ import annotations

import csv
import json
import locale
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wdiv import records
from wdiv.errors import InputError
from wdiv.io import sha256_file, write_text
from wdiv.report.cells import NO_RECIPE

log = logging.getLogger(__name__)

SOURCE_KIND = "weightwatcher"
OPTIONS = {"source": "weightwatcher-details"}
# wdiv's spectra.csv layout (DESIGN.md, README); optional columns in the order analyze writes them.
WDIV_COLUMNS = (
    "layer_id", "name", "longname", "N", "M", "Q", "rf", "num_evals", "alpha", "xmin", "xmax", "D", "sigma",
    "num_pl_spikes", "lambda_max", "log_spectral_norm", "norm", "log_norm", "alpha_weighted", "log_alpha_norm",
    "stable_rank", "entropy", "matrix_rank", "num_spikes", "sigma_mp", "bulk_max", "bulk_min", "mp_softrank",
    "rand_distance", "ww_softrank", "num_fingers", "raw_alpha", "alpha_farms", "warning", "status",
)
TEXT_COLUMNS = ("name", "longname", "warning", "status", "layer_type")
METRIC_COLUMNS = ("alpha", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank",
                  "entropy", "num_spikes", "mp_softrank")
FIT_COLUMNS = ("alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_weighted", "log_alpha_norm",
               "Lambda", "raw_alpha")
MP_COLUMNS = ("num_spikes", "sigma_mp", "bulk_max", "bulk_min", "mp_softrank", "W_scale")
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank",
                   "mp_softrank")
PL_FAILED = "power-law fit failed (WeightWatcher alpha=-1)"
MP_FAILED = "MP fit failed (WeightWatcher -1)"

REQUIRED_META = ("run", "before", "after", "arm", "seed")
CONFIG_META = ("exp", "variant", "level", "level_index", "model", "data", "recipe")
METRIC_META = ("test_acc", "test_ece", "test_loss", "ood_acc")
DIVERSITY_META = ("vendi_pixel", "vendi_embed", "rho", "weighted_vs")
OTHER_META = ("wall_time_s",)
FILES = ("spectra_base.csv", "spectra.csv", "spectra_summary.json", "run.json")  # run.json last
_INDEX = re.compile(r"^(Unnamed: \d+|index|)$")


@dataclass
class Row:
    """One META row: where it came from and its raw (stripped) text values."""

    meta: Path
    line: int
    values: dict[str, str]
    error: str | None = None  # the row itself is malformed

    @property
    def run(self) -> str:
        return self.values.get("run", "")

    def where(self) -> str:
        return f"{self.meta}:{self.line}" + (f": run {self.run!r}" if self.run else "")


@dataclass
class Outcome:
    run: str
    action: str  # "written" | "updated" | "unchanged"
    path: Path


@dataclass
class IngestResult:
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line each, naming the file / row


# ----------------------------------------------------------------------------- details tables


def read_details(path: Path) -> pd.DataFrame:
    """A saved WeightWatcher details frame (with or without its index column); InputError names the file."""
    if not path.is_file():
        raise InputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    table = table.loc[:, [c for c in table.columns if not _INDEX.match(str(c).strip())]]
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("N", "M") if c not in table.columns]
    if "longname" not in table.columns and "layer_id" not in table.columns:
        missing.append("longname or layer_id")
    if not any(m in table.columns for m in METRIC_COLUMNS):
        missing.append("any spectral metric (" + ", ".join(METRIC_COLUMNS) + ")")
    if missing:
        raise InputError(f"{path} is not a WeightWatcher details table: no column {', '.join(missing)}")
    if table.empty:
        raise InputError(f"{path} has no layers")
    return table


def _coerce(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = table.copy()
    for col in out.columns:
        if col in TEXT_COLUMNS or col == "has_esd":
            continue
        values = pd.to_numeric(out[col], errors="coerce")
        lost = int((values.isna() & out[col].notna()).sum())
        if lost:
            log.warning("%s: column %s: %d non-numeric value(s) read as empty", path, col, lost)
        out[col] = values
    return out


def _text(column: pd.Series) -> pd.Series:
    """A text column with empty cells as '' (CSV reads them as NaN)."""
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def _note(warnings: pd.Series, mask: np.ndarray, text: str) -> pd.Series:
    old = _text(warnings)
    new = np.where(old == "", text, old + "; " + text)
    return pd.Series(np.where(mask, new, old), index=warnings.index, dtype=object)


def _blank(table: pd.DataFrame, columns, mask: np.ndarray) -> None:
    """Empty the given columns where mask is true (ints become floats only if a value is blanked)."""
    if not mask.any():
        return
    for col in columns:
        if col in table.columns:
            table[col] = table[col].astype(float).where(~mask)


def to_wdiv_layout(details: pd.DataFrame, path: Path) -> pd.DataFrame:
    """WeightWatcher details -> wdiv's spectra.csv layout (see the module docstring for the mapping)."""
    table = _coerce(details, path).reset_index(drop=True)
    if "warning" not in table.columns:
        table["warning"] = ""
    status = _text(table["status"]) if "status" in table.columns else pd.Series("", index=table.index)
    failed = (status == "failed").to_numpy()
    if "alpha" in table.columns:
        failed = failed | (table["alpha"] == -1).to_numpy() | table["alpha"].isna().to_numpy()
    _blank(table, FIT_COLUMNS, failed)
    table["warning"] = _note(table["warning"], failed, PL_FAILED)
    table["status"] = np.where(failed, "failed", np.where(status == "", "success", status))
    if "mp_softrank" in table.columns:
        mp_failed = (table["mp_softrank"] == -1).to_numpy()
        _blank(table, MP_COLUMNS, mp_failed)
        table["warning"] = _note(table["warning"], mp_failed, MP_FAILED)
    return _ordered(table)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """wdiv's columns in wdiv's order, then the others (WeightWatcher's own) in theirs."""
    ordered = [c for c in WDIV_COLUMNS if c in table.columns]
    return table[ordered + [c for c in table.columns if c not in ordered]]


def _has_longname(table: pd.DataFrame) -> bool:
    return "longname" in table.columns and not (_text(table["longname"]) == "").any()


def _layer_ids(table: pd.DataFrame, path: Path, why: str) -> pd.Series:
    if "layer_id" not in table.columns:
        raise InputError(f"{path} has no layer_id column to align layers by ({why})")
    ids = table["layer_id"]
    if ids.isna().any() or not (ids == ids.round()).all():
        raise InputError(f"{path}: layer_id must be integers to align layers by ({why})")
    ids = ids.astype(int)
    if ids.duplicated().any():
        raise InputError(f"{path}: duplicate layer_id {sorted(set(ids[ids.duplicated()]))[:5]} ({why})")
    return ids


def align(before: pd.DataFrame, after: pd.DataFrame, before_path: Path,
          after_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Make the two tables' layers pair up by longname.

    With a longname in both files nothing changes (a layer in only one file is the report's to
    list). Otherwise layers pair by layer_id and get longname ``layer<id>.<name>`` in both.
    """
    if _has_longname(before) and _has_longname(after):
        return before, after
    no_name = after_path if _has_longname(before) else before_path
    why = f"{no_name} has no longname"
    ids_b, ids_a = _layer_ids(before, before_path, why), _layer_ids(after, after_path, why)
    if len(ids_a) != len(ids_b):
        raise InputError(f"{after_path} has {len(ids_a)} layers, {before_path} {len(ids_b)}: without a longname "
                         "layers can only be paired by layer_id, one to one")
    if set(ids_a) != set(ids_b):
        odd = sorted(set(ids_a) ^ set(ids_b))[:5]
        raise InputError(f"{after_path}: layer_id {odd} not in both {after_path.name} and {before_path.name} "
                         "(without a longname layers pair by layer_id)")
    names_b = dict(zip(ids_b, _text(before["name"]))) if "name" in before.columns else {}
    names_a = dict(zip(ids_a, _text(after["name"]))) if "name" in after.columns else {}
    for i in sorted(set(names_a) & set(names_b)):
        if names_a[i] != names_b[i]:
            raise InputError(f"{after_path}: layer_id {i} is {names_a[i]!r} there and {names_b[i]!r} in {before_path}")
    names = names_b or names_a

    def longname(i: int) -> str:
        return f"layer{i}.{names[i]}" if names.get(i) else f"layer{i}"

    before, after = before.copy(), after.copy()
    before["longname"] = [longname(i) for i in ids_b]
    after["longname"] = [longname(i) for i in ids_a]
    return _ordered(before), _ordered(after)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary(spectra: pd.DataFrame, base: pd.DataFrame, files: dict[str, str], before: Path, after: Path,
            before_sha: str, after_sha: str) -> dict:
    """spectra_summary.json: get_summary-style means (failed fits left out) + the wdiv record."""
    ok = spectra[spectra["status"] != "failed"]
    out = {m: _jsonable(float(ok[m].mean())) for m in SUMMARY_METRICS if m in ok.columns}
    out["wdiv"] = {
        "options": dict(OPTIONS),
        "source": {"kind": SOURCE_KIND, "details": str(after), "details_sha256": after_sha,
                   "base_details": str(before), "base_details_sha256": before_sha},
        "weights": None,
        "base": str(before),
        "base_sha256": before_sha,
        "n_layers": int(len(spectra)),
        "n_failed": int((spectra["status"] == "failed").sum()),
        "files": {name: records.describe_bytes(name, _encoded(files[name]), count=len(t))
                  for name, t in (("spectra.csv", spectra), ("spectra_base.csv", base))},
    }
    return out


def _encoded(text: str) -> bytes:
    """The bytes write_text puts on disk for text (the locale's encoding, as Path.write_text uses)."""
    return text.encode(locale.getpreferredencoding(False))


# ----------------------------------------------------------------------------- META


def read_meta(path: Path) -> list[Row]:
    """The rows of one META CSV; InputError (naming it) when the file itself is unusable."""
    if not path.is_file():
        raise InputError(f"{path}: META file does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = []
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(header):
                    error = f"{len(values)} fields, the header has {len(header)}"
                    rows.append(Row(path, reader.line_num, {}, error))
                    continue
                rows.append(Row(path, reader.line_num, {h: v.strip() for h, v in zip(header, values) if h}))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: unreadable META ({type(err).__name__}: {err})") from None
    if not header:
        raise InputError(f"{path}: empty META file")
    missing = [c for c in REQUIRED_META if c not in header]
    if missing:
        raise InputError(f"{path}: META lacks column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_META)})")
    dupes = sorted({h for h in header if h and header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: META has duplicate column(s) {', '.join(dupes)}")
    known = set(REQUIRED_META + CONFIG_META + METRIC_META + DIVERSITY_META + OTHER_META)
    for h in header:
        if h and h not in known and not h.startswith(("ood_", "diversity_")):
            log.warning("%s: column %s is not a META column; ignored", path, h)
    return rows


def _number(text: str, what: str):
    """A META number: int for an integer literal (counts), else float; empty or nan -> None."""
    if text == "" or text.lower() == "nan":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r} is not a finite number")
    return value


def _integer(text: str, what: str):
    value = _number(text, what)
    if value is None:
        return None
    if not float(value).is_integer():
        raise InputError(f"{what} {text!r} is not an integer")
    return int(value)


def _level(text: str):
    """A level as run.json holds it: a number where the text is one, else the name; empty -> None."""
    if text == "" or text.lower() == "nan":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
        return value if math.isfinite(value) else text
    except ValueError:
        return text


def check_run_name(name: str) -> str:
    """A run name is a relative folder path under RUNS_DIR ('/'-separated; no '.', '..', hidden or 'report')."""
    if not name:
        raise InputError("empty run name")
    parts = name.split("/")
    if "\\" in name or "\0" in name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise InputError(f"run name {name!r} is not a plain relative folder path")
    if parts[0] == "report":
        raise InputError(f"run name {name!r}: RUNS_DIR/report is where the report goes")
    return name


def _check_row(row: Row) -> int:
    """arm and seed are what the report cannot do without; returns the seed."""
    for key in ("arm", "seed"):
        if row.values.get(key, "") == "":
            raise InputError(f"no {key}")
    return _integer(row.values["seed"], "seed")


def run_record(row: Row, before: Path, after: Path, before_sha: str, after_sha: str) -> dict:
    """run.json for one META row (the run-directory contract + source)."""
    v = row.values
    seed = _check_row(row)
    metrics = {k: _number(v.get(k, ""), k) for k in METRIC_META}
    metrics["ood"] = {}
    for key in v:
        if key.startswith("ood_") and key != "ood_acc":
            value = _number(v[key], key)
            if value is not None:
                metrics["ood"][key[len("ood_"):]] = value
    record = {
        "status": "complete",
        "exp": v.get("exp") or v["arm"],
        "arm": v["arm"],
        "level": _level(v.get("level", "")),
        "level_index": _integer(v.get("level_index", ""), "level_index"),
        "variant": v.get("variant") or None,
        "seed": seed,
        "model": v.get("model") or None,
        "data": v.get("data") or None,
        "recipe": v.get("recipe") or NO_RECIPE,
        "pretrained": {"path": str(before), "sha256": before_sha, "kind": SOURCE_KIND},
        "metrics": metrics,
    }
    diversity = {k: _number(v.get(k, ""), k) for k in DIVERSITY_META}
    for key in v:
        if key.startswith("diversity_"):
            diversity[key[len("diversity_"):]] = _number(v[key], key)
    diversity = {k: x for k, x in diversity.items() if x is not None}
    if diversity:
        record["diversity"] = diversity
    wall = _number(v.get("wall_time_s", ""), "wall_time_s")
    if wall is not None:
        record["wall_time_s"] = wall
    record["source"] = {"kind": SOURCE_KIND, "before": str(before), "after": str(after),
                        "meta": str(row.meta.resolve()), "after_sha256": after_sha}
    return record


def _resolve(row: Row, key: str) -> Path:
    text = row.values.get(key, "")
    if not text:
        raise InputError(f"no {key} file")
    path = Path(text).expanduser()
    return (path if path.is_absolute() else row.meta.resolve().parent / path).resolve()


def build_files(row: Row) -> dict[str, str]:
    """The four files of one run directory, as text; InputError with the reason (naming the file)."""
    _check_row(row)
    before_path, after_path = _resolve(row, "before"), _resolve(row, "after")
    before_raw, after_raw = read_details(before_path), read_details(after_path)
    before_sha, after_sha = sha256_file(before_path), sha256_file(after_path)
    record = run_record(row, before_path, after_path, before_sha, after_sha)
    base = to_wdiv_layout(before_raw, before_path)
    spectra = to_wdiv_layout(after_raw, after_path)
    base, spectra = align(base, spectra, before_path, after_path)
    files = {"spectra_base.csv": base.to_csv(index=False), "spectra.csv": spectra.to_csv(index=False)}
    means = summary(spectra, base, files, before_path, after_path, before_sha, after_sha)
    files["spectra_summary.json"] = _dumps(means)
    files["run.json"] = _dumps(record)
    return files


def _dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------- writing


def from_ingest(run_dir: Path) -> bool:
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and (record.get("source") or {}).get("kind") == SOURCE_KIND


def write_run(run_dir: Path, files: dict[str, str], force: bool = False) -> str:
    """Write one run directory; "written" | "updated" | "unchanged".

    Each file is written atomically. run.json comes first with status=running and last with
    status=complete, so a kill part-way leaves a run the report skips and the next ingest
    recognises as its own. An existing directory is rewritten only if ingest made it (or with force).
    """
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    if existing:
        if not from_ingest(run_dir) and not force:
            raise InputError(f"{run_dir} exists and was not written by wdiv.ingest (--force overwrites its "
                             f"{', '.join(FILES)})")
        if all((run_dir / n).is_file() and (run_dir / n).read_text() == text for n, text in files.items()):
            return "unchanged"
    write_text(run_dir / "run.json", _dumps(json.loads(files["run.json"]) | {"status": "running"}))
    for name in FILES:
        write_text(run_dir / name, files[name])
    return "updated" if existing else "written"


def ingest(metas: list[Path], out: Path, force: bool = False) -> IngestResult:
    """Every META row -> OUT/<run>/; bad rows become one error line each, the others are still written."""
    result = IngestResult()
    rows: list[Row] = []
    for meta in metas:
        try:
            rows.extend(read_meta(Path(meta)))
        except InputError as err:
            result.errors.append(str(err))
    by_name: dict[str, list[Row]] = {}
    good: list[Row] = []
    for row in rows:
        if row.error:
            result.errors.append(f"{row.where()}: {row.error}")
            continue
        try:
            check_run_name(row.run)
        except InputError as err:
            result.errors.append(f"{row.where()}: {err}")
            continue
        by_name.setdefault(row.run, []).append(row)
    for name, same in by_name.items():
        if len(same) > 1:
            where = ", ".join(f"{r.meta}:{r.line}" for r in same)
            result.errors.append(f"{where}: duplicate run name {name!r} (none of these rows ingested)")
        else:
            good.append(same[0])
    names = {r.run for r in good}
    out = Path(out)
    for row in good:
        parents = ["/".join(row.run.split("/")[:i]) for i in range(1, row.run.count("/") + 1)]
        inside = [p for p in parents if p in names]
        if inside:
            result.errors.append(f"{row.where()}: lies inside run {inside[0]!r}")
            continue
        try:
            files = build_files(row)
            run_dir = out / row.run
            action = write_run(run_dir, files, force)
        except InputError as err:
            result.errors.append(f"{row.where()}: {err}")
            continue
        except OSError as err:
            result.errors.append(f"{row.where()}: cannot write {out / row.run} ({err})")
            continue
        log.info("%s %s", action, run_dir)
        result.outcomes.append(Outcome(row.run, action, run_dir))
    return result
