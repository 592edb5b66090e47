"""Per-layer parity of wdiv.spectral's numerics with WeightWatcher 0.7.7 on the same weights.

One torch model holds one nn.Linear per test matrix (Gaussian, Pareto-tailed entries with
mu in {1, 1.5, 3}, low rank + noise, tall, wide, square, tiny 10x64); WeightWatcher analyses it
once (mp_fit=True) and every row is compared with wdiv's metrics on the squared singular values
of the same float32 weights.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pytest
import scipy.linalg

torch = pytest.importorskip("torch")
ww = pytest.importorskip("weightwatcher")

from wdiv.spectral.metrics import layer_metrics, summarize  # noqa: E402
from wdiv.spectral.powerlaw import fit_power_law  # noqa: E402

REL = 1e-6
FIT_COLUMNS = ["alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes"]
NORM_COLUMNS = ["lambda_max", "log_spectral_norm", "norm", "log_norm", "alpha_weighted",
                "log_alpha_norm", "stable_rank", "entropy", "matrix_rank"]
MP_COLUMNS = ["sigma_mp", "bulk_max", "bulk_min", "mp_softrank"]


def _pareto(rng, shape, mu):
    """Symmetric entries with power-law tails P(|x| > t) ~ t^-mu."""
    return (rng.pareto(mu, shape) + 1.0) * rng.choice([-1.0, 1.0], shape)


def _matrices() -> dict[str, np.ndarray]:
    """(out_features, in_features) float32 weights, seeded."""
    rng = np.random.default_rng(1234)
    low_rank = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 150)) / 3
    mats = {
        "gauss_300x100": rng.standard_normal((300, 100)) * 0.02,
        "pareto1_256x128": _pareto(rng, (256, 128), 1.0),
        "pareto1.5_256x128": _pareto(rng, (256, 128), 1.5),
        "pareto3_256x128": _pareto(rng, (256, 128), 3.0),
        "lowrank_200x150": low_rank + 0.3 * rng.standard_normal((200, 150)),
        "tall_500x60": rng.standard_normal((500, 60)),
        "wide_60x500": rng.standard_t(4, (60, 500)),
        "square_128": rng.standard_normal((128, 128)),
        "tiny_10x64": rng.standard_normal((10, 64)),
    }
    return {k: v.astype(np.float32) for k, v in mats.items()}


def _model(mats: dict[str, np.ndarray]):
    layers = []
    for w in mats.values():
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
        layers.append(lin)
    return torch.nn.Sequential(*layers)


def ww_details(mats, **kwargs):
    """WeightWatcher's details table, its chatter silenced; one row per matrix, in order."""
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        watcher = ww.WeightWatcher(model=_model(mats))
        details = watcher.analyze(**kwargs)
    assert len(details) == len(mats), "WeightWatcher skipped a test layer"
    return details.reset_index(drop=True)


def svd_evals(w: np.ndarray) -> np.ndarray:
    """What WeightWatcher uses on CPU: squared singular values of the float64 weights."""
    return np.sort(scipy.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)


def _close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


@pytest.fixture(scope="module")
def mats():
    return _matrices()


@pytest.fixture(scope="module")
def evals(mats):
    return {name: svd_evals(w) for name, w in mats.items()}


@pytest.fixture(scope="module")
def ww_mp(mats):
    return ww_details(mats, mp_fit=True)


@pytest.fixture(scope="module")
def ours(mats, evals):
    rows = []
    for name, w in mats.items():
        n, m = max(w.shape), min(w.shape)
        rows.append(layer_metrics(evals[name], N=n, M=m))
    return rows


def test_fit_and_norm_metrics_equal_weightwatcher(mats, ww_mp, ours):
    bad = []
    for name, ref, row in zip(mats, ww_mp.to_dict("records"), ours):
        assert row["status"] == ref["status"] == "success", name
        assert row["warning"] == ref["warning"], name
        assert (row["N"], row["M"], row["num_evals"]) == (ref["N"], ref["M"], ref["num_evals"])
        for col in FIT_COLUMNS + NORM_COLUMNS + MP_COLUMNS:
            if not _close(row[col], ref[col]):
                bad.append((name, col, row[col], ref[col]))
    assert not bad, bad


def test_num_spikes_equal_weightwatcher(mats, ww_mp, ours):
    ours_spikes = [r["num_spikes"] for r in ours]
    assert ours_spikes == [int(v) for v in ww_mp["num_spikes"]]
    assert max(ours_spikes) >= 5  # the low-rank and heavy-tailed layers do have spikes


def test_gram_eigenvalues_give_the_same_fit(mats, evals):
    """The engine feeds eigvalsh(W^T W); the fit must not care (1e-6, like the SVD path)."""
    for name, w in mats.items():
        x = w.astype(np.float64)
        gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
        a = fit_power_law(np.linalg.eigvalsh(gram))
        b = fit_power_law(evals[name])
        for col in ("alpha", "xmin", "D"):
            assert _close(a[col], b[col]), (name, col, a[col], b[col])


def test_summary_matches_weightwatcher(ww_mp, ours):
    import pandas as pd

    ref = {k: float(v) for k, v in ww_mp.mean(numeric_only=True).items()}
    mine = summarize(pd.DataFrame(ours))
    for key, value in mine.items():
        assert _close(value, ref[key]), key


def test_clip_xmax_equals_weightwatcher(mats, evals):
    names = [k for k in mats if k.startswith("pareto") or k == "wide_60x500"]
    sub = {k: mats[k] for k in names}
    ref = ww_details(sub, fix_fingers="clip_xmax")
    for (name, w), r in zip(sub.items(), ref.to_dict("records")):
        fit = fit_power_law(evals[name], fix_fingers="clip_xmax")
        for col in ("alpha", "xmin", "D", "raw_alpha"):
            assert _close(fit[col], r[col]), (name, col, fit[col], r[col])
        assert fit["num_fingers"] == r["num_fingers"], name


def test_randomize_distance_equals_weightwatcher():
    """Seed numpy's global RNG, replay WeightWatcher's two shuffles, compare the distances."""
    rng = np.random.default_rng(7)
    w = _pareto(rng, (300, 120), 2.0).astype(np.float32)
    np.random.seed(11)
    ref = ww_details({"w": w}, randomize=True).iloc[0]
    np.random.seed(11)
    flat = w.astype(np.float64).flatten()
    np.random.shuffle(flat.copy())  # WeightWatcher's first (replica) shuffle, M >= 100
    np.random.shuffle(flat)
    rand = svd_evals(flat.reshape(w.shape))
    row = layer_metrics(svd_evals(w), N=300, M=120, mp_fit=False, rand_evals=rand)
    assert _close(row["rand_distance"], ref["rand_distance"])
    assert _close(row["ww_softrank"], ref["ww_softrank"])


@pytest.mark.parametrize("n", [2, 5, 7, 8, 12, 19, 20, 64])
def test_small_samples_follow_weightwatcher_rules(n):
    """WWFit switches rules below 20 values and again below 8; every branch is matched."""
    from weightwatcher.WW_powerlaw import WWFit

    data = np.sort(np.random.default_rng(n).pareto(1.5, n) + 1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = WWFit(data)
    fit = fit_power_law(data)
    for col, value in (("alpha", ref.alpha), ("xmin", ref.xmin), ("D", ref.D), ("sigma", ref.sigma)):
        assert _close(fit[col], value, rel=1e-9), (col, fit[col], value)


def test_large_esd_equals_wwfit():
    """Above 128 values the scan is a branch-and-bound; WeightWatcher's loop must agree."""
    from weightwatcher.WW_powerlaw import WWFit

    rng = np.random.default_rng(21)
    w = _pareto(rng, (1000, 700), 2.5)
    data = svd_evals(w.astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()):
        ref = WWFit(data[data > 1e-5])
    fit = fit_power_law(data)
    for col, value in (("alpha", ref.alpha), ("xmin", ref.xmin), ("D", ref.D), ("sigma", ref.sigma)):
        assert _close(fit[col], value, rel=1e-9), (col, fit[col], value)
