"""Eigenvalues -> power-law tail exponent alpha (WeightWatcher 0.7.7's definitions, vectorised).

``fit_power_law(evals, method=...)`` with three estimators:

* ``"ks"`` (default, WeightWatcher 0.7's own ``WWFit``): eigenvalues <= 1e-5 are dropped; every
  remaining eigenvalue but the largest is a candidate xmin; for each candidate the continuous
  maximum-likelihood exponent ``alpha = 1 + n / sum(log(x_j / xmin))`` over the n tail values and
  the Kolmogorov-Smirnov distance ``D = max |1 - (x_j/xmin)^(1-alpha) - k/n|`` (k = 0..n-1, the
  empirical CDF *before* each jump, as WeightWatcher writes it); xmin = first argmin of D.
  With fewer than 20 values WeightWatcher switches to a small-sample rule (bias-corrected
  ``alpha = 1 + (n-1)/sum(...)``, only tails of at least 8 values; xmin still by argmin D,
  since WeightWatcher's caller overrides the rule's own objective); reproduced too.
  WeightWatcher loops over candidates in Python; here alpha for all candidates comes from suffix
  sums of logs and D from cache-sized broadcasts (a 768-eigenvalue fit costs about a
  millisecond); above 128 values a branch-and-bound on cheap lower bounds of D finds the same
  argmin without computing every D (a 4608-value pooled conv ESD: tens of ms, not seconds).
* ``"hill"``: TempBalance's Hill estimator, xmin fixed at the median nonzero eigenvalue.
* ``"powerlaw"``: the powerlaw package's ``Fit`` (what WeightWatcher ran before 0.7), for
  cross-checks; slow.

Failed fits return ``status="failed"``, NaN alpha and a reason in ``warning``: never -1 and
never an "over-trained" label. Deliberate differences from WeightWatcher 0.7.7:

* a float ``xmax`` cuts the fitted data at the eigenvalue nearest to it (WeightWatcher's
  ``fit_powerlaw`` silently ignores float values; ints drop that many top eigenvalues, as there);
* degenerate fits that WeightWatcher reports as successes (no positive eigenvalue above the
  threshold but one, a tail of identical values giving alpha = 1 or inf) are ``failed``.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np

log = logging.getLogger(__name__)

EVALS_THRESH = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues <= this are not fitted
SMALL_N_CUTOFF = 20  # below this many fitted values WeightWatcher uses its small-sample rule
SMALL_N_MIN_TAIL = 8  # smallest tail the small-sample rule considers
OVER_TRAINED_THRESH = 2.0
UNDER_TRAINED_THRESH = 6.0
DEFAULT_MAX_FINGERS = 10
DEFAULT_FINGER_THRESH = 1.0
METHODS = ("ks", "hill", "powerlaw")
_CHUNK_ELEMENTS = 1 << 18  # candidates x values per broadcast block (cache-sized)
_FULL_SCAN_MAX = 128  # above this many values the KS scan uses branch-and-bound
_BOUND_SAMPLES = 16  # tail points sampled per candidate for the lower bounds (16: fastest measured)


class FitError(ValueError):
    """A power-law fit that cannot be made (too few values, degenerate tail)."""


def training_warning(alpha: float) -> str:
    """WeightWatcher's label for a successful fit: over-trained (alpha<2), under-trained (>6)."""
    if alpha < OVER_TRAINED_THRESH:
        return "over-trained"
    if alpha > UNDER_TRAINED_THRESH:
        return "under-trained"
    return ""


def failed_fit(reason: str) -> dict:
    """The row of a fit that could not be made: NaN numbers, status failed, the reason."""
    log.debug("power-law fit failed: %s", reason)
    nan = math.nan
    return {"alpha": nan, "xmin": nan, "xmax": nan, "D": nan, "sigma": nan,
            "num_pl_spikes": nan, "status": "failed", "warning": f"power-law fit failed: {reason}"}


def fit_power_law(evals, *, method: str = "ks", xmax=None, fix_fingers: str | None = None,
                  thresh: float = EVALS_THRESH, max_fingers: int = DEFAULT_MAX_FINGERS,
                  finger_thresh: float = DEFAULT_FINGER_THRESH) -> dict:
    """Fit the ESD tail of ``evals`` (any order) with a power law.

    Returns dict(alpha, xmin, xmax, D, sigma, num_pl_spikes, status, warning), plus
    num_fingers and raw_alpha (the unclipped alpha) with ``fix_fingers="clip_xmax"``.
    ``xmax``: None (no cut), "force" (WeightWatcher's: same as None for the ks fit), an int k
    (drop the k largest eigenvalues, as WeightWatcher), or a float (cut at the nearest eigenvalue).
    """
    if method not in METHODS:
        raise ValueError(f"fit method must be one of {METHODS}, got {method!r}")
    if fix_fingers not in (None, False, "clip_xmax"):
        raise ValueError(f"fix_fingers must be None or 'clip_xmax', got {fix_fingers!r}")
    evals = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    if not np.all(np.isfinite(evals)):
        return failed_fit("non-finite eigenvalues")
    fit_xmax = None
    if isinstance(xmax, (int, np.integer)) and not isinstance(xmax, bool):
        k = abs(int(xmax))
        if k > len(evals) / 2:
            return failed_fit(f"xmax={xmax} clips more than half of the {len(evals)} eigenvalues")
        evals = evals[:len(evals) - k]
    elif xmax == "force":
        fit_xmax = None if method == "ks" else float(evals[-1]) if len(evals) else None
    elif xmax is not None:
        fit_xmax = float(xmax)
    nz = evals[evals > thresh]
    try:
        if fix_fingers == "clip_xmax":
            res = _fit_clipped(nz, method, fit_xmax, max_fingers, finger_thresh)
        else:
            res = _fit(nz, method, fit_xmax)
    except FitError as exc:
        return failed_fit(str(exc))
    if not math.isfinite(res["alpha"]):
        return failed_fit(f"alpha={res['alpha']}")
    res["num_pl_spikes"] = int(np.count_nonzero(evals >= res["xmin"]))
    res["status"] = "success"
    res["warning"] = training_warning(res["alpha"])
    return res


def _fit(nz: np.ndarray, method: str, xmax: float | None) -> dict:
    if method == "ks":
        return ks_fit(nz, xmax=xmax)
    if method == "hill":
        return hill_fit(nz if xmax is None else nz[:_nearest_index(nz, xmax) + 1])
    return powerlaw_package_fit(nz, xmax=xmax)


def _fit_clipped(nz: np.ndarray, method: str, xmax: float | None, max_fingers: int,
                 finger_thresh: float) -> dict:
    """WeightWatcher's fix_fingers='clip_xmax': drop the top 2, 3, ... eigenvalues until alpha
    falls by more than finger_thresh (a "finger" of finite-size outliers), stopping at alpha <= 2.

    As in WeightWatcher: max_fingers is reset to 10 unless it is at least half the ESD, clipping a
    single eigenvalue is never tried, and num_fingers = (values clipped) - 1.
    """
    if max_fingers is None or max_fingers < 0 or max_fingers < len(nz) / 2:
        max_fingers = DEFAULT_MAX_FINGERS
    first = _fit(nz, method, xmax)
    best, num_fingers = first, 0
    for idx in range(2, max_fingers):
        if xmax is not None:
            xmax = float(nz[-idx])
        try:
            fit = _fit(nz[:-idx], method, xmax)
        except FitError:
            break
        if fit["alpha"] + finger_thresh < first["alpha"]:
            best, num_fingers = fit, idx - 1
            break
        if fit["alpha"] <= OVER_TRAINED_THRESH:
            break
    return {**best, "num_fingers": num_fingers, "raw_alpha": first["alpha"]}


def _nearest_index(data: np.ndarray, x: float) -> int:
    return int(np.argmin(np.abs(data - x)))


def ks_fit(data: np.ndarray, *, xmax: float | None = None) -> dict:
    """WeightWatcher 0.7.7's WWFit on sorted positive ``data``, vectorised over candidates."""
    data = np.asarray(data, dtype=np.float64)
    if len(data) < 2:
        raise FitError(f"{len(data)} eigenvalue(s) above the threshold, need at least 2")
    i_max = len(data) - 1 if xmax is None else _nearest_index(data, xmax)
    data = data[:i_max + 1]
    n_data = len(data)
    if n_data < 2:
        raise FitError("xmax leaves fewer than 2 eigenvalues")
    alphas, ds, sigmas = (_ks_small_n if n_data < SMALL_N_CUTOFF else _ks_scan)(data)
    best = int(np.argmin(ds))
    return {"alpha": float(alphas[best]), "xmin": float(data[best]), "xmax": float(data[-1]),
            "D": float(ds[best]), "sigma": float(sigmas[best])}


def _tail_log_sums(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate index i < N-1: tail size n_i and s_i = sum_{j>=i} log(x_j) - n_i log(x_i)."""
    logd = np.log(data)
    suffix = np.cumsum(logd[::-1])[::-1]
    n = (len(data) - np.arange(len(data) - 1)).astype(np.float64)
    s = suffix[:-1] - n * logd[:-1]
    return n, s, logd


def _ks_block(data: np.ndarray, logd: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact D_i = max_{j>=i} |1 - (x_j/x_i)^(1-alpha_i) - (j-i)/n_i| for sorted candidate rows.

    (x_j/x_i)^(1-alpha) is evaluated as exp((1-alpha) * (log x_j - log x_i)): the same number to
    ~1e-15 relative, and exp vectorises far better than pow. Only columns right of the first
    row's xmin are formed; the rest of the lower triangle is masked.
    """
    n_data = len(data)
    lo = int(rows[0])
    k = np.arange(lo, n_data)[None, :] - rows[:, None]  # (j - i): tail rank of x_j
    inv_n = 1.0 / (n_data - rows).astype(np.float64)[:, None]
    cdf = logd[None, lo:] - logd[rows, None]
    cdf *= (1.0 - alphas[rows])[:, None]
    np.exp(cdf, out=cdf)
    np.subtract(1.0, cdf, out=cdf)  # fitted CDF at x_j
    cdf -= k * inv_n  # minus the empirical CDF before the jump at x_j
    np.abs(cdf, out=cdf)
    return np.max(cdf, axis=1, where=k >= 0, initial=0.0)


def _ks_exact(data: np.ndarray, logd: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact D for `rows` (ascending), in cache-sized blocks of candidates."""
    out = np.empty(len(rows))
    block = int(min(max(16, _CHUNK_ELEMENTS // len(data)), 512))
    with np.errstate(all="ignore"):
        for start in range(0, len(rows), block):
            out[start:start + block] = _ks_block(data, logd, alphas, rows[start:start + block])
    return out


def _ks_lower_bounds(data: np.ndarray, logd: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The KS deviation at _BOUND_SAMPLES points spread over each candidate's own tail: a lower bound on D_i."""
    n_data = len(data)
    n = (n_data - rows).astype(np.float64)
    q = np.linspace(0.0, 1.0, _BOUND_SAMPLES)
    k = np.round(q[None, :] * (n - 1)[:, None]).astype(np.int64)  # tail ranks sampled
    with np.errstate(all="ignore"):
        fitted = 1.0 - np.exp((1.0 - alphas[rows])[:, None] * (logd[rows[:, None] + k] - logd[rows, None]))
        return np.max(np.abs(fitted - k / n[:, None]), axis=1)


def _ks_distances(data: np.ndarray, alphas: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """KS distance per candidate (1 where alpha <= 1, as WeightWatcher), enough to find argmin D.

    Up to _FULL_SCAN_MAX (128) values every D is computed. Above, a branch-and-bound gives the same
    argmin with far less work: cheap lower bounds (the deviation at 16 points of each tail) order the
    candidates, exact D is computed in that order until the next bound exceeds the best exact D;
    candidates never reached are returned as +inf (their D is provably larger). Ties keep
    WeightWatcher's first-index rule because every candidate whose bound reaches the minimum
    is computed exactly.
    """
    n_data = len(data)
    ds = np.ones(len(alphas))
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return ds
    logd = np.log(data)
    if n_data <= _FULL_SCAN_MAX:
        ds[idx] = _ks_exact(data, logd, alphas, idx)
        return ds
    bounds = _ks_lower_bounds(data, logd, alphas, idx)
    order = np.argsort(bounds, kind="stable")
    ds[idx] = np.inf
    best = 1.0 if idx.size < len(alphas) else np.inf  # an invalid candidate already scores 1
    step = 64
    for start in range(0, idx.size, step):
        pick = order[start:start + step]
        pick = pick[bounds[pick] <= best]
        if pick.size == 0:
            break
        rows = np.sort(idx[pick])
        exact = _ks_exact(data, logd, alphas, rows)
        ds[rows] = exact
        best = min(best, float(exact.min()))
    return ds


def _ks_scan(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WWFit.fit_power_law_standard: MLE alpha and KS D for every candidate xmin."""
    n, s, _ = _tail_log_sums(data)
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / s
    ds = _ks_distances(data, alphas, alphas > 1.0)
    sigmas = (alphas - 1.0) / np.sqrt(n)
    return alphas, ds, sigmas


def _ks_small_n(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WWFit.fit_powerlaw_smallN (fewer than 20 values): bias-corrected alpha on tails of >= 8.

    WeightWatcher computes a D - 0.868/sqrt(n) objective here but its caller then overrides the
    choice with argmin D, so only the per-candidate arrays matter. When no tail qualifies (fewer
    than 8 values) the whole sample is fitted as candidate 0, and its sigma keeps the value
    computed before that update (-1/sqrt(N)), as in WeightWatcher.
    """
    n, s, logd = _tail_log_sums(data)
    ok = (n >= SMALL_N_MIN_TAIL) & (s > 1e-12)
    alphas = np.zeros(len(n))
    alphas[ok] = 1.0 + (n[ok] - 1.0) / s[ok]
    valid = ok & (alphas > 1.0)
    ds = _ks_distances(data, alphas, valid)
    sigmas = (alphas - 1.0) / np.sqrt(n)
    if valid.any():
        return alphas, ds, sigmas
    n_all = float(len(data))
    s_all = float(np.sum(logd) - n_all * logd[0])
    if s_all <= 1e-12:
        raise FitError("all eigenvalues above the threshold are equal")
    alphas[0] = 1.0 + (n_all - 1.0) / s_all
    ds[0] = float(np.max(np.abs(np.arange(len(data)) / n_all - (1.0 - (data / data[0]) ** (1.0 - alphas[0])))))
    return alphas, ds, sigmas


def hill_fit(data: np.ndarray) -> dict:
    """TempBalance's Hill estimator: xmin = the median nonzero eigenvalue (index N//2)."""
    data = np.asarray(data, dtype=np.float64)
    if len(data) < 2:
        raise FitError(f"{len(data)} eigenvalue(s) above the threshold, need at least 2")
    i = len(data) // 2
    tail = data[i:]
    n = float(len(tail))
    logt = np.log(tail)
    s = float(np.sum(logt) - n * logt[0])
    if s <= 0:
        raise FitError("all tail eigenvalues are equal")
    alpha = 1.0 + n / s
    d = float(np.max(np.abs(1.0 - (tail / tail[0]) ** (1.0 - alpha) - np.arange(len(tail)) / n)))
    return {"alpha": alpha, "xmin": float(tail[0]), "xmax": float(data[-1]), "D": d,
            "sigma": (alpha - 1.0) / math.sqrt(n)}


def powerlaw_package_fit(data: np.ndarray, *, xmax: float | None = None) -> dict:
    """The powerlaw package's continuous power-law Fit (xmin by minimum KS distance)."""
    import powerlaw

    data = np.asarray(data, dtype=np.float64)
    if len(data) < 2:
        raise FitError(f"{len(data)} eigenvalue(s) above the threshold, need at least 2")
    sink = io.StringIO()
    with redirect_stdout(sink), redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(data, xmax=xmax, verbose=False,
                           xmin_distribution="power_law")
        alpha, xmin, d, sigma = fit.alpha, fit.xmin, fit.D, fit.sigma
    if alpha is None or not np.isfinite(alpha):
        raise FitError("powerlaw package returned no alpha")
    return {"alpha": float(alpha), "xmin": float(xmin),
            "xmax": float(fit.xmax) if fit.xmax is not None else float(data[-1]),
            "D": float(d), "sigma": float(sigma)}
