"""FARMS windows, pooled ESD and alpha_farms (wdiv.spectral.farms)."""

from __future__ import annotations

import numpy as np
import pytest

from wdiv.spectral.farms import farms_evals, farms_fit, submatrices, window_offsets


def gram(x):
    return np.linalg.eigvalsh(x.T @ x)


def test_square_matrix_is_its_own_window():
    w = np.random.default_rng(0).standard_normal((128, 128))
    assert np.allclose(farms_evals(w), np.sort(gram(w)))


def test_tall_matrix_pools_square_blocks_in_either_orientation():
    w = np.random.default_rng(1).standard_normal((768, 256))
    blocks = np.sort(np.concatenate([gram(w[i:i + 256]) for i in (0, 256, 512)]))
    assert submatrices(w).shape == (3, 256, 256)
    assert np.allclose(farms_evals(w), blocks)
    assert np.allclose(farms_evals(w.T), blocks)  # (out, in) with out < in: same windows


def test_window_options():
    w = np.zeros((768, 256))
    assert submatrices(w, windows_per_dim=5).shape == (5, 256, 256)
    assert submatrices(w, aspect_ratio=2.0).shape == (2, 512, 256)
    assert submatrices(w, window=100).shape == (8 * 3, 100, 100)
    assert list(window_offsets(768, 256, 5)) == [0, 128, 256, 384, 512]
    with pytest.raises(ValueError):
        submatrices(w, window=300)
    with pytest.raises(ValueError):
        submatrices(w, aspect_ratio=0.5)


def test_custom_eigensolver_receives_the_stack():
    seen = []

    def solver(stack):
        seen.append(stack.shape)
        return np.concatenate([gram(x) for x in stack])

    w = np.random.default_rng(2).standard_normal((300, 100))
    ev = farms_evals(w, eigvals=solver, seed=3)
    assert seen == [(3, 100, 100)] and len(ev) == 300


def test_alpha_farms_of_heavy_tailed_matrix():
    """Pooled square windows of a Pareto(mu=1) matrix keep the heavy-tail exponent 1 + mu/2."""
    rng = np.random.default_rng(4)
    w = (rng.pareto(1.0, (2048, 256)) + 1.0) * rng.choice([-1.0, 1.0], (2048, 256))
    fit = farms_fit(w)
    assert fit["status"] == "success"
    assert fit["alpha"] == pytest.approx(1.5, abs=0.15)
