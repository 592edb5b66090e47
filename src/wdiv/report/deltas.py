"""Per-layer differences: dM = fine-tuned - pretrained, and D = dM - dM(baseline).

Layers pair by longname (and their occurrence, for per-slice rows) and shape. A layer whose
weights fine-tuning never changed (a frozen tower) is flagged `unchanged`: from the per-layer
weight hashes when both tables carry them, else from every spectral metric being identical.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPECTRAL_METRICS = (
    "alpha",
    "log_norm",
    "log_spectral_norm",
    "alpha_weighted",
    "log_alpha_norm",
    "stable_rank",
    "entropy",
    "num_spikes",
    "mp_softrank",
)
OPTIONAL_METRICS = ("alpha_farms",)
SHAPE_COLUMNS = ("N", "M", "rf")
LAYER_KEYS = ("longname", "slice_index")
HASH = "weights_sha256"
UNCHANGED = "unchanged by fine-tuning"


def metrics_present(*tables: pd.DataFrame) -> list[str]:
    """The spectral metrics every table carries (optional ones only when all have them)."""
    return [m for m in SPECTRAL_METRICS + OPTIONAL_METRICS if all(m in t.columns for t in tables)]


def layer_key(table: pd.DataFrame) -> pd.DataFrame:
    """longname plus its occurrence number, so per-slice rows (same longname) pair up in order."""
    out = table.reset_index(drop=True)
    out["slice_index"] = out.groupby("longname", sort=False).cumcount()
    out["layer_order"] = np.arange(len(out))
    return out


def _size(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality where NaN equals NaN (a failed fit before and after is unchanged)."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def layer_deltas(finetuned: pd.DataFrame, pretrained: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair layers by longname and shape; return (pre/ft/dM table with `unchanged`, excluded layers).

    A layer whose shape differs from the reference (a replaced head, say) has no meaningful
    difference, so it is excluded and reported rather than compared.
    """
    ft, pre = layer_key(finetuned), layer_key(pretrained)
    shape = [c for c in SHAPE_COLUMNS if c in ft.columns and c in pre.columns]
    hashed = HASH in ft.columns and HASH in pre.columns
    extra = [HASH] if hashed else []
    left = ft[["longname", "slice_index", "layer_order", *shape, *metrics, *extra]]
    right = pre[["longname", "slice_index", *shape, *metrics, *extra]]
    merged = left.merge(right, on=list(LAYER_KEYS), how="outer", suffixes=("_ft", "_pre"), indicator=True)

    excluded = []
    for row in merged.to_dict("records"):
        if row["_merge"] == "left_only":
            excluded.append((row["longname"], row["slice_index"], "absent from the pretrained reference"))
        elif row["_merge"] == "right_only":
            excluded.append((row["longname"], row["slice_index"], "absent from the fine-tuned spectra"))
        else:
            differs = [c for c in shape if row[f"{c}_ft"] != row[f"{c}_pre"]]
            if differs:
                was = "x".join(_size(row[f"{c}_pre"]) for c in differs)
                now = "x".join(_size(row[f"{c}_ft"]) for c in differs)
                excluded.append((row["longname"], row["slice_index"], f"shape {'/'.join(differs)} {was} -> {now}"))
    excluded_df = pd.DataFrame(excluded, columns=["longname", "slice_index", "reason"])

    both = merged[merged["_merge"] == "both"]
    keep = np.ones(len(both), dtype=bool)
    for c in shape:
        keep &= (both[f"{c}_ft"] == both[f"{c}_pre"]).to_numpy()
    both = both[keep].sort_values("layer_order")

    out = pd.DataFrame({
        "longname": both["longname"].to_numpy(),
        "slice_index": both["slice_index"].to_numpy(dtype=int),
        "layer_order": both["layer_order"].to_numpy(dtype=int),
    })
    for c in shape:
        out[c] = both[f"{c}_ft"].to_numpy()
    same = np.ones(len(both), dtype=bool)
    for m in metrics:
        pre_m = pd.to_numeric(both[f"{m}_pre"], errors="coerce").to_numpy(dtype=float)
        ft_m = pd.to_numeric(both[f"{m}_ft"], errors="coerce").to_numpy(dtype=float)
        out[f"{m}_pre"] = pre_m
        out[f"{m}_ft"] = ft_m
        out[f"dM_{m}"] = ft_m - pre_m
        same &= _same(pre_m, ft_m)
    known = np.zeros(len(both), dtype=bool)
    if hashed:
        h_ft, h_pre = both[f"{HASH}_ft"].astype(str).to_numpy(), both[f"{HASH}_pre"].astype(str).to_numpy()
        known = both[f"{HASH}_ft"].notna().to_numpy() & both[f"{HASH}_pre"].notna().to_numpy()
        same = np.where(known, h_ft == h_pre, same)  # the weights decide where both hashes exist
    out["unchanged"] = same.astype(bool)
    out["unchanged_by"] = np.where(known, "weights", "spectra")
    return out, excluded_df


def frozen_layers(layers: pd.DataFrame, group: list[str]) -> pd.Series:
    """True for rows of layers unchanged in every run of their group (a cell): those are left out.

    A layer unchanged in only some runs is kept: the others changed it, so its dM = 0 is data.
    """
    keys = [*group, *LAYER_KEYS]
    return layers.groupby(keys, sort=False, dropna=False)["unchanged"].transform("all").astype(bool)


def double_differences(layers: pd.DataFrame, baseline_of: pd.Series, metrics: list[str]) -> pd.DataFrame:
    """Add D_<metric> = dM - dM(baseline run, same layer); `baseline_of` maps run_id -> baseline run_id.

    Layers missing from the baseline get NaN.
    """
    dm_cols = [f"dM_{m}" for m in metrics]
    base = layers[["run_id", *LAYER_KEYS, *dm_cols]].rename(
        columns={"run_id": "baseline_run_id", **{c: f"{c}_base" for c in dm_cols}}
    )
    out = layers.copy()
    out["baseline_run_id"] = out["run_id"].map(baseline_of)
    out = out.merge(base, on=["baseline_run_id", *LAYER_KEYS], how="left")
    for m in metrics:
        out[f"D_{m}"] = out[f"dM_{m}"] - out[f"dM_{m}_base"]
    return out.drop(columns=[f"{c}_base" for c in dm_cols])


def run_means(layers: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per run: the layer means of M_pre, M_ft, dM and D (NaN layers, e.g. failed fits, skipped)."""
    cols = {}
    for m in metrics:
        cols[f"mean_{m}_pre"] = f"{m}_pre"
        cols[f"mean_{m}_ft"] = f"{m}_ft"
        cols[f"mean_dM_{m}"] = f"dM_{m}"
        if f"D_{m}" in layers.columns:
            cols[f"mean_D_{m}"] = f"D_{m}"
    grouped = layers.groupby("run_id", sort=False)
    out = grouped[list(cols.values())].mean()
    out.columns = list(cols.keys())
    out["n_layers"] = grouped.size()
    return out.reset_index()
