"""FARMS: power-law alpha without aspect-ratio bias, computed as its authors compute it
(Hu et al. 2025, "Eigenspectrum Analysis of Neural Networks without Aspect Ratio Bias";
reference code: github.com/HUST-AI-HYZ/FARMS, read, not copied).

Why: the ESD of an N x M matrix depends on Q = N/M, so alphas of layers with different shapes are
not comparable. FARMS measures every layer on submatrices of one fixed aspect ratio.

The procedure, as in the reference (its ``fixed_sampling`` and its estimators):

* Linear (2-D) layers, W as stored (out x in): windows of ``m`` rows x ``floor(m Q)`` columns.
  Along a dimension of length d a window of size s starts at ``min(i * step, d - s)`` for
  ``i < count``, with ``step = max(1, (d - s) // (ops - 1))`` and
  ``count = min(ops, max(1, (d - s) // step + 1))`` (so the last start need not be flush with the
  end); ``ops = 1`` is one window at the start (the reference divides by zero there). The squared
  singular values of every window are pooled into one ESD, fitted once.
  A dimension shorter than its window: the LLM-pruning code first clamps ``m`` to
  ``min(out, in)`` (``clamp_window``); the image-classification code does not, and its slice
  ``W[d - s : d]`` then reads with Python's negative-index rule: rows ``max(0, 2d - s) .. d``
  (all of them when d <= s/2, only the last ``s - d`` when s/2 < d < s). Both are reproduced.
* Conv2d layers (``rf`` kernel slices, each rows x cols with rows >= cols): square blocks
  ``nr x nc`` (Q = 1: ``cols x cols``; Q > 1: ``cols // Q`` rows; Q < 1: ``cols // (1/Q)``
  columns), blocks ``i < rows // cols`` taken from the top of every slice; each block's
  eigenvalues are pooled across the rf slices, scaled by ``conv_norm`` (0.5: W * sqrt(0.5)) and
  fitted; alpha is the mean over the blocks. ``m`` and ``ops`` do not enter.
* No normalisation (no 1/N); every eigenvalue is kept (the reference's ``filter_zeros=False``).
* xmin rules: ``median`` (the reference's "median"/"xmin_mid": xmin = the eigenvalue at index
  ``int(n / 2)`` of all n pooled eigenvalues, zeros counted), ``peak`` (its "xmin_peak": a
  100-bin histogram of log10 eigenvalues; candidates from the start of the fullest bin x_p: the
  reference compares each eigenvalue with ``log10(0.95 x_p)`` below (sic; kept) and ``1.5 x_p``
  above; among the candidates the KS-minimising one, as its loop), and ``ks`` (WeightWatcher's
  WWFit through wdiv.spectral.powerlaw, threshold 1e-5 and small-sample rules included).

Where wdiv gives an answer the reference does not: a fit that would take log(0) or has no
candidate (the reference returns alpha 0 or NaN there) is a failed fit (NaN); conv kernels whose
kernel dimensions dominate (WeightWatcher's "channels first") are sliced as wdiv slices them
(rows >= cols; the reference ends with no block). Computation is float64 (the reference: float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .powerlaw import FitError, _ks_distances, _tail_log_sums, fit_power_law  # the exact KS scan, shared

XMIN_RULES = ("median", "peak", "ks")
_WINDOW_BATCH_ELEMS = 1 << 23  # float32 elements of windows handed to the eigensolver at once (32 MB)


@dataclass(frozen=True)
class FarmsSettings:
    """One complete FARMS procedure (a preset, possibly with some values overridden)."""

    window: int = 100  # m: window rows
    windows_per_dim: int = 9  # ops: window starts per dimension (ops x ops windows)
    aspect_ratio: float = 1.0  # Q: window columns = floor(m Q)
    xmin: str = "median"  # median | peak | ks
    clamp_window: bool = False  # m -> min(m, out, in) first (the LLM-pruning code)
    conv_norm: float = 0.5  # conv eigenvalues x conv_norm (W * sqrt(conv_norm)), as TempBalance
    bins: int = 100  # histogram bins of the peak rule
    xmin_pos: float = 2.0  # median rule: xmin index = int(n / xmin_pos)


# The settings of the reference's experiments (its bash_scripts/config and scripts/*.txt).
PRESETS = {
    # Image classification (TempBalance + FARMS, ResNet/VGG on CIFAR-100): m=100, Q=1, 9 x 9, median.
    "imagecls": FarmsSettings(window=100, windows_per_dim=9, aspect_ratio=1.0, xmin="median", clamp_window=False),
    # LLM pruning (AlphaPruning + FARMS, LLaMA 7B/13B): m=2000, Q=1, 15 x 15, peak xmin; m clamped.
    "llm-pruning": FarmsSettings(window=2000, windows_per_dim=15, aspect_ratio=1.0, xmin="peak", clamp_window=True),
}
DEFAULT_PRESET = "imagecls"


def gram_eigvals(stack: np.ndarray) -> np.ndarray:
    """Default eigensolver: (B, r, c) stack -> pooled eigenvalues of each window's smaller Gram matrix."""
    x = np.asarray(stack, dtype=np.float64)
    if x.shape[-2] < x.shape[-1]:
        x = np.swapaxes(x, -1, -2)
    evals = np.linalg.eigvalsh(np.swapaxes(x, -1, -2) @ x)
    return np.maximum(evals, 0.0).ravel()


# ------------------------------------------------------------------ windows


def window_starts(dim: int, size: int, ops: int) -> list[int]:
    """Start offsets of the reference's windows of `size` along a dimension of length `dim`
    (negative when size > dim: see `window_span`)."""
    if ops < 1:
        raise ValueError(f"windows_per_dim must be >= 1, got {ops}")
    if ops == 1:
        return [min(0, dim - size)]
    step = max(1, (dim - size) // (ops - 1))
    count = min(ops, max(1, (dim - size) // step + 1))
    return [min(i * step, dim - size) for i in range(count)]


def window_span(start: int, size: int, dim: int) -> tuple[int, int]:
    """[lo, hi) that the slice ``[start : start + size]`` covers on a dimension of length dim
    (a negative start counts from the end, as Python's slicing reads it, floored at 0)."""
    lo = start if start >= 0 else max(0, start + dim)
    return lo, min(dim, start + size)


def window_shape(shape: tuple[int, int], s: FarmsSettings) -> tuple[int, int]:
    """(rows, cols) sizes asked of a window of an out x in matrix (before any clipping)."""
    m = min(s.window, *shape) if s.clamp_window else s.window
    return m, int(m * s.aspect_ratio)


def linear_windows(W: np.ndarray, s: FarmsSettings) -> list[tuple[slice, slice]]:
    """The (row slice, column slice) of every window of a 2-D W (as stored: out x in)."""
    rows, cols = W.shape
    m, mc = window_shape((rows, cols), s)
    if m < 1 or mc < 1:
        raise ValueError(f"FARMS window {m}x{mc} is empty")
    rs = [slice(*window_span(r, m, rows)) for r in window_starts(rows, m, s.windows_per_dim)]
    cs = [slice(*window_span(c, mc, cols)) for c in window_starts(cols, mc, s.windows_per_dim)]
    return [(r, c) for r in rs for c in cs]


def _batched(W: np.ndarray, spans: list[tuple[slice, slice]]) -> Iterator[np.ndarray]:
    """Stacks of equal-shape windows, a bounded number of elements at a time."""
    if not spans:
        return
    h = spans[0][0].stop - spans[0][0].start
    w = spans[0][1].stop - spans[0][1].start
    per = max(1, _WINDOW_BATCH_ELEMS // max(1, h * w))
    for i in range(0, len(spans), per):
        yield np.stack([W[r, c] for r, c in spans[i:i + per]])


def linear_evals(W: np.ndarray, s: FarmsSettings, eigvals: Callable | None = None) -> np.ndarray:
    """Pooled, sorted eigenvalues (squared singular values) of all windows of a 2-D W."""
    w = np.asarray(W)
    if w.ndim != 2:
        raise ValueError(f"FARMS needs a 2-D matrix, got shape {w.shape}")
    solve = eigvals or gram_eigvals
    parts = [np.asarray(solve(stack), dtype=np.float64).ravel() for stack in _batched(w, linear_windows(w, s))]
    return np.sort(np.concatenate(parts))


def conv_block_shape(cols: int, q: float) -> tuple[int, int]:
    """(rows, cols) of one conv block of a slice with `cols` columns, as the reference sizes it."""
    if q > 1:
        nr, nc = cols // q, cols
    else:
        nr, nc = cols, cols // (1 / q)
    return max(1, int(nr)), max(1, int(nc))


def conv_block_evals(stack: np.ndarray, s: FarmsSettings, eigvals: Callable | None = None) -> list[np.ndarray]:
    """(rf, rows, cols) kernel slices (rows >= cols) -> per block, the pooled sorted eigenvalues
    of that block of every slice, times conv_norm."""
    x = np.asarray(stack)
    if x.ndim != 3:
        raise ValueError(f"FARMS conv blocks need an (rf, rows, cols) stack, got shape {x.shape}")
    if x.shape[1] < x.shape[2]:
        x = np.swapaxes(x, 1, 2)
    rows, cols = x.shape[1:]
    nr, nc = conv_block_shape(cols, s.aspect_ratio)
    solve = eigvals or gram_eigvals
    out = []
    for i in range(rows // cols):
        block = x[:, i * nr:(i + 1) * nr, :nc]
        out.append(np.sort(np.asarray(solve(block), dtype=np.float64).ravel()) * s.conv_norm)
    return out


# ------------------------------------------------------------------ fits


def _failed(why: str) -> dict:
    return {"alpha": math.nan, "xmin": math.nan, "D": math.nan, "status": "failed", "warning": why}


def _tail_fit(ev: np.ndarray, i: int) -> tuple[float, float]:
    """MLE alpha and KS D of the tail ev[i:] (sorted), the reference's formulas."""
    tail = ev[i:]
    n = float(len(tail))
    logt = np.log(tail)
    alpha = 1.0 + n / (float(np.sum(logt)) - n * logt[0])
    d = float(np.max(np.abs(1.0 - (tail / tail[0]) ** (1.0 - alpha) - np.arange(len(tail)) / n)))
    return alpha, d


def median_fit(ev: np.ndarray, xmin_pos: float = 2.0) -> dict:
    """The reference's "median" rule: xmin = ev[int(n / xmin_pos)] over all n eigenvalues."""
    ev = np.sort(np.asarray(ev, dtype=np.float64))
    if len(ev) < 2:
        raise FitError(f"{len(ev)} eigenvalue(s), need at least 2")
    i = int(len(ev) / xmin_pos)
    if not ev[i] > 0:
        raise FitError("the median eigenvalue is 0 (more than half the ESD is zero)")
    alpha, d = _tail_fit(ev, i)
    if not (math.isfinite(alpha) and alpha > 1):
        raise FitError(f"alpha={alpha}")
    return {"alpha": alpha, "xmin": float(ev[i]), "D": d}


def peak_fit(ev: np.ndarray, bins: int = 100) -> dict:
    """The reference's "xmin_peak" rule (see the module doc); positive eigenvalues only."""
    ev = np.sort(np.asarray(ev, dtype=np.float64))
    ev = ev[ev > 0]
    if len(ev) < 2:
        raise FitError(f"{len(ev)} positive eigenvalue(s), need at least 2")
    logs = np.log10(ev)
    lo, hi = float(logs[0]), float(logs[-1])
    if not hi > lo:
        raise FitError("all eigenvalues are equal")
    counts, edges = np.histogram(logs, bins=bins, range=(lo, hi))
    peak = 10.0 ** edges[int(np.argmax(counts))]
    below, above = math.log10(0.95 * peak), 1.5 * peak  # the reference's bounds, the lower one in log10
    # the reference's loop, vectorised: every candidate's alpha from suffix sums, and the first
    # KS-minimising candidate among those in the window with alpha > 1 (powerlaw's exact scan)
    n, s_log, _ = _tail_log_sums(ev)
    cand = ev[:-1]
    in_window = (cand >= below) & (np.cumsum(cand > above) == 0)  # skip below; stop at the first above
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / s_log
    valid = in_window & (alphas > 1.0)
    if not valid.any():
        raise FitError("no candidate xmin near the ESD peak gives alpha > 1")
    ds = _ks_distances(ev, alphas, valid)
    ds[~valid] = np.inf
    i = int(np.argmin(ds))
    return {"alpha": float(alphas[i]), "xmin": float(ev[i]), "D": float(ds[i])}


def fit_alpha(ev: np.ndarray, s: FarmsSettings) -> dict:
    """alpha, xmin, D, status, warning of one pooled FARMS ESD with the settings' xmin rule."""
    if s.xmin == "ks":
        fit = fit_power_law(ev, method="ks")
        return {k: fit[k] for k in ("alpha", "xmin", "D", "status", "warning")}
    try:
        fit = median_fit(ev, s.xmin_pos) if s.xmin == "median" else peak_fit(ev, s.bins)
    except FitError as exc:
        return _failed(f"FARMS fit failed: {exc}")
    return {**fit, "status": "success", "warning": ""}


def farms_fit(W: np.ndarray, s: FarmsSettings = PRESETS[DEFAULT_PRESET], *, conv: bool = False,
              eigvals: Callable | None = None) -> dict:
    """FARMS of one layer: a 2-D W (as stored) or, with conv=True, its (rf, rows, cols) kernel slices.

    Returns alpha (conv: the mean over blocks, NaN if any block's fit failed), xmin and D (conv:
    block means), num_evals (pooled eigenvalues fitted, all blocks together), n_blocks, status.
    """
    if s.xmin not in XMIN_RULES:
        raise ValueError(f"FARMS xmin must be one of {XMIN_RULES}, got {s.xmin!r}")
    if not conv:
        ev = linear_evals(W, s, eigvals)
        return {**fit_alpha(ev, s), "num_evals": len(ev), "n_blocks": 1}
    blocks = conv_block_evals(W, s, eigvals)
    if not blocks:
        return {**_failed("FARMS: no conv block (slices narrower than tall)"), "num_evals": 0, "n_blocks": 0}
    fits = [fit_alpha(ev, s) for ev in blocks]
    failed = [f for f in fits if f["status"] == "failed"]
    out = {k: float(np.mean([f[k] for f in fits])) for k in ("alpha", "xmin", "D")}
    out.update(status="failed" if failed else "success", warning=failed[0]["warning"] if failed else "",
               num_evals=int(sum(len(ev) for ev in blocks)), n_blocks=len(blocks))
    if failed:
        out["alpha"] = math.nan
    return out
