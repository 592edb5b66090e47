"""Random-matrix limits and contracts of the per-layer numerics (powerlaw, mp, metrics, randomize).

Everything is seeded; tolerances are set from the finite-size scatter of these sizes, not tuned
to pass: the MP edge is a large-N law (1-2 % off here, asserted within 5 %); the heavy-tailed
alpha = 1 + mu/2 law (Martin & Mahoney) is approached from above, more slowly as mu -> 2.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from wdiv.spectral import mp, powerlaw
from wdiv.spectral.metrics import layer_metrics, summarize
from wdiv.spectral.powerlaw import fit_power_law
from wdiv.spectral.randomize import jensen_shannon_distance, randomization_metrics


def esd(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of W^T W (N >= M orientation), ascending."""
    x = w if w.shape[0] >= w.shape[1] else w.T
    return np.linalg.eigvalsh(x.T @ x)


def pareto_entries(rng, shape, mu):
    return (rng.pareto(mu, shape) + 1.0) * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize("n,m", [(2000, 500), (1200, 800), (1000, 1000)])
def test_gaussian_matrix_reproduces_mp_bulk_edge(n, m):
    rng = np.random.default_rng(n + m)
    sigma = 0.02
    w = sigma * rng.standard_normal((n, m))
    row = layer_metrics(esd(w), N=n, M=m)
    # lambda_+ of W^T W (no 1/N) = sigma^2 N (1 + sqrt(1/Q))^2 = sigma^2 (sqrt(N) + sqrt(M))^2
    edge = sigma**2 * (math.sqrt(n) + math.sqrt(m)) ** 2
    assert row["bulk_max"] == pytest.approx(edge, rel=0.05)
    assert row["lambda_max"] == pytest.approx(edge, rel=0.05)
    assert row["num_spikes"] <= 2  # pure noise: nothing beyond the Tracy-Widom margin
    assert row["mp_softrank"] == pytest.approx(1.0, rel=0.05)
    assert row["alpha"] > 4  # no heavy tail


def test_planted_spikes_are_counted():
    rng = np.random.default_rng(3)
    n, m, k = 1500, 500, 5
    noise = rng.standard_normal((n, m))
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    strength = 4.0 * (n * m) ** 0.25 * np.linspace(1.0, 2.0, k)  # well above the BBP threshold
    row = layer_metrics(esd(noise + (u * strength) @ v.T), N=n, M=m)
    assert row["num_spikes"] == k
    assert row["bulk_max"] == pytest.approx((math.sqrt(n) + math.sqrt(m)) ** 2, rel=0.05)


def test_heavy_tailed_entries_give_alpha_one_plus_mu_over_two():
    """Finite-size bias grows as mu -> 2 (over 8 seeds at 1000 x 1000: mean alpha 1.23, 1.48,
    1.85 for mu 0.5, 1, 1.5, sd 0.02-0.07), hence a tolerance of 0.05 + 0.1 mu on a 2-seed mean."""
    alphas = {}
    for mu in (0.5, 1.0, 1.5):
        fits = []
        for seed in (100, 101):
            rng = np.random.default_rng(seed)
            fits.append(fit_power_law(esd(pareto_entries(rng, (1000, 1000), mu)))["alpha"])
        alphas[mu] = float(np.mean(fits))
        assert alphas[mu] == pytest.approx(1 + mu / 2, abs=0.05 + 0.1 * mu), (mu, fits)
    assert alphas[0.5] < alphas[1.0] < alphas[1.5]


@pytest.mark.parametrize("method", ["ks", "hill", "powerlaw"])
def test_estimators_recover_a_pure_power_law(method):
    rng = np.random.default_rng(5)
    true_alpha = 2.5
    x = (1.0 - rng.random(1500)) ** (-1.0 / (true_alpha - 1.0))  # pdf ~ x^-2.5 on [1, inf)
    fit = fit_power_law(x, method=method)
    assert fit["status"] == "success"
    assert fit["alpha"] == pytest.approx(true_alpha, abs=0.15)
    assert fit["num_pl_spikes"] == np.count_nonzero(x >= fit["xmin"])


def test_hill_uses_the_median_as_xmin():
    x = np.array([0.0, 1e-7, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0])  # 6 values above the threshold
    fit = fit_power_law(x, method="hill")
    tail = np.array([5.0, 8.0, 13.0])  # index 6 // 2 = 3 of the nonzero values
    assert fit["xmin"] == 5.0
    assert fit["alpha"] == pytest.approx(1 + 3 / np.sum(np.log(tail / 5.0)))
    assert fit["num_pl_spikes"] == 3


def test_ks_scan_equals_a_direct_loop():
    """The vectorised scan against the definition written as a plain loop."""
    rng = np.random.default_rng(9)
    x = np.sort(esd(pareto_entries(rng, (120, 80), 2.0)))
    alphas, ds = [], []
    for i in range(len(x) - 1):
        tail = x[i:]
        n = len(tail)
        a = 1 + n / np.sum(np.log(tail / x[i]))
        alphas.append(a)
        ds.append(np.max(np.abs(1 - (tail / x[i]) ** (1 - a) - np.arange(n) / n)))
    best = int(np.argmin(ds))
    fit = fit_power_law(x)
    assert fit["xmin"] == x[best]
    assert fit["alpha"] == pytest.approx(alphas[best], rel=1e-10)
    assert fit["D"] == pytest.approx(ds[best], rel=1e-10)


def test_int_xmax_drops_top_eigenvalues_and_float_xmax_cuts():
    rng = np.random.default_rng(4)
    x = esd(pareto_entries(rng, (200, 100), 1.5))
    clipped = fit_power_law(x, xmax=3)
    assert clipped["alpha"] == fit_power_law(x[:-3])["alpha"]
    cut = fit_power_law(x, xmax=float(x[-5]) * 1.0000001)
    assert cut["xmax"] == x[-5]
    with pytest.raises(ValueError):
        fit_power_law(x, method="mle")


@pytest.mark.parametrize("evals", [np.array([]), np.array([4.0]), np.zeros(50), np.ones(40)],
                         ids=["empty", "one", "all-zero", "all-equal"])
def test_failed_fit_is_nan_and_never_over_trained(evals):
    fit = fit_power_law(evals)
    assert fit["status"] == "failed"
    assert math.isnan(fit["alpha"]) and math.isnan(fit["D"])
    assert "over-trained" not in fit["warning"] and fit["warning"].startswith("power-law fit failed")


def test_all_zero_layer_row_is_failed_with_nan_metrics():
    row = layer_metrics(np.zeros(64), N=128, M=64)
    assert row["status"] == "failed"
    for col in ("alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "sigma_mp", "num_spikes"):
        assert math.isnan(row[col]), col
    assert row["matrix_rank"] == 0
    assert "MP fit failed" in row["warning"]


def test_warning_labels_follow_alpha():
    rng = np.random.default_rng(1)
    heavy = layer_metrics(esd(pareto_entries(rng, (400, 200), 1.0)), N=400, M=200, mp_fit=False)
    assert heavy["alpha"] < 2 and heavy["warning"] == "over-trained"
    light = layer_metrics(esd(rng.standard_normal((400, 200))), N=400, M=200, mp_fit=False)
    assert light["alpha"] > 6 and light["warning"] == "under-trained"


def test_norm_metrics_definitions():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((90, 30))
    row = layer_metrics(esd(w), N=90, M=30, mp_fit=False)
    sv = np.linalg.svd(w, compute_uv=False)
    assert row["norm"] == pytest.approx(np.linalg.norm(w) ** 2, rel=1e-10)
    assert row["log_spectral_norm"] == pytest.approx(2 * np.log10(sv[0]), rel=1e-10)
    assert row["stable_rank"] == pytest.approx(np.sum(sv**2) / sv[0] ** 2, rel=1e-10)
    assert row["matrix_rank"] == np.linalg.matrix_rank(w) == 30
    p = sv**2 / np.sum(sv**2)
    assert row["entropy"] == pytest.approx(-np.sum(p * np.log(p)) / np.log(30), rel=1e-6)
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * row["log_spectral_norm"])
    assert row["log_alpha_norm"] == pytest.approx(np.log10(np.sum(sv ** (2 * row["alpha"]))))


def test_kde_equals_scikit_learn():
    from sklearn.neighbors import KernelDensity

    rng = np.random.default_rng(6)
    v = rng.gamma(2.0, 0.5, 700)
    x = np.linspace(0, v.max() + 0.5, 1000)
    ref = np.exp(KernelDensity(kernel="linear", bandwidth=0.1).fit(v[:, None]).score_samples(x[:, None]))
    assert np.allclose(mp.kde_linear(v, x), ref, rtol=1e-10, atol=1e-300)


def test_randomization_metrics():
    rng = np.random.default_rng(8)
    w = pareto_entries(rng, (300, 100), 1.2)
    shuffled = rng.permutation(w.ravel()).reshape(w.shape)
    out = randomization_metrics(esd(w), esd(shuffled))
    assert out["ww_softrank"] == pytest.approx(esd(shuffled).max() / esd(w).max())
    assert 0 < out["rand_distance"] <= math.sqrt(math.log(2))
    assert jensen_shannon_distance(esd(w), esd(w)) == pytest.approx(0.0, abs=1e-7)
    row = layer_metrics(esd(w), N=300, M=100, mp_fit=False, rand_evals=esd(shuffled)[1:])
    assert math.isnan(row["rand_distance"]) and "randomized ESD unusable" in row["warning"]
    assert row["status"] == "success"  # the layer's own fit is unaffected


def test_summary_excludes_failed_fits():
    df = pd.DataFrame([
        {"alpha": 3.0, "log_norm": 1.0, "status": "success"},
        {"alpha": 5.0, "log_norm": 2.0, "status": "success"},
        {"alpha": math.nan, "log_norm": 9.0, "status": "failed"},
    ])
    assert summarize(df) == {"alpha": 4.0, "log_norm": 1.5}


def test_powerlaw_module_constants_match_weightwatcher():
    constants = pytest.importorskip("weightwatcher.constants")
    assert powerlaw.EVALS_THRESH == constants.EVALS_THRESH
    assert powerlaw.OVER_TRAINED_THRESH == constants.OVER_TRAINED_THRESH
    assert powerlaw.UNDER_TRAINED_THRESH == constants.UNDER_TRAINED_THRESH


@pytest.mark.parametrize("kind", ["gauss", "pareto", "lowrank"])
def test_branch_and_bound_scan_equals_full_scan(kind, monkeypatch):
    rng = np.random.default_rng(12)
    if kind == "gauss":
        w = rng.standard_normal((1500, 1200))
    elif kind == "pareto":
        w = pareto_entries(rng, (1500, 1200), 2.0)
    else:
        w = rng.standard_normal((1500, 8)) @ rng.standard_normal((8, 1200)) + 0.5 * rng.standard_normal((1500, 1200))
    ev = esd(w)
    fast = fit_power_law(ev)
    monkeypatch.setattr(powerlaw, "_FULL_SCAN_MAX", 10**9)
    full = fit_power_law(ev)
    assert fast == full


def test_hill_respects_xmax_and_shape_is_validated():
    x = np.arange(1.0, 41.0)
    assert fit_power_law(x, method="hill", xmax=20.0)["xmax"] == 20.0
    with pytest.raises(ValueError, match="N >= M"):
        layer_metrics(x, N=10, M=40)
