"""Report tables -> matplotlib Figures (Agg canvas, never shown; the caller saves or displays).

Every function takes the DataFrames wdiv.report writes (runs.csv, layers.csv, categories.csv)
for one study cell (filter on the `cell` column first), so a notebook can redraw any figure from
the CSV files alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import cm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wdiv.report.cells import BASELINE

ARM_ORDER = ("dropout", "weight_decay", "augment", "synthetic")
LEVEL_LABELS = {"dropout": "dropout p", "weight_decay": "weight decay", "synthetic": "synthetic fraction p"}


def level_axis(levels: pd.Series, level_index: pd.Series) -> tuple[pd.Series, str]:
    """Numeric levels when every level is a number, else the grid position (for drawing only)."""
    numeric = pd.to_numeric(levels, errors="coerce")
    if len(numeric) and numeric.notna().all():
        return numeric.astype(float), "level"
    return pd.to_numeric(level_index, errors="coerce").astype(float), "level_index"


def _figure(nrows: int, ncols: int, width: float = 4.0, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _arms(values) -> list[str]:
    present = [a for a in pd.unique(pd.Series(values)) if isinstance(a, str) and a != BASELINE]
    def order(a: str) -> tuple:
        arm = a.split(":")[0]
        return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), a)

    return sorted(present, key=order)


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _rank_off_grid(sub: pd.DataFrame) -> pd.DataFrame:
    """Levels off the arm's grid (level_index null: a soup's group, a level outside the grid) get
    ranks after the grid's, in text order, so that they are drawn rather than dropped by groupby."""
    off = sub["level_index"].isna()
    if not off.any():
        return sub
    names = sub.loc[off, "level"].map(_text)
    rank = {name: i for i, name in enumerate(sorted(names.unique()))}
    start = sub.loc[~off, "level_index"].max() + 1 if (~off).any() else 0
    return sub.assign(level_index=sub["level_index"].where(~off, start + names.map(rank)))


def per_layer_d(layers: pd.DataFrame, metric: str) -> Figure:
    """D of one metric along the network: one panel per category, one line per level (seed mean,
    band = min..max over seeds); colour runs light to dark with strength, line style marks the
    synthetic variant, and legends sit outside the panels so long grids stay readable."""
    col = f"D_{metric}"
    arms = _arms(layers["arm"])
    ncols = 2 if len(arms) > 1 else 1
    nrows = max(1, -(-len(arms) // ncols))
    fig, axes = _figure(nrows, ncols, width=6.5, height=3.4)
    order = layers.drop_duplicates("longname").sort_values("layer_order")["longname"].tolist()
    position = {name: i for i, name in enumerate(order)}
    styles = ["-", "--", ":", "-."]
    for ax, arm in zip(axes.flat, arms):
        sub = _rank_off_grid(layers[layers["arm"] == arm].assign(
            _x=lambda d: d["longname"].map(position), _variant=lambda d: d["variant"].map(_text)
        ))
        levels = sub.drop_duplicates("level_index").sort_values("level_index")["level_index"].tolist()
        shade = {lvl: cm.viridis(0.9 * i / max(len(levels) - 1, 1)) for i, lvl in enumerate(levels)}
        variants = sorted(sub["_variant"].unique())
        for (variant, idx, level), grp in sub.groupby(["_variant", "level_index", sub["level"].map(_text)], sort=True):
            per = grp.groupby("_x")[col].agg(["mean", "min", "max"]).sort_index()
            style = styles[variants.index(variant) % len(styles)]
            ax.plot(per.index, per["mean"], style, marker="o", ms=3, color=shade[idx], label=f"{variant} {level}".strip())
            ax.fill_between(per.index, per["min"], per["max"], color=shade[idx], alpha=0.15, lw=0)
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        ax.set_title(arm)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"D {metric}")
        if len(order) <= 40:
            ax.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
        ax.legend(fontsize=6, title="level", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncols=1 + len(variants) // 2)
    for ax in list(axes.flat)[len(arms):]:
        ax.set_visible(False)
    if not arms:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no non-baseline runs", ha="center", va="center")
    fig.suptitle(f"Per-layer double difference D of {metric} (band: range over seeds)")
    return fig


def metric_vs_level(categories: pd.DataFrame, metric: str, statistic: str = "D") -> Figure:
    """Seed mean of the layer-mean D (or dM) against strength, one panel per arm, 95 % CI band."""
    rows = categories[(categories["metric"] == metric) & (categories["level"].astype(str) != "all")
                      & (categories["variant"].map(_text) != "all")]
    arms = _arms(rows["category"])
    fig, axes = _figure(1, max(len(arms), 1))
    for ax, arm in zip(axes[0], arms):
        sub = rows[rows["category"] == arm]
        x, axis = level_axis(sub["level"], sub["level_index"])
        sub = sub.assign(_x=x.to_numpy(), _variant=sub["variant"].map(_text)).sort_values("_x")
        for variant, grp in sub.groupby("_variant", sort=True):
            mean, lo, hi = (grp[f"{k}_{statistic}"].to_numpy(dtype=float) for k in ("mean", "ci_low", "ci_high"))
            bars = ax.errorbar(grp["_x"], mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=variant or None)
            ax.fill_between(grp["_x"], lo, hi, color=bars.lines[0].get_color(), alpha=0.15, lw=0)
        if axis == "level" and (sub["_x"] > 0).all() and sub["_x"].max() / sub["_x"].min() >= 10:
            ax.set_xscale("log")
        if axis == "level_index":
            ticks = sub.drop_duplicates("_x")
            ax.set_xticks(ticks["_x"], ticks["level"].map(_text), rotation=45, ha="right", fontsize=7)
        ax.axhline(0.0, color="0.4", lw=0.8, ls="--")
        ax.set_title(arm)
        ax.set_xlabel(LEVEL_LABELS.get(arm.split(":")[0], arm) if axis == "level" else f"{arm} level")
        ax.set_ylabel(f"{'D' if statistic == 'D' else 'd'} {metric} (layer mean)")
        if sub["_variant"].str.len().gt(0).any():
            ax.legend(fontsize=7)
    if not arms:
        axes[0, 0].text(0.5, 0.5, "no non-baseline runs", ha="center", va="center")
    fig.suptitle(f"{metric}: {statistic} vs strength (mean over seeds, 95 % CI; none where n = 1)")
    return fig


def accuracy_vs_diversity(runs: pd.DataFrame, x: str = "diversity_weighted_vs") -> Figure:
    """Test and OOD accuracy against a diversity measure, one colour per arm."""
    ys = [c for c in ("test_acc", "ood_acc") if c in runs.columns]
    fig, axes = _figure(1, max(len(ys), 1))
    for ax, y in zip(axes[0], ys):
        for arm, grp in runs.groupby("arm", sort=True):
            ax.scatter(grp[x], grp[y], label=arm, s=18)
        ax.set_xlabel(x.removeprefix("diversity_").replace("_", " "))
        ax.set_ylabel(y.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy vs training-set diversity (one point per run)")
    return fig


def esd_overlay(esds: Mapping[str, np.ndarray], title: str = "", bins: int | None = None) -> Figure:
    """Log-log histograms (densities on log-spaced bins) of several ESDs of one layer.

    Default bins: about 2 sqrt(n) for the smallest ESD, between 10 and 80, so small layers do not
    dissolve into single-count bars."""
    fig, axes = _figure(1, 1, width=5.5, height=4.0)
    ax = axes[0, 0]
    positive = [np.asarray(ev, dtype=float)[np.asarray(ev) > 0] for ev in esds.values()]
    lo = min(ev.min() for ev in positive if ev.size)
    hi = max(ev.max() for ev in positive if ev.size)
    if bins is None:
        bins = int(np.clip(2 * np.sqrt(min(ev.size for ev in positive)), 10, 80))
    edges = np.logspace(np.log10(lo), np.log10(hi), bins + 1)
    for (label, _), ev in zip(esds.items(), positive):
        ax.hist(ev, bins=edges, density=True, histtype="step", lw=1.5, label=f"{label} (n={ev.size})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue of W^T W")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def trajectory_d(bands: pd.DataFrame, metric: str) -> Figure:
    """Mean D of one metric against the training epoch, one line per category, with the 95 %
    interval over seeds as a band (trajectory_bands.csv of one cell)."""
    sub = bands[(bands["metric"] == metric) & (bands["category"] != BASELINE)]
    fig, axes = _figure(1, 1, width=6.0, height=3.6)
    ax = axes[0, 0]
    for category in _arms(sub["category"]):
        grp = sub[sub["category"] == category].sort_values("epoch")
        line = ax.plot(grp["epoch"], grp["mean_D"], marker="o", ms=3, label=category)[0]
        if grp["ci_low"].notna().any():
            ax.fill_between(grp["epoch"], grp["ci_low"], grp["ci_high"], color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("epoch (0 = starting checkpoint)")
    ax.set_ylabel(f"mean D({metric})")
    if sub["category"].nunique():
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    fig.suptitle(f"D({metric}) during training (band: 95 % CI over seeds)")
    return fig
