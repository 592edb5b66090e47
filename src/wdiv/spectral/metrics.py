"""One row of WeightWatcher-named spectral metrics per layer, from that layer's ESD.

Input: ``evals`` = eigenvalues of W^T W for the layer (squared singular values, no 1/N; for a
pooled conv layer the rf slices' eigenvalues together), float64, any order; tiny negative values
from a Gram eigensolver are clipped to 0. ``N >= M`` are the dimensions of one matrix (one slice).

Columns (WeightWatcher 0.7.7 definitions; lambda = the eigenvalues):

- ``N, M, Q=N/M, rf, num_evals`` - shape, receptive field (conv kernel positions), len(evals).
- ``alpha, xmin, xmax, D, sigma, num_pl_spikes`` - power-law fit of the ESD tail
  (wdiv.spectral.powerlaw; default WeightWatcher's KS scan): exponent, the chosen lower cut,
  the largest fitted eigenvalue, the KS distance, the standard error (alpha-1)/sqrt(n_tail),
  and the number of eigenvalues >= xmin.
- ``lambda_max`` = max lambda (squared spectral norm); ``log_spectral_norm`` = log10 lambda_max.
- ``norm`` = sum lambda (squared Frobenius norm); ``log_norm`` = log10 norm.
- ``alpha_weighted`` = alpha * log10 lambda_max; ``log_alpha_norm`` = log10 sum lambda^alpha.
- ``stable_rank`` = norm / lambda_max.
- ``matrix_rank`` = #singular values > s_max * N * eps (numpy's matrix_rank rule on the ESD).
- ``entropy`` = matrix entropy: -sum p log p / log(matrix_rank), p = lambda / sum lambda
  (+1e-10 on p and rank, as WeightWatcher), 1 for a flat spectrum, ~0 for rank one.
- ``num_spikes, sigma_mp, bulk_max, bulk_min, mp_softrank`` - Marchenko-Pastur fit
  (wdiv.spectral.mp): eigenvalues beyond the bulk edge + Tracy-Widom margin, the fitted scale
  (on the ESD rescaled to mean 1), the bulk edges (original scale), bulk_max / lambda_max.
- ``rand_distance, ww_softrank`` - with ``rand_evals`` (ESD of the element-permuted W):
  Jensen-Shannon distance between the sorted ESDs, max(rand) / max(evals) (wdiv.spectral.randomize).
- ``warning`` - "over-trained" (alpha < 2) / "under-trained" (alpha > 6) for successful fits,
  otherwise the reason a fit failed; ``status`` - "success" or "failed" (power-law fit).
- with ``fix_fingers="clip_xmax"`` also ``num_fingers`` and ``raw_alpha`` (alpha before clipping).

Deliberate differences from WeightWatcher (why):

- A failed power-law fit gives NaN alpha, xmin, xmax, D, sigma, num_pl_spikes, alpha_weighted,
  log_alpha_norm (WeightWatcher writes -1, which averages into summaries and reads as
  "over-trained"); status="failed" and the reason in ``warning``. Degenerate fits WeightWatcher
  reports as successes (fewer than 2 eigenvalues above 1e-5, a tail of identical values) fail.
- A failed MP fit gives NaN MP columns (WeightWatcher: -1) and appends its reason to ``warning``.
- An all-zero ESD gives NaN log_norm, log_spectral_norm, stable_rank, entropy (not -inf/NaN
  warnings); its fit fails.
- A float ``xmax`` cuts the fit at the nearest eigenvalue (WeightWatcher ignores floats).
- ``summarize`` averages over layers whose fit did not fail (WeightWatcher averages -1s in).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import mp as mp_mod
from .powerlaw import fit_power_law
from .randomize import randomization_metrics

EPSILON = 1e-10  # WeightWatcher's regulariser in the matrix entropy
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm",
                   "stable_rank", "mp_softrank")
MP_COLUMNS = ("num_spikes", "sigma_mp", "bulk_max", "bulk_min", "mp_softrank")


def matrix_rank(evals: np.ndarray, N: int) -> int:
    """Number of singular values above max(s) * N * eps (numpy's default rank tolerance)."""
    sv = np.sqrt(evals)
    if len(sv) == 0:
        return 0
    return int(np.count_nonzero(sv > np.max(sv) * N * np.finfo(sv.dtype).eps))


def matrix_entropy(evals: np.ndarray, N: int) -> float:
    """WeightWatcher's matrix entropy of the singular-value spectrum, normalised by log(rank)."""
    sv = np.sqrt(evals)
    ev = sv * sv
    total = np.sum(ev)
    if not total > 0:
        return math.nan
    p = ev / total + EPSILON
    rank = matrix_rank(evals, N) + EPSILON
    return float(-np.sum(p * np.log(p)) / np.log(rank))


def norm_metrics(evals: np.ndarray, *, N: int, alpha: float) -> dict:
    """Norm-type metrics of an ESD; alpha (NaN for a failed fit) enters the alpha-weighted ones."""
    norm = float(np.sum(evals))
    lambda_max = float(np.max(evals)) if len(evals) else 0.0
    positive = norm > 0 and lambda_max > 0
    log_spectral_norm = math.log10(lambda_max) if positive else math.nan
    if math.isfinite(alpha) and positive:
        log_alpha_norm = float(np.log10(np.sum(evals ** alpha)))
    else:
        log_alpha_norm = math.nan
    return {
        "lambda_max": lambda_max,
        "log_spectral_norm": log_spectral_norm,
        "norm": norm,
        "log_norm": math.log10(norm) if positive else math.nan,
        "alpha_weighted": alpha * log_spectral_norm,
        "log_alpha_norm": log_alpha_norm,
        "stable_rank": norm / lambda_max if positive else math.nan,
        "entropy": matrix_entropy(evals, N),
        "matrix_rank": matrix_rank(evals, N),
    }


def layer_metrics(evals, *, N: int, M: int, rf: int = 1, fit: str = "ks", xmax=None,
                  fix_fingers: str | None = None, mp_fit: bool = True, rand_evals=None) -> dict:
    """All per-layer metrics of one ESD, as a dict keyed by WeightWatcher's column names.

    evals: eigenvalues of W^T W (pooled over conv slices); N >= M: one matrix's dimensions;
    rf: number of slices pooled; fit: "ks" | "hill" | "powerlaw"; xmax, fix_fingers: see
    wdiv.spectral.powerlaw.fit_power_law; mp_fit: run the Marchenko-Pastur fit;
    rand_evals: ESD of the element-permuted W (adds rand_distance, ww_softrank).
    """
    if N < M:
        raise ValueError(f"layer_metrics needs N >= M (one matrix's larger dimension first), got N={N}, M={M}")
    evals = np.sort(np.maximum(np.asarray(evals, dtype=np.float64).ravel(), 0.0))
    row = {"N": N, "M": M, "Q": N / M, "rf": rf, "num_evals": len(evals)}
    if len(evals) == 0 or not np.all(np.isfinite(evals)):
        why = "no eigenvalues" if len(evals) == 0 else "non-finite eigenvalues"
        return {**row, "status": "failed", "warning": why}
    pl = fit_power_law(evals, method=fit, xmax=xmax, fix_fingers=fix_fingers)
    status, warning = pl.pop("status"), pl.pop("warning")
    row.update(pl)
    row.update(norm_metrics(evals, N=N, alpha=pl["alpha"]))
    notes = [warning] if warning else []
    if mp_fit:
        try:
            fitted = mp_mod.mp_fit(evals, N=N, M=M)
            row.update({k: fitted[k] for k in MP_COLUMNS})
        except (ValueError, FloatingPointError) as exc:
            row.update({k: math.nan for k in MP_COLUMNS})
            notes.append(f"MP fit failed: {exc}")
    if rand_evals is not None:
        try:
            row.update(randomization_metrics(evals, rand_evals))
        except ValueError as exc:
            row.update({"rand_distance": math.nan, "ww_softrank": math.nan})
            notes.append(f"randomized ESD unusable: {exc}")
    row["warning"] = "; ".join(notes)
    row["status"] = status
    return row


def summarize(df: pd.DataFrame) -> dict:
    """WeightWatcher get_summary-style means over layers, layers whose fit failed excluded.

    Keys: those of log_norm, alpha, alpha_weighted, log_alpha_norm, log_spectral_norm,
    stable_rank, mp_softrank present in df (NaN where no layer has a value).
    """
    ok = df[df["status"] != "failed"] if "status" in df.columns else df
    out = {}
    for metric in SUMMARY_METRICS:
        if metric in ok.columns:
            values = pd.to_numeric(ok[metric], errors="coerce")
            out[metric] = float(values.mean()) if values.notna().any() else math.nan
    return out
