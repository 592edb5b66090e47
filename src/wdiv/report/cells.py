"""Who is compared with whom: study cells, categories, levels and baseline matching.

A cell is (model, data, recipe): runs of different cells are never seeds of each other. A
category is (arm, variant): synthetic replace / add / replace+filter / add+filter are separate
categories (an older run's ``filtered`` is add+filter). A run's
baseline is the baseline run of its cell with the same seed (and the same starting checkpoint,
unless each run starts from its own initial weights, as from-scratch runs do).
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd

from wdiv.variants import run_variant

log = logging.getLogger(__name__)

BASELINE = "baseline"
CELL_KEYS = ("model", "data", "recipe")
NO_RECIPE = "unrecorded"
# Starting points that are not one shared checkpoint: a run's own initial weights (from scratch),
# or a table brought in from WeightWatcher; baselines are then matched without the checkpoint hash.
UNSHARED_REFERENCES = ("initial", "weightwatcher")
ARM_ORDER = (BASELINE, "dropout", "weight_decay", "augment", "synthetic")


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def label(value) -> str:
    """A level, variant or key (number, name or None) as the text tables group and print by."""
    return "" if is_missing(value) else str(value)


def category_of(arm, variant) -> str:
    """'arm' or 'arm:variant' - the unit every table and test compares."""
    v = label(variant)
    return f"{arm}:{v}" if v else str(arm)


def cell_id(model, data, recipe) -> str:
    """Short printable name of a cell (recipe hash cut to 8 characters)."""
    return f"{label(model)}/{label(data)}/{label(recipe)[:8]}"


def cell_slug(cell: str) -> str:
    """A cell name usable as a folder name."""
    return re.sub(r"[^\w.-]+", "_", cell).strip("_")


def annotate(runs: pd.DataFrame) -> pd.DataFrame:
    """Add recipe (filled), cell, variant (text) and category columns to a runs table."""
    out = runs.copy()
    for key in ("model", "data"):
        out[key] = out[key].map(label) if key in out else ""
    out["recipe"] = out["recipe"].map(lambda r: label(r) or NO_RECIPE) if "recipe" in out else NO_RECIPE
    out["cell"] = [cell_id(*k) for k in out[list(CELL_KEYS)].itertuples(index=False)]
    out["variant"] = out["variant"].map(lambda v: run_variant(label(v))) if "variant" in out else ""
    out["category"] = [category_of(a, v) for a, v in zip(out["arm"], out["variant"])]
    return out


def _match_key(row) -> tuple:
    key = tuple(row[k] for k in CELL_KEYS) + (str(row["seed"]),)
    if row.get("pretrained_kind") in UNSHARED_REFERENCES:
        return key
    return key + (label(row.get("pretrained_sha256")),)


def match_baselines(runs: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """For each run, its baseline's run_id (NaN if none), and one note per ambiguous key.

    Several candidate baselines for one key are ambiguous: the first by run_id is used and said so.
    """
    keys = runs.apply(_match_key, axis=1)
    lookup: dict[tuple, list[str]] = {}
    for idx in runs[runs["arm"] == BASELINE].sort_values("run_id").index:
        lookup.setdefault(keys[idx], []).append(runs.at[idx, "run_id"])
    notes = []
    for key, ids in sorted(lookup.items(), key=lambda kv: kv[1][0]):
        if len(ids) > 1:
            where = ", ".join(f"{k}={v}" for k, v in zip((*CELL_KEYS, "seed"), key))
            notes.append(f"{len(ids)} baselines for {where}: {', '.join(ids)}; D uses {ids[0]}")
    matched = pd.Series([lookup.get(k, [np.nan])[0] for k in keys], index=runs.index, name="baseline_run_id", dtype=object)
    return matched, notes


def unmatched_reason(row) -> str:
    where = ", ".join(f"{k}={row[k]}" for k in ("model", "data", "recipe", "seed"))
    return f"no matching baseline ({where})"


def sort_key(category: pd.Series) -> pd.Series:
    """Arm order of the study (baseline, dropout, weight decay, augment, synthetic, others)."""
    arm = category.astype(str).str.split(":").str[0]
    return arm.map(lambda a: ARM_ORDER.index(a) if a in ARM_ORDER else len(ARM_ORDER))
