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
# float64 elements of one row block of the Gram product (64 MB).
_BLOCK_ELEMS = 1 << 23


def gram_matrix(mats: torch.Tensor, *, device: str | torch.device = "cpu",
                block_elems: int = _BLOCK_ELEMS) -> torch.Tensor:
    """(B, N, M) with N >= M -> float64 (B, M, M) W^T W, accumulated over row blocks.

    Only one block of rows is ever held in float64, so a float32 matrix never needs a full
    float64 copy (memory stays ~ the input + M x M).
    """
    b, n, m = mats.shape
    rows = max(1, block_elems // max(1, b * m))
    if rows >= n:
        x = mats.to(device=device, dtype=torch.float64)
        return x.transpose(-2, -1) @ x
    gram = torch.zeros(b, m, m, dtype=torch.float64, device=device)
    for i in range(0, n, rows):
        xb = mats[:, i:i + rows].to(device=device, dtype=torch.float64)
        gram.baddbmm_(xb.transpose(-2, -1), xb)
    return gram


def gram_eigenvalues(mats: torch.Tensor, *, device: str | torch.device = "cpu") -> np.ndarray:
    """(B, N, M) stack -> (B, min(N, M)) eigenvalues of each W^T W, ascending, float64.

    Batched: one Gram product and one batched symmetric eigensolver call for the whole stack.
    """
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    if mats.shape[-2] < mats.shape[-1]:
        mats = mats.transpose(-2, -1)
    evals = torch.linalg.eigvalsh(gram_matrix(mats, device=device))
    suspect = evals[..., 0] <= _SVD_BELOW * evals[..., -1]
    if bool(suspect.any()):
        idx = suspect.nonzero().flatten().cpu()
        sv = torch.linalg.svdvals(mats[idx].to(device=device, dtype=torch.float64))
        evals[idx.to(evals.device)] = torch.flip(sv * sv, dims=[-1])
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
