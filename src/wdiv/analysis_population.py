"""`wdiv.analyze PATH --summary population.csv`: one row per checkpoint, gathered from the
per-checkpoint records, so that a model zoo can be compared without run.json metadata.

Columns: ``path`` (relative to the analysed directory), ``status``, ``error``, ``sha256`` (of the
weights: analysis_targets.checkpoint_sha256, as a reference is hashed), ``n_layers``, ``n_failed``, the get_summary means of
spectra_summary.json (``merged_<metric>`` for an adapter's W + dW rows), ``base``,
``base_sha256``, ``options`` (JSON) and ``record_sha256`` (the record the row was read from).

Every checkpoint found is a row. ``status`` is ``ok`` when its outputs are up to date for these
options (the means are then the record's), else ``failed`` (its analysis failed; the error line),
``missing`` (never analysed), ``damaged`` (a record or output that does not check out) or ``stale``
(made with other options or before the weights changed), with the reason in ``error`` and no means.
Hashing the weights is the only costly part: a row whose record is unchanged since the previous
table at the same path keeps that table's sha256.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from wdiv.analysis_outputs import Target, read_record, stale_reason
from wdiv.analysis_targets import checkpoint_sha256
from wdiv.io import write_text

log = logging.getLogger("wdiv.analyze")

FIRST = ["path", "status", "error", "sha256", "n_layers", "n_failed"]
LAST = ["base", "base_sha256", "options", "record_sha256"]


def population_root(paths: list[str]) -> Path:
    """What the rows' paths are relative to: the directory analysed, or the common folder of several PATHs."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0])
    folders = [os.path.abspath(p if Path(p).is_dir() else os.path.dirname(p) or ".") for p in paths]
    return Path(os.path.commonpath(folders))


def _previous_hashes(path: Path) -> dict[tuple[str, str], str]:
    """(path, record_sha256) -> sha256 of the table already at ``path`` (none if it is unreadable)."""
    import pandas as pd

    try:
        old = pd.read_csv(path, usecols=["path", "record_sha256", "sha256"], dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return {}
    return {(r.path, r.record_sha256): r.sha256 for r in old.itertuples() if r.record_sha256 and r.sha256}


def _status(t: Target, opts, save_esd: bool, failures: dict[str, str]) -> tuple[str, str, dict | None]:
    """(status, reason, the record when up to date)."""
    if t.error:
        return "failed", t.error, None
    stale = stale_reason(t, opts, save_esd)
    record, why = read_record(t.summary)
    if stale is None:
        return "ok", "", record
    if record is not None and record["wdiv"].get("errors"):
        return "failed", record["wdiv"]["errors"][0], None
    if str(t.weights) in failures:  # failed before it ever had a record
        return "failed", failures[str(t.weights)], None
    if record is None and not t.summary.exists():
        return "missing", stale.reason, None
    return ("damaged" if stale.warn else "stale"), stale.reason, None


def population_row(t: Target, opts, save_esd: bool, root: Path, known: dict[tuple[str, str], str],
                   failures: dict[str, str]) -> dict:
    rel = os.path.relpath(t.weights, root)
    status, reason, record = _status(t, opts, save_esd, failures)
    row: dict = {"path": rel, "status": status, "error": reason}
    if record is not None:
        meta = record["wdiv"]
        row.update(n_layers=meta.get("n_layers"), n_failed=meta.get("n_failed"))
        row.update({k: v for k, v in record.items() if k not in ("wdiv", "merged")})
        row.update({f"merged_{k}": v for k, v in (record.get("merged") or {}).items()})
        row.update(base=meta.get("base"), base_sha256=meta.get("base_sha256"),
                   options=json.dumps(meta.get("options"), sort_keys=True), record_sha256=meta.get("record_sha256"))
    sha = known.get((rel, row.get("record_sha256")))
    if sha is None and t.weights.exists():
        try:
            sha = checkpoint_sha256(t.weights)
        except (OSError, ValueError) as exc:
            log.warning("%s: not hashed (%s)", t.weights, exc)
    row["sha256"] = sha
    return row


def write_population(path: str | Path, targets: list[Target], opts, root: Path, save_esd: bool = False,
                     failures: dict[str, str] | None = None):
    """Write the table atomically -> it (a DataFrame). ``failures``: {weights: error line} of this
    run's checkpoints that failed (one that never had a record is named from it)."""
    import pandas as pd

    path = Path(path)
    known = _previous_hashes(path)
    rows = [population_row(t, opts, save_esd, root, known, failures or {}) for t in targets]
    df = pd.DataFrame(rows)
    middle = [c for c in df.columns if c not in FIRST + LAST]
    df = df.reindex(columns=FIRST + middle + LAST)
    df[["n_layers", "n_failed"]] = df[["n_layers", "n_failed"]].astype("Int64")  # blank, not NaN, when unknown
    write_text(path, df.to_csv(index=False))
    log.info("%s: %d checkpoint(s), %d ok", path, len(df), int((df["status"] == "ok").sum()))
    return df
