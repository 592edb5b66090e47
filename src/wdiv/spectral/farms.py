"""FARMS: power-law alpha without aspect-ratio bias (Hu et al. 2025, "Eigenspectrum Analysis of
Neural Networks without Aspect Ratio Bias").

Why: the ESD of an N x M matrix depends on Q = N/M (the MP bulk alone changes shape with Q), so
alphas of layers with different shapes are not comparable, and a 10 x 512 head is all finite-size
effect. FARMS measures every layer on submatrices of one fixed aspect ratio: sliding windows over
W give equally shaped submatrices, their ESDs are pooled (the "average ESD") and alpha is fitted
on the pool.

Windows here: submatrices of ``round(window * aspect_ratio)`` rows x ``window`` columns (rows
along W's longer side; default aspect ratio 1, i.e. square, and the largest window that fits), at
``windows_per_dim`` evenly spaced offsets along each dimension (default: just enough windows to
cover every entry, so neighbouring windows overlap only when the sizes do not divide). The
paper's reference implementation was not available to check its exact window counts; the
options expose them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .powerlaw import fit_power_law


def gram_eigvals(stack: np.ndarray) -> np.ndarray:
    """Default eigensolver: (B, r, c) stack with r >= c -> pooled sorted eigenvalues of each X^T X."""
    x = np.asarray(stack, dtype=np.float64)
    evals = np.linalg.eigvalsh(np.swapaxes(x, -1, -2) @ x)
    return np.sort(np.maximum(evals, 0.0).ravel())


def window_offsets(dim: int, size: int, count: int | None) -> np.ndarray:
    """Evenly spaced start offsets of `count` windows of `size` along `dim` (first and last flush)."""
    if count is None:
        count = math.ceil(dim / size)
    if count < 1:
        raise ValueError(f"windows_per_dim must be >= 1, got {count}")
    return np.unique(np.round(np.linspace(0, dim - size, count)).astype(int))


def submatrices(W: np.ndarray, *, window: int | None = None, windows_per_dim: int | None = None,
                aspect_ratio: float = 1.0) -> np.ndarray:
    """(B, rows, cols) stack of fixed-aspect-ratio windows of W (oriented so rows >= cols)."""
    w = np.asarray(W)
    if w.ndim != 2:
        raise ValueError(f"FARMS needs a 2-D matrix, got shape {w.shape}")
    if w.shape[0] < w.shape[1]:
        w = w.T
    n, m = w.shape
    if aspect_ratio < 1:
        raise ValueError(f"aspect_ratio (rows/cols of a window) must be >= 1, got {aspect_ratio}")
    cols = min(m, int(n // aspect_ratio)) if window is None else int(window)
    rows = int(round(cols * aspect_ratio))
    if cols < 1 or cols > m or rows > n:
        raise ValueError(f"FARMS window {rows}x{cols} does not fit a {n}x{m} matrix")
    r0 = window_offsets(n, rows, windows_per_dim)
    c0 = window_offsets(m, cols, windows_per_dim)
    return np.stack([w[i:i + rows, j:j + cols] for i in r0 for j in c0])


def farms_evals(W: np.ndarray, *, window: int | None = None, windows_per_dim: int | None = None,
                aspect_ratio: float = 1.0, eigvals: Callable | None = None, seed=None) -> np.ndarray:
    """Pooled ESD (sorted eigenvalues of X^T X, no 1/N) of W's fixed-aspect-ratio submatrices.

    eigvals: callable taking the (B, rows, cols) stack and returning its pooled eigenvalues
    (default: NumPy float64 Gram eigvalsh; the engine passes its batched/CUDA solver).
    seed: unused (windows are deterministic); accepted so callers can pass their per-layer seed.
    """
    stack = submatrices(W, window=window, windows_per_dim=windows_per_dim, aspect_ratio=aspect_ratio)
    evals = (eigvals or gram_eigvals)(stack)
    return np.sort(np.asarray(evals, dtype=np.float64).ravel())


def farms_fit(W: np.ndarray, *, method: str = "ks", window: int | None = None,
              windows_per_dim: int | None = None, aspect_ratio: float = 1.0,
              eigvals: Callable | None = None) -> dict:
    """Power-law fit (wdiv.spectral.powerlaw) of the FARMS pooled ESD; ``["alpha"]`` is alpha_farms."""
    ev = farms_evals(W, window=window, windows_per_dim=windows_per_dim, aspect_ratio=aspect_ratio,
                     eigvals=eigvals)
    return fit_power_law(ev, method=method)
