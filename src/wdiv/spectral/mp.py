"""Marchenko-Pastur (MP) fit of an ESD: sigma_mp, bulk edges, spikes, MP soft rank.

WeightWatcher 0.7.7's ``mp_fit`` definition, step by step:

1. rescale the ESD to mean 1: ``to_plot = Wscale^2 * evals`` with ``Wscale^2 = n / sum(evals)``;
2. kernel density estimate of it (linear/triangular kernel, bandwidth 0.1) on 1000 points of
   ``[0, max + 0.5]``; points with density < 0.01 are dropped from the residual;
3. sigma minimises the squared residual between the MP density (Q = N/M) and the KDE over the
   grid ``sigma = (0.05 .. 2.0 step 0.01) * s0`` (s0 = the sigma that puts the MP edge on
   lambda_max), a sigma whose MP support misses the KDE peak or overshoots it costs 1e6 per
   point; the best grid point is polished with Nelder-Mead (scipy ``brute``'s default finish).
   For Q == 1 the quarter-circle law is fitted to the singular values instead;
4. ``bulk_max = (sigma (1 + 1/sqrt(Q)))^2``, ``bulk_min = (sigma (1 - 1/sqrt(Q)))^2``; spikes are
   eigenvalues above ``bulk_max + sqrt(TW)``, ``TW = bulk_max^(2/3) M^(-2/3) / sqrt(Q)`` (a
   Tracy-Widom margin); ``mp_softrank = bulk_max / lambda_max``; ``bulk_max``/``bulk_min`` are
   reported on the original scale, ``sigma_mp`` on the rescaled one (as WeightWatcher does).

Why it is fast: WeightWatcher refits scikit-learn's KernelDensity for each of ~200 grid values
and every Nelder-Mead step, although the KDE does not depend on sigma. Here the KDE is computed
once, exactly (only eigenvalue/grid pairs closer than the bandwidth are visited), the whole
sigma grid is one broadcast restricted to the sigmas and points that can matter (see
``_Residual``), and the polish runs scipy's own ``fmin`` on the same objective, so the result
is WeightWatcher's to rounding.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

KDE_BANDWIDTH = 0.1
KDE_POINTS = 1000
KDE_THRESH = 0.01  # WeightWatcher drops KDE points below this density from the residual
PENALTY = 1000.0  # residual per point of a sigma whose MP support misses the KDE peak


def kde_linear(values: np.ndarray, x: np.ndarray, bw: float = KDE_BANDWIDTH) -> np.ndarray:
    """Triangular-kernel density of ``values`` at points ``x`` (== sklearn KernelDensity('linear')).

    Only pairs closer than ``bw`` contribute, so the cost is O(n + pairs), not O(n * len(x)).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    lo = np.searchsorted(v, x - bw, side="right")
    hi = np.searchsorted(v, x + bw, side="left")
    counts = hi - lo
    total = int(counts.sum())
    dens = np.zeros(len(x))
    if total == 0:
        return dens
    point = np.repeat(np.arange(len(x)), counts)
    starts = np.cumsum(counts) - counts
    member = lo[point] + (np.arange(total) - starts[point])
    w = 1.0 - np.abs(x[point] - v[member]) / bw
    np.maximum(w, 0.0, out=w)
    dens = np.bincount(point, weights=w, minlength=len(x))
    return dens / (len(v) * bw)


def mp_edges(sigma, Q: float):
    """MP bulk edges (lambda_minus, lambda_plus) for variance scale sigma and aspect ratio Q."""
    return (np.power(sigma * (1 - np.sqrt(1 / Q)), 2), np.power(sigma * (1 + np.sqrt(1 / Q)), 2))


def mp_density(x: np.ndarray, sigma, Q: float) -> np.ndarray:
    """MP density at x (0 outside the bulk); sigma may be a column vector (grid x points)."""
    a, b = mp_edges(sigma, Q)
    with np.errstate(all="ignore"):
        val = (1 / (2 * np.pi * sigma * sigma * x * (1 / Q))) * np.sqrt((b - x) * (x - a))
    return np.nan_to_num(val)


class _Residual:
    """WeightWatcher's resid_mp objective with the KDE computed once: sigma(s) -> sum of squares.

    Same value as WeightWatcher's to rounding, computed cheaply: for Q == 1 the quarter-circle
    density is c(sigma) g(x), so the residual is a quadratic in c with three precomputed sums;
    for Q != 1 only sigmas whose MP support passes WeightWatcher's checks are evaluated, and only
    on the KDE points inside the widest of their supports (outside it the residual is y^2).
    """

    def __init__(self, to_fit: np.ndarray, Q: float, bw: float):
        xde = np.linspace(0, np.max(to_fit) + 0.5, KDE_POINTS)
        yde = kde_linear(to_fit, xde, bw)
        good = yde > KDE_THRESH
        if not good.any():
            raise ValueError("the ESD's kernel density never exceeds 0.01")
        self.x, self.y, self.Q = xde[good], yde[good], Q
        self.x_peak = self.x[np.argmax(self.y)]
        self.x_top = np.max(self.x)
        self.penalty = np.sum(np.full(len(self.y), PENALTY) ** 2)
        self.y2 = self.y * self.y
        if Q == 1:
            g = np.sqrt(np.maximum(4 - self.x ** 2, 0.0))
            self.qc_sums = (np.sum(g * g), np.sum(g * self.y), np.sum(self.y2))
        else:
            with np.errstate(divide="ignore"):
                self.x_inv = np.where(self.x > 0, 1.0 / self.x, 0.0)

    def grid(self, sigmas: np.ndarray) -> np.ndarray:
        s = np.asarray(sigmas, dtype=np.float64)
        if self.Q == 1:
            gg, gy, yy = self.qc_sums
            c = 1 / (np.pi * s * s)
            return c * c * gg - 2 * c * gy + yy
        a, b = mp_edges(s, self.Q)
        ok = ~((b < self.x_peak) | (b > self.x_top) | (a > self.x_peak))
        out = np.full(len(s), self.penalty)
        if ok.any():
            a, b, s = a[ok], b[ok], s[ok]
            lo = np.searchsorted(self.x, np.min(a), side="left")
            hi = np.searchsorted(self.x, np.max(b), side="right")
            x = self.x[lo:hi]
            shape = (b[:, None] - x) * (x - a[:, None])
            np.maximum(shape, 0.0, out=shape)
            np.sqrt(shape, out=shape)
            shape *= (1 / (2 * np.pi * s * s * (1 / self.Q)))[:, None] * self.x_inv[lo:hi]
            shape -= self.y[lo:hi]
            outside = np.sum(self.y2[:lo]) + np.sum(self.y2[hi:])
            out[ok] = np.sum(shape * shape, axis=1) + outside
        return out

    def __call__(self, p) -> float:
        """One sigma (what Nelder-Mead asks for): the same sums without the grid machinery."""
        s = float(np.asarray(p).ravel()[0])
        if self.Q == 1:
            gg, gy, yy = self.qc_sums
            c = 1 / (np.pi * s * s)
            return float(c * c * gg - 2 * c * gy + yy)
        a = (s * (1 - math.sqrt(1 / self.Q))) ** 2
        b = (s * (1 + math.sqrt(1 / self.Q))) ** 2
        if b < self.x_peak or b > self.x_top or a > self.x_peak:
            return float(self.penalty)
        shape = (b - self.x) * (self.x - a)
        np.maximum(shape, 0.0, out=shape)
        np.sqrt(shape, out=shape)
        shape *= (1 / (2 * np.pi * s * s * (1 / self.Q))) * self.x_inv
        shape -= self.y
        return float(np.dot(shape, shape))


def fit_sigma(to_plot: np.ndarray, Q: float, bw: float = KDE_BANDWIDTH) -> float:
    """WeightWatcher's fit_density_with_range: grid search over sigma, Nelder-Mead polish."""
    s0 = math.sqrt(np.max(to_plot) / np.square(1.0 + 1.0 / np.sqrt(Q)))
    grid = np.mgrid[slice(0.05 * s0, 2.0 * s0, 0.01 * s0)]
    resid = _Residual(np.sqrt(to_plot) if Q == 1 else to_plot, Q, bw)
    start = grid[int(np.argmin(resid.grid(grid)))]
    xopt = optimize.fmin(resid, start, full_output=True, disp=False)[0]
    return float(xopt[0])


def mp_fit(evals, *, N: int, M: int, bw: float = KDE_BANDWIDTH) -> dict:
    """MP fit of one ESD (all eigenvalues, zeros included, any order).

    N >= M are the per-matrix dimensions (per slice for pooled conv layers: the pooled ESD has
    rf*M values but the Tracy-Widom margin uses M). Returns num_spikes, sigma_mp, mp_softrank,
    bulk_min, bulk_max, W_scale; raises ValueError when no fit is possible.
    """
    evals = np.asarray(evals, dtype=np.float64).ravel()
    total = float(np.sum(evals))
    if len(evals) == 0 or not total > 0 or not np.isfinite(total):
        raise ValueError("MP fit needs a nonzero, finite ESD")
    Q = N / M
    w_scale = np.sqrt(len(evals)) / np.sqrt(total)
    scale = w_scale * w_scale
    to_plot = scale * evals
    lambda_max = np.max(to_plot)
    sigma = fit_sigma(to_plot, Q, bw)
    bulk_min, bulk_max = mp_edges(sigma, Q)
    tw = 1 / np.sqrt(Q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3)
    num_spikes = int(np.count_nonzero(to_plot > bulk_max + np.sqrt(tw)))
    return {"num_spikes": num_spikes, "sigma_mp": sigma, "mp_softrank": float(bulk_max / lambda_max),
            "bulk_min": float(bulk_min / scale), "bulk_max": float(bulk_max / scale), "W_scale": float(w_scale)}
