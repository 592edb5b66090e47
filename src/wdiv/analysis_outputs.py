"""What `wdiv.analyze` writes, and the record that proves it.

spectra_summary.json is the record, written last (after spectra_base.csv, esd*.npz and
spectra.csv). Beside the get_summary-style means, its ``wdiv`` object holds:

- ``options``, ``base``, ``base_sha256``, ``n_layers``, ``n_failed``, ``esd_saved``, ``weights_hashed``;
- ``files``: {name relative to the summary's folder: ``records.describe`` entry} for every output
  that analysis wrote (sha256, bytes, rows or arrays; CSVs also list their columns);
- ``errors``: the error lines of that analysis (``[]`` when it succeeded);
- ``weights_files``: the identity of the weights analysed, {name relative to the weights' folder:
  {bytes, mtime_ns}} (+ ``sha256`` when run.json's ``files`` recorded one); no weights are hashed;
- ``record_sha256``: sha256 of the summary's text as written with this field null, so a damaged
  record is told from a good one.

Up to date (`stale_reason` is None): the record parses and its hash matches, it recorded no
error, the options, reference and weights are the ones of this run, and every recorded file passes
`records.check` against its entry (and the files this run asks for are recorded).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wdiv import records
from wdiv.io import atomic_write, write_text
from wdiv.spectral.weights import checkpoint_files

WEIGHT_FILE = "model.safetensors"
NPZ_DATE = (1980, 1, 1, 0, 0, 0)  # fixed zip member time: the same eigenvalues give the same bytes
LEFTOVER_AGE_S = 600  # a temporary file this old was left by a killed writer (a live one holds it for ms)


@dataclass
class Target:
    """One checkpoint to analyse and where its outputs go."""

    weights: Path
    csv: Path
    summary: Path
    run_dir: Path | None = None
    base: Path | None = None  # reference checkpoint, when deltas are wanted
    base_sha: str | None = None
    error: str | None = None  # set when the target cannot even be attempted
    snapshot_of: Path | None = None  # the run dir of a training snapshot (analysed without a reference)

    @property
    def base_csv(self) -> Path:
        if "spectra" in self.csv.name:
            return self.csv.with_name(self.csv.name.replace("spectra", "spectra_base", 1))
        return self.csv.with_name(f"{self.csv.stem}_base{self.csv.suffix}")


@dataclass
class Stale:
    """Why a target's outputs are not up to date; ``warn`` when a file is damaged or the last
    analysis failed (logged as a warning; a plain option change is logged as info)."""

    reason: str
    warn: bool = False


@dataclass
class Outcome:
    df: object = None  # pandas.DataFrame
    errors: list[str] = field(default_factory=list)
    plots: int = 0
    esd: dict | None = None  # esd key -> eigenvalues, with --save-esd


def esd_key(row: dict) -> str:
    """The esd.npz key of a table row: its longname, plus '#slice<k>' for --per-slice rows and
    '#merged' for an adapter's W + dW rows."""
    key = row["longname"] if "slice_id" not in row else f"{row['longname']}#slice{int(row['slice_id'])}"
    return key + "#merged" if row.get("matrix") == "merged" else key


def esd_path(csv: Path) -> Path:
    """esd.npz beside spectra.csv (spectra_base.csv -> esd_base.npz; <stem>.spectra.csv -> <stem>.esd.npz)."""
    return csv.with_name(csv.name.replace("spectra", "esd", 1).removesuffix(".csv") + ".npz")


def outputs_for(weights: Path, out: str | None) -> tuple[Path, Path]:
    """(spectra csv, summary) of a checkpoint: beside model.safetensors or in a checkpoint dir;
    <stem>.spectra.csv beside any other lone file; --out wherever it says."""
    if out:
        csv = Path(out)
        return csv, csv.with_name(csv.stem + "_summary.json")
    folder = weights if weights.is_dir() else weights.parent
    if weights.is_dir() or weights.name == WEIGHT_FILE:
        return folder / "spectra.csv", folder / "spectra_summary.json"
    stem = weights.name.split(".")[0]
    return folder / f"{stem}.spectra.csv", folder / f"{stem}.spectra_summary.json"


# ------------------------------------------------------------------ the record


def weights_identity(t: Target) -> dict:
    """{file name: {bytes, mtime_ns[, sha256]}} of the weights (no data read; sha256 only as
    run.json's ``files`` recorded it)."""
    root = t.weights if t.weights.is_dir() else t.weights.parent
    recorded: dict = {}
    if t.run_dir is not None:
        try:
            recorded = records.read_json(t.run_dir / "run.json").get("files") or {}
        except ValueError:
            recorded = {}
    ident = {}
    for f in checkpoint_files(t.weights):
        st = f.stat()
        entry = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        sha = (recorded.get(f.name) or {}).get("sha256") if isinstance(recorded, dict) and f.parent == t.run_dir else None
        if isinstance(sha, str):
            entry["sha256"] = sha
        ident[os.path.relpath(f, root)] = entry
    return ident


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return v


def summary_dict(df, meta: dict) -> dict:
    """WeightWatcher get_summary-style means (failed fits excluded) + what produced them."""
    from wdiv.spectral import metrics

    merged = df[df["matrix"] == "merged"] if "matrix" in df else None  # an adapter's W + dW rows
    means = metrics.summarize(df if merged is None else df[df["matrix"] != "merged"])
    out = {k: _jsonable(v) for k, v in dict(means).items()}
    if merged is not None and len(merged):
        out["merged"] = {k: _jsonable(v) for k, v in metrics.summarize(merged).items()}
    out["wdiv"] = meta
    return out


def _dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def sealed_text(summary: dict) -> str:
    """The summary's text with wdiv.record_sha256 = sha256 of the same text with it null."""
    summary["wdiv"]["record_sha256"] = None
    summary["wdiv"]["record_sha256"] = hashlib.sha256(_dumps(summary).encode()).hexdigest()
    return _dumps(summary)


def read_record(path: Path) -> tuple[dict | None, str | None]:
    """(the summary, None) or (None, why it cannot be used: missing, empty, not JSON, damaged)."""
    try:
        summary = records.read_json(path)
    except ValueError as exc:
        return None, str(exc).removeprefix(f"{path}: ")
    meta = summary.get("wdiv")
    if not isinstance(meta, dict):
        return None, "no wdiv record in it"
    sealed = meta.get("record_sha256")
    if sealed is not None:
        copy = json.loads(json.dumps(summary))
        copy["wdiv"]["record_sha256"] = None
        if hashlib.sha256(_dumps(copy).encode()).hexdigest() != sealed:
            return None, "hash mismatch (changed since it was written)"
    return summary, None


def _meta(t: Target, opts, df, files: dict, errors: list[str], save_esd: bool) -> dict:
    status = df["status"] if "status" in df else None
    return {"weights": str(t.weights), "options": opts.fingerprint(), "base": str(t.base) if t.base else None,
            "base_sha256": t.base_sha, "n_layers": int(len(df)),
            "n_failed": int((status == "failed").sum()) if status is not None else 0,
            "esd_saved": bool(save_esd), "weights_hashed": "weights_sha256" in df,
            "weights_files": weights_identity(t), "files": files, "errors": list(errors)}


def _same_weights(recorded, now: dict) -> bool:
    if not isinstance(recorded, dict) or set(recorded) != set(now):
        return False
    for name, cur in now.items():
        old = recorded[name] if isinstance(recorded[name], dict) else {}
        if old.get("bytes") != cur["bytes"] or old.get("mtime_ns") != cur["mtime_ns"]:
            return False
        if "sha256" in old and "sha256" in cur and old["sha256"] != cur["sha256"]:
            return False
    return True


def stale_reason(t: Target, opts, save_esd: bool = False) -> Stale | None:
    """None when t's outputs are up to date for this run, else why not (see the module doc)."""
    if not t.summary.exists() and not t.csv.exists():
        return Stale("not analysed yet")
    summary, why = read_record(t.summary)
    if summary is None:
        return Stale(f"{t.summary}: {why}", warn=True)
    meta = summary["wdiv"]
    files = meta.get("files")
    if not isinstance(files, dict) or not isinstance(meta.get("errors"), list):
        return Stale("made by an older wdiv (no record of its files)")
    if meta["errors"]:
        return Stale(f"{t.summary}: its last analysis had {len(meta['errors'])} error(s) ({meta['errors'][0]}): "
                     "retried", warn=True)
    if meta.get("options") != json.loads(json.dumps(opts.fingerprint())):
        return Stale("made with other options")
    if meta.get("base_sha256") != t.base_sha or (t.base is not None and not meta.get("weights_hashed")):
        return Stale("made against another reference")
    if not _same_weights(meta.get("weights_files"), weights_identity(t)):
        return Stale("the weights changed since")
    folder = t.summary.parent
    wanted = [t.csv] + ([t.base_csv] if t.base is not None else [])
    if save_esd:
        wanted += [esd_path(p) for p in wanted]
    for path in wanted:
        if os.path.relpath(path, folder) not in files:
            return Stale(f"{path}: not recorded (made without the option that asks for it)")
    for name, entry in files.items():
        path = folder / name
        reason = records.check(path, entry if isinstance(entry, dict) else None,
                               required_columns=(entry or {}).get("columns", ()) if isinstance(entry, dict) else ())
        if reason:
            return Stale(f"{path}: {reason}", warn=True)
    return None


def is_up_to_date(t: Target, opts, save_esd: bool = False) -> bool:
    return stale_reason(t, opts, save_esd) is None


# ------------------------------------------------------------------ writing


def write_esd(path: Path, esd: dict) -> None:
    """One compressed float64 array per row (keys: esd_key), written atomically; np.load reads it.
    Fixed member times, so that the same eigenvalues give the same bytes (np.savez stamps the clock)."""
    def save(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, values in esd.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=NPZ_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(values), allow_pickle=False)

    atomic_write(path, save)


def clear_leftovers(path: Path) -> None:
    """Remove the temporary files a killed writer (kill -9) left beside ``path``: wdiv.io names them
    ``.<name>.*.tmp``; only old ones, so that a writer running now keeps its own."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > LEFTOVER_AGE_S:
                tmp.unlink()
        except OSError:
            pass


def _describe_csv(path: Path, df) -> dict:
    return records.describe(path, count=len(df), columns=[str(c) for c in df.columns])


def write_outputs(t: Target, opts, df, base_df=None, esd: dict | None = None, base_esd: dict | None = None,
                  errors: list[str] = ()) -> None:
    """spectra_base.csv / esd files first, spectra.csv next, the summary (the record) last."""
    from wdiv.spectral.api import add_deltas

    folder = t.summary.parent
    files: dict[str, dict] = {}
    for path in (t.base_csv, esd_path(t.base_csv), esd_path(t.csv), t.csv, t.summary):
        clear_leftovers(path)

    def note(path: Path, entry: dict) -> None:
        files[os.path.relpath(path, folder)] = entry

    if base_df is not None:
        write_text(t.base_csv, base_df.to_csv(index=False))
        note(t.base_csv, _describe_csv(t.base_csv, base_df))
        if base_esd is not None:
            write_esd(esd_path(t.base_csv), base_esd)
            note(esd_path(t.base_csv), records.describe(esd_path(t.base_csv), count=len(base_esd)))
        df = add_deltas(df, base_df)
    if esd is not None:
        write_esd(esd_path(t.csv), esd)
        note(esd_path(t.csv), records.describe(esd_path(t.csv), count=len(esd)))
    text = df.to_csv(index=False)
    write_text(t.csv, text)
    note(t.csv, _describe_csv(t.csv, df))
    meta = _meta(t, opts, df, dict(sorted(files.items())), errors, esd is not None)
    write_text(t.summary, sealed_text(summary_dict(df, meta)))


def record_failure(t: Target, errors: list[str]) -> bool:
    """A checkpoint that could not be analysed this time: its record (if it has a good one) now
    says so, so the next run retries it; the outputs it lists stay as they were. False if no record."""
    summary, _ = read_record(t.summary)
    if summary is None:
        return False
    summary["wdiv"]["errors"] = list(errors)
    write_text(t.summary, sealed_text(summary))
    return True
