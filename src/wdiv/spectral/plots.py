"""One layer's ESD as a figure: log-log histogram, fitted power law, MP bulk, randomised ESD."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _num(row: dict, key: str) -> float | None:
    v = row.get(key)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def mp_density(x: np.ndarray, lam_minus: float, lam_plus: float) -> np.ndarray:
    """Marchenko-Pastur density shape between its edges, normalised to integrate to 1."""
    inside = (x > lam_minus) & (x < lam_plus)
    d = np.zeros_like(x, dtype=float)
    d[inside] = np.sqrt((lam_plus - x[inside]) * (x[inside] - lam_minus)) / x[inside]
    grid = np.linspace(lam_minus, lam_plus, 2001)[1:-1]
    area = np.trapezoid(np.sqrt((lam_plus - grid) * (grid - lam_minus)) / grid, grid)
    return d / area if area > 0 else d


def esd_figure(evals: np.ndarray, row: dict, rand_evals: np.ndarray | None = None) -> Figure:
    """Log-log ESD density of one layer with its fits; `row` is the layer's spectra.csv row."""
    ev = np.asarray(evals, dtype=float)
    ev = ev[ev > 0]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
    if ev.size == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", transform=ax.transAxes)
        return fig
    lo, hi = ev.min(), ev.max()
    if rand_evals is not None and np.any(np.asarray(rand_evals) > 0):
        r = np.asarray(rand_evals, dtype=float)
        r = r[r > 0]
        lo, hi = min(lo, r.min()), max(hi, r.max())
    bins = np.logspace(np.log10(lo), np.log10(hi) + 1e-9, 60)
    ax.hist(ev, bins=bins, density=True, color="royalblue", alpha=0.6, label="ESD")
    if rand_evals is not None:
        ax.hist(r, bins=bins, density=True, histtype="step", color="darkorchid", label="randomised W")
    alpha, xmin = _num(row, "alpha"), _num(row, "xmin")
    if alpha is not None and xmin is not None:
        frac = np.mean(ev >= xmin)
        x = np.logspace(np.log10(xmin), np.log10(ev.max()), 100)
        ax.plot(x, frac * (alpha - 1) / xmin * (x / xmin) ** (-alpha), "r-", lw=1.5,
                label=f"power law alpha={alpha:.2f}")
        ax.axvline(xmin, color="r", ls=":", lw=1)
    bulk_min, bulk_max = _num(row, "bulk_min"), _num(row, "bulk_max")
    if bulk_max is not None:
        lam_minus = bulk_min or 0.0
        x = np.logspace(np.log10(max(lam_minus, lo)), np.log10(bulk_max), 200)
        frac = np.mean(ev <= bulk_max)
        ax.plot(x, frac * mp_density(x, lam_minus, bulk_max), color="orange", lw=1.5, label="MP fit")
        ax.axvline(bulk_max, color="orange", ls="--", lw=1, label="bulk edge")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue of W^T W")
    ax.set_ylabel("density")
    ax.set_title(f"{row.get('layer_id', '')} {row.get('longname', '')}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def save_esd_figure(path, evals, row, rand_evals=None) -> None:
    fig = esd_figure(evals, row, rand_evals)
    fig.savefig(path)
    plt.close(fig)
