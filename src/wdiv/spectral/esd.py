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
                block_elems: int = _BLOCK_ELEMS, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, M) with N >= M -> float64 (B, M, M) W^T W, accumulated over row blocks.

    Only one block of rows is ever held in float64, so a float32 matrix never needs a full
    float64 copy (memory stays ~ the input + M x M). `out` receives the result if given.
    """
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    if mats.shape[-2] < mats.shape[-1]:
        mats = mats.transpose(-2, -1)
    b, n, m = mats.shape
    rows = max(1, block_elems // max(1, b * m))
    if out is None:
        out = torch.empty(b, m, m, dtype=torch.float64, device=device)
    if rows >= n:
        x = mats.to(device=out.device, dtype=torch.float64)
        return torch.matmul(x.transpose(-2, -1), x, out=out)
    out.zero_()
    for i in range(0, n, rows):
        xb = mats[:, i:i + rows].to(device=out.device, dtype=torch.float64)
        out.baddbmm_(xb.transpose(-2, -1), xb)
    return out


def _eigvalsh(grams: torch.Tensor) -> torch.Tensor:
    """Batched symmetric eigenvalues using every core without oversubscribing them.

    Why not one torch.linalg.eigvalsh call: on CPU, torch's batched eigensolver combined with
    its multithreaded LAPACK oversubscribes the cores (measured 30x slower than single-threaded
    on 12 384x384 matrices on a busy 2-core machine). A batch is therefore split over one Python
    thread per core, each solving its share with one LAPACK thread; a lone matrix keeps all threads.
    """
    threads = torch.get_num_threads()
    if grams.device.type != "cpu" or threads == 1 or grams.shape[0] <= 1:
        return torch.linalg.eigvalsh(grams)
    from concurrent.futures import ThreadPoolExecutor

    out = torch.empty(grams.shape[:-1], dtype=grams.dtype)
    chunks = [c for c in torch.arange(grams.shape[0]).tensor_split(min(threads, grams.shape[0])) if len(c)]

    def solve(idx):
        out[idx] = torch.linalg.eigvalsh(grams[idx])

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            list(pool.map(solve, chunks))
    finally:
        torch.set_num_threads(threads)
    return out


def eigvalsh_grams(grams: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, M, M) Gram matrices -> ascending eigenvalues (B, M) and a per-matrix flag `suspect`.

    suspect: the smallest eigenvalue is below _SVD_BELOW * the largest, where the Gram product
    cannot be trusted; those matrices must be redone with `svd_eigenvalues`.
    """
    evals = _eigvalsh(grams)
    suspect = evals[..., 0] <= _SVD_BELOW * evals[..., -1]
    return evals.clamp_min(0.0).cpu().numpy(), suspect.cpu().numpy()


def gram_eigenvalues(mats: torch.Tensor, *, device: str | torch.device = "cpu") -> np.ndarray:
    """(B, N, M) stack -> (B, min(N, M)) eigenvalues of each W^T W, ascending, float64.

    Batched: one Gram product and one batched symmetric eigensolver call for the whole stack.
    """
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    evals, suspect = eigvalsh_grams(gram_matrix(mats, device=device))
    if suspect.any():
        evals[suspect] = svd_eigenvalues(mats[torch.from_numpy(suspect)], device=device)
    return evals


def svd_eigenvalues(mats: torch.Tensor, *, device: str | torch.device = "cpu") -> np.ndarray:
    """Squared singular values from a float64 SVD, ascending (rank-deficient matrices, tests)."""
    if mats.dim() == 2:
        mats = mats.unsqueeze(0)
    sv = torch.linalg.svdvals(mats.to(device=device, dtype=torch.float64))
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
