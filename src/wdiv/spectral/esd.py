"""Matrices -> eigenvalues of W^T W (squared singular values, no 1/N), in float64.

Why the Gram matrix and not an SVD: eigvalsh of the smaller M x M Gram matrix costs a
fraction of an SVD and, in float64, reproduces squared singular values to about
``M * eps * lambda_max`` absolute; tests/test_esd.py shows the eigenvalues the fits use and
the norm sums agree with an SVD to 1e-9 relative or better. What the Gram matrix cannot
resolve is the smallest end of a (nearly) rank-deficient matrix, which decides the hard
rank and so the matrix entropy; a matrix whose smallest Gram eigenvalue is below
``_SVD_BELOW * lambda_max`` is therefore redone with a float64 SVD (rare: random and trained
weights sit far above it).
"""

from __future__ import annotations

import numpy as np
import torch

# Smallest/largest eigenvalue ratio below which the Gram result is not trusted (SVD redone).
_SVD_BELOW = 1e-10


def gram_eigenvalues(mats: torch.Tensor, *, device: str | torch.device = "cpu") -> np.ndarray:
    """(B, N, M) stack -> (B, min(N, M)) eigenvalues of each W^T W, ascending, float64.

    Batched: one matmul and one batched symmetric eigensolver call for the whole stack.
    """
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    x = mats.to(device=device, dtype=torch.float64)
    if x.shape[-2] < x.shape[-1]:
        x = x.transpose(-2, -1)
    gram = x.transpose(-2, -1) @ x
    evals = torch.linalg.eigvalsh(gram)
    del gram
    suspect = evals[..., 0] <= _SVD_BELOW * evals[..., -1]
    if bool(suspect.any()):
        sv = torch.linalg.svdvals(x[suspect])
        evals[suspect] = torch.flip(sv * sv, dims=[-1])
    return evals.clamp_min(0.0).cpu().numpy()


def svd_eigenvalues(mats: torch.Tensor) -> np.ndarray:
    """Reference path: squared singular values from an SVD (slow; for tests and cross-checks)."""
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    sv = torch.linalg.svdvals(mats.to(torch.float64))
    return torch.flip(sv * sv, dims=[-1]).cpu().numpy()


def pooled(evals: np.ndarray) -> np.ndarray:
    """(B, M) per-slice eigenvalues -> one sorted ESD (WeightWatcher's pooled conv layers)."""
    return np.sort(evals.reshape(-1))


def eigvals_fn(device: str | torch.device = "cpu"):
    """A callable W -> sorted eigenvalues, for code that takes one (FARMS windows)."""

    def fn(w) -> np.ndarray:
        t = torch.as_tensor(w)
        return gram_eigenvalues(t, device=device).reshape(-1) if t.dim() == 2 else pooled(gram_eigenvalues(t, device=device))

    return fn
