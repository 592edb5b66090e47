"""Eigenvalues from the Gram matrix: agree with SVD^2 to what parity needs; batching; MP edge."""

import numpy as np
import pytest
import torch

from wdiv.spectral.esd import gram_eigenvalues, pooled, svd_eigenvalues


def _matrices():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(300, 120, generator=g, dtype=torch.float32)
    square = torch.randn(256, 256, generator=g, dtype=torch.float32)
    u = torch.rand(400, 150, generator=g, dtype=torch.float64)
    pareto = (u ** (-1 / 1.5) * torch.sign(torch.randn(400, 150, generator=g, dtype=torch.float64))).float()
    low_rank = (torch.randn(200, 10, generator=g) @ torch.randn(10, 80, generator=g))
    return {"gauss": gauss, "square": square, "pareto": pareto, "low_rank": low_rank}


@pytest.mark.parametrize("kind", ["gauss", "square", "pareto", "low_rank"])
def test_gram_eigvalsh_matches_svd_squared(kind):
    w = _matrices()[kind]
    gram = gram_eigenvalues(w)[0]
    svd = svd_eigenvalues(w)[0]
    assert gram.dtype == np.float64 and len(gram) == min(w.shape)
    lam_max = svd[-1]
    # every eigenvalue the power-law fit can use (WeightWatcher drops <= 1e-5) to 1e-9 relative
    big = svd > max(1e-5, 1e-6 * lam_max)
    np.testing.assert_allclose(gram[big], svd[big], rtol=1e-9)
    # numerically-zero directions come out exactly 0, so the hard rank is the SVD's
    tol = np.sqrt(lam_max) * max(w.shape) * np.finfo(np.float64).eps
    assert (np.sqrt(gram) > tol).sum() == (np.sqrt(svd) > tol).sum()
    # sums that norm metrics use
    assert gram.sum() == pytest.approx(svd.sum(), rel=1e-12)


def test_batched_equals_one_by_one_and_orientation_does_not_matter():
    g = torch.Generator().manual_seed(1)
    stack = torch.randn(9, 64, 32, generator=g)
    batched = gram_eigenvalues(stack)
    single = np.stack([gram_eigenvalues(stack[i])[0] for i in range(9)])
    np.testing.assert_allclose(batched, single, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gram_eigenvalues(stack.transpose(1, 2)), batched, rtol=1e-10)
    assert np.all(np.diff(pooled(batched)) >= 0) and pooled(batched).size == 9 * 32


def test_gaussian_esd_has_marchenko_pastur_edges():
    n, m, sigma = 2000, 500, 0.7
    w = torch.randn(n, m, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigma
    ev = gram_eigenvalues(w)[0] / n  # MP scale: X = W^T W / N
    q = n / m
    edge_hi = sigma ** 2 * (1 + 1 / np.sqrt(q)) ** 2
    edge_lo = sigma ** 2 * (1 - 1 / np.sqrt(q)) ** 2
    assert ev.max() == pytest.approx(edge_hi, rel=0.05)
    assert ev.min() == pytest.approx(edge_lo, rel=0.1)
    assert ev.mean() == pytest.approx(sigma ** 2, rel=0.02)


def test_blockwise_gram_equals_one_shot():
    from wdiv.spectral.esd_torch import gram_matrix

    w = torch.randn(3, 500, 40, generator=torch.Generator().manual_seed(3))
    one = gram_matrix(w)
    blocks = gram_matrix(w, block_elems=3 * 40 * 64)  # 64-row blocks
    torch.testing.assert_close(blocks, one, rtol=1e-12, atol=1e-10)
    w64 = w.double()
    reference = w64.transpose(-2, -1) @ w64  # the full symmetric W^T W, both triangles
    torch.testing.assert_close(one, reference, rtol=1e-12, atol=1e-10)


def test_blockwise_numpy_gram_equals_full_product_both_orientations():
    from wdiv.spectral.esd import gram_numpy

    w = torch.randn(500, 40, generator=torch.Generator().manual_seed(4)).numpy()
    reference = w.astype(np.float64).T @ w.astype(np.float64)
    np.testing.assert_allclose(gram_numpy(w), reference, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(gram_numpy(w, block_elems=64 * 40), reference, rtol=1e-12, atol=1e-10)  # 8 blocks
    np.testing.assert_allclose(gram_numpy(np.ascontiguousarray(w.T), block_elems=64 * 40), reference,
                               rtol=1e-12, atol=1e-10)  # wide input: the smaller side's Gram


def _solver_stacks(m: int):
    g = torch.Generator().manual_seed(m)
    stacks = [torch.randn(9, 2 * m, m, generator=g), torch.randn(9, 2 * m, m, generator=g) * 3,
              torch.randn(9, 2 * m, m, generator=g).to(torch.bfloat16)]
    poisoned = torch.randn(9, 2 * m, m, generator=g)
    poisoned[4, 7, 3] = float("nan")
    return stacks + [poisoned]


@pytest.mark.parametrize("m", [48, 80])  # a narrow stack is one job; a wider one, one job per matrix
def test_solver_pool_serial_and_torch_paths_agree(m):
    """The job queue with a background thread, the caller-only path and the batched torch
    path (what CUDA runs) give the same eigenvalues; a NaN stack is flagged without
    poisoning its batch."""
    from wdiv.spectral.esd import _SVD_BELOW, EigenSolver
    from wdiv.spectral.esd_torch import eigs_torch

    stacks = _solver_stacks(m)
    with EigenSolver("cpu", threads=2) as solver:
        pooled_results = [h.result() for h in solver.submit(stacks)]
    with EigenSolver("cpu", threads=1) as solver:
        serial_results = [h.result() for h in solver.submit(stacks)]
    torch_results = eigs_torch(stacks, "cpu", _SVD_BELOW)
    assert [r[2] for r in pooled_results] == [r[2] for r in serial_results] == [r[2] for r in torch_results] \
        == [True, True, True, False]
    for (ev_p, sus_p, _), (ev_s, _, _), (ev_t, sus_t, _) in zip(pooled_results[:3], serial_results, torch_results):
        assert ev_p.shape == (9, m) and np.all(np.diff(ev_p, axis=1) >= 0)
        np.testing.assert_allclose(ev_p, ev_s, rtol=1e-12)
        np.testing.assert_allclose(ev_p, ev_t, rtol=1e-10)
        assert not sus_p.any() and not sus_t.any()
    reference = svd_eigenvalues(stacks[2].float())
    np.testing.assert_allclose(pooled_results[2][0], reference, rtol=1e-9)
