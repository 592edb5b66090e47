"""Labelled text files (CSV, TSV, JSONL) -> (texts, labels as strings).

Below both the text splits and the synthetic-text file generator, which read the same formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wdiv.errors import ConfigError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


def read_table(path, data_cfg, key: str) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of one file; ConfigError naming ``key`` or the column key."""
    import pandas as pd

    if path in (None, "", "???"):
        raise ConfigError(f"{key}: required for data=text_csv")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: file {path} does not exist")
    fmt = str(data_cfg.get("format", "auto"))
    fmt = FORMATS.get(path.suffix.lower()) if fmt == "auto" else fmt
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ConfigError(f"data.format: cannot tell the format of {path.name} (set data.format=csv, tsv or jsonl)")
    try:
        if fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
    except ValueError as err:
        raise ConfigError(f"{key}: {path} is not readable as {fmt} ({str(err).splitlines()[0]})") from None
    text_col, label_col = str(data_cfg.text_column), str(data_cfg.label_column)
    for col_key, col in (("data.text_column", text_col), ("data.label_column", label_col)):
        if col not in frame.columns:
            raise ConfigError(f"{col_key}: column {col!r} not in {path} (columns: {', '.join(map(str, frame.columns))})")
    if frame[label_col].isna().any():
        raise ConfigError(f"{key}: {path} has rows without a label in column {label_col!r}")
    texts = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in frame[text_col]]
    return texts, [label_text(v) for v in frame[label_col]]


def label_text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)
