"""Records: what a writer says about the files it made, so a reader can tell good from damaged.

A stage that writes a file for another stage describes it in a record it writes *last*
(analyze: spectra_summary.json's ``wdiv.files``; train: run.json's ``files``). An entry holds
the file's sha256, its size and what it contains (CSV rows, safetensors tensors, npz arrays).
"Up to date" means the entry matches the file; a reader that finds a mismatch names the file
and the reason (``check``) and never uses it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path

from wdiv.io import sha256_file

# The reasons a reader reports, one vocabulary for every stage.
MISSING = "missing"
EMPTY = "empty"
NOT_CSV = "not a CSV"
NOT_JSON = "not JSON"
NOT_SAFETENSORS = "not a safetensors file"
NOT_NPZ = "not an npz archive"


def _kind(path: Path) -> str:
    name = path.name
    if name.endswith(".csv") or name.endswith(".tsv"):
        return "csv"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".json"):
        return "json"
    return "bytes"


def safetensors_tensor_count(path: Path) -> int:
    """Tensors in a safetensors file, from its header alone (no tensor is read)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 << 20:
            raise ValueError("implausible safetensors header size")
        header = json.loads(fh.read(n))
    return sum(1 for k in header if k != "__metadata__")


def _content_count(path: Path, kind: str) -> int | None:
    """Rows / tensors / arrays in the file, or raise ValueError if it is not of its kind."""
    if kind == "csv":
        import pandas as pd

        try:
            return int(len(pd.read_csv(path)))
        except Exception as exc:  # pandas raises several types for non-CSV bytes
            raise ValueError(NOT_CSV) from exc
    if kind == "safetensors":
        try:
            return safetensors_tensor_count(path)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise ValueError(NOT_SAFETENSORS) from exc
    if kind == "npz":
        try:
            with zipfile.ZipFile(path) as zf:
                return len(zf.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(NOT_NPZ) from exc
    if kind == "json":
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(NOT_JSON) from exc
    return None


COUNT_NAME = {"csv": "rows", "safetensors": "tensors", "npz": "arrays"}


def describe(path: str | Path, count: int | None = None, **extra) -> dict:
    """The record entry of a file just written: sha256, bytes and (for tables / tensor files)
    the row / tensor count; the writer passes ``count`` when it knows it, else it is read back."""
    path = Path(path)
    kind = _kind(path)
    entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if kind in COUNT_NAME:
        entry[COUNT_NAME[kind]] = int(count) if count is not None else _content_count(path, kind)
    entry.update(extra)
    return entry


def describe_bytes(name: str, data: bytes, count: int | None = None, **extra) -> dict:
    """The entry ``describe`` gives for a file called ``name`` holding ``data``, for a writer that
    builds its files in memory and records them before writing (CSV rows are read back from
    ``data`` when ``count`` is not given; other counted kinds need ``count``)."""
    kind = _kind(Path(name))
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if kind in COUNT_NAME:
        if count is None and kind != "csv":
            raise ValueError(f"{name}: give the {COUNT_NAME[kind]} count")
        if count is None:
            import pandas as pd

            count = len(pd.read_csv(io.BytesIO(data)))
        entry[COUNT_NAME[kind]] = int(count)
    entry.update(extra)
    return entry


def check(path: str | Path, entry: dict | None = None, required_columns=()) -> str | None:
    """Why ``path`` may not be used (one short reason), or None when it is good.

    With an entry the file must match it exactly; without one (outputs of an older wdiv, or of
    another tool) it must at least parse as its kind and hold the required columns."""
    path = Path(path)
    if not path.is_file():
        return MISSING
    size = path.stat().st_size
    if size == 0:
        return EMPTY
    kind = _kind(path)
    if entry is not None and entry.get("bytes") is not None and size < entry["bytes"]:
        return f"truncated ({size} of {entry['bytes']} bytes)"
    if entry is not None and entry.get("sha256") == sha256_file(path):
        return None
    try:
        count = _content_count(path, kind)
    except ValueError as exc:
        return str(exc)
    if entry is None and kind == "csv" and _last_row_cut(path):
        return "truncated (its last row is cut short)"
    if kind == "csv" and required_columns:
        import pandas as pd

        columns = set(pd.read_csv(path, nrows=0).columns)
        missing = [c for c in required_columns if c not in columns]
        if missing:
            return "missing columns: " + ", ".join(missing)
    if entry is None:
        return None
    name = COUNT_NAME.get(kind)
    if name and entry.get(name) is not None and count is not None and count < entry[name]:
        what = "layers" if kind == "csv" else name
        return f"fewer {what} than recorded ({count} of {entry[name]})"
    return "hash mismatch (changed since it was recorded)"


def _last_row_cut(path: Path) -> bool:
    """A CSV that ends mid-row: no final newline and fewer fields on its last line than in its
    header. CSV writers end every row with a newline, so without a record this is how a file cut
    short by a full disk or a killed copy shows (pandas would read the stub as a row of blanks)."""
    with open(path, "rb") as fh:
        header = fh.readline()
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - (1 << 16)))
        tail = fh.read()
    if tail.endswith(b"\n") or not header.endswith(b"\n"):
        return False  # whole rows (or a header only, which the reader names itself)
    last = tail.rsplit(b"\n", 1)[-1]
    return _field_count(last) < _field_count(header.rstrip(b"\r\n"))


def _field_count(line: bytes) -> int:
    return len(next(csv.reader([line.decode("utf-8", "replace")]), []))


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; ValueError naming the file when it is missing or damaged."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: {MISSING}") from exc
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: {EMPTY if path.is_file() and path.stat().st_size == 0 else NOT_JSON}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {NOT_JSON} object")
    return obj
