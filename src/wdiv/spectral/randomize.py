"""Distance between an ESD and the ESD of its element-permuted matrix (WeightWatcher's randomize).

Permuting the entries of W destroys learned correlations but keeps the entry distribution, so
its ESD is the "random" reference of the same matrix. The engine computes that ESD (seeded);
this module only compares the two spectra, as WeightWatcher 0.7.7 does:

* ``rand_distance``: the Jensen-Shannon distance (natural log) between the two *sorted
  eigenvalue vectors*, each normalised to sum 1 and compared element by element. WeightWatcher
  bins nothing here (scipy.stats.entropy on the raw vectors), so neither do we; both ESDs must
  have the same length, which they do (same shape).
* ``ww_softrank``: max(rand_evals) / max(evals), close to bulk_max / lambda_max.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import rel_entr


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """scipy.stats.entropy(p, q): both normalised to sum 1, 0 log 0 = 0."""
    p = p / np.sum(p)
    q = q / np.sum(q)
    return float(np.sum(rel_entr(p, q)))


def jensen_shannon_distance(p, q) -> float:
    """WeightWatcher's jensen_shannon_distance: sqrt of the mean KL divergence to m = (p+q)/2."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"ESDs of different lengths: {p.shape} vs {q.shape}")
    m = (p + q) / 2
    return math.sqrt((_kl(p, m) + _kl(q, m)) / 2)


def randomization_metrics(evals, rand_evals) -> dict:
    """rand_distance and ww_softrank of an ESD against its permuted-W ESD (both ascending)."""
    evals = np.sort(np.asarray(evals, dtype=np.float64).ravel())
    rand_evals = np.sort(np.asarray(rand_evals, dtype=np.float64).ravel())
    return {"rand_distance": jensen_shannon_distance(evals, rand_evals),
            "ww_softrank": float(np.max(rand_evals) / np.max(evals))}
