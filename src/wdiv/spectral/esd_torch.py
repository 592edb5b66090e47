"""The eigensolver's CUDA path: Gram matrices and eigvalsh with torch on a GPU.

Imported by wdiv.spectral.esd only for a CUDA device (or by tests on torch's CPU), so the CPU
engine runs without torch. Inputs are numpy arrays or tensors; results are numpy, as esd's.
"""

from __future__ import annotations

import numpy as np
import torch

# float64 elements of one row block of the Gram product.
BLOCK_ELEMS = 1 << 21


def as_tensor(mats) -> torch.Tensor:
    return mats if isinstance(mats, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(mats))


def gram_matrix(mats, *, device: str | torch.device = "cpu",
                block_elems: int = BLOCK_ELEMS, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, M) with N >= M -> float64 (B, M, M) W^T W on `device`, accumulated over row blocks.

    Only one block of rows is ever held in float64 (memory ~ the input + M x M). `out`
    receives the result if given.
    """
    mats = as_tensor(mats)
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


def eigs_torch(mats: list, device, svd_below: float) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Same-shape (rf, N, M) stacks -> one Gram buffer and one batched eigvalsh call on `device`;
    per stack (evals ascending, suspect: smallest <= svd_below * largest, all finite)."""
    device = torch.device(device)
    mats = [as_tensor(x) for x in mats]
    m = min(mats[0].shape[-2:])
    grams = torch.empty(sum(x.shape[0] for x in mats), m, m, dtype=torch.float64, device=device)
    bounds, pos = [], 0
    for x in mats:
        gram_matrix(x, out=grams[pos:pos + x.shape[0]])
        bounds.append((pos, pos + x.shape[0]))
        pos += x.shape[0]
    finite = torch.isfinite(grams.diagonal(dim1=-2, dim2=-1)).all(dim=-1).cpu().numpy()
    grams[~torch.from_numpy(finite).to(device)] = 0.0  # a NaN layer must not poison the batch call
    evals = torch.linalg.eigvalsh(grams)
    suspect = (evals[..., 0] <= svd_below * evals[..., -1]).cpu().numpy()
    evals = evals.clamp_min(0.0).cpu().numpy()
    return [(evals[lo:hi], suspect[lo:hi], bool(finite[lo:hi].all())) for lo, hi in bounds]


def svd_eigenvalues(mats, device) -> np.ndarray:
    """(B, N, M) -> squared singular values from a float64 SVD on `device`, ascending."""
    sv = torch.linalg.svdvals(as_tensor(mats).to(device=device, dtype=torch.float64))
    return torch.flip(sv * sv, dims=[-1]).cpu().numpy()
