"""FARMS as its reference computes it (wdiv.spectral.farms), against a plain re-derivation.

The `ref_*` functions below restate the reference procedure (HUST-AI-HYZ/FARMS: fixed_sampling,
the conv block loop, the median and xmin_peak estimators) in plain numpy loops, written from its
description, not from wdiv's code: windows are cut with ordinary numpy slicing (so a negative start
reads as it does there), the peak histogram is binned as torch.histc bins, the KS scan keeps the
reference's D = 1 / alpha = 0 defaults and its argmin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import wdiv.analyze as cli
from wdiv.errors import ConfigError
from wdiv.spectral.farms import (PRESETS, FarmsSettings, farms_fit, linear_evals, peak_fit,
                                 window_starts)
from wdiv.spectral.options import AnalyzeOptions, FarmsOptions
from wdiv.spectral.powerlaw import fit_power_law

REL = 1e-10


# ------------------------------------------------------------------ the reference, restated


def ref_windows_esd(W, m, q, ops, clamp):
    rows, cols = W.shape
    if clamp:
        m = min(m, min(rows, cols))
    mc = int(m * q)
    row_step = max(1, (rows - m) // (ops - 1))
    col_step = max(1, (cols - mc) // (ops - 1))
    n_r = min(ops, max(1, (rows - m) // row_step + 1))
    n_c = min(ops, max(1, (cols - mc) // col_step + 1))
    eigs = []
    for i in range(n_r):
        for j in range(n_c):
            r0 = min(i * row_step, rows - m)
            c0 = min(j * col_step, cols - mc)
            sub = W[r0:r0 + m, c0:c0 + mc]
            eigs.append(np.linalg.svd(sub.astype(np.float64), compute_uv=False) ** 2)
    return np.sort(np.concatenate(eigs))


def ref_conv_blocks(slices, q, conv_norm=0.5):
    """slices: list of (rows, cols) matrices with rows >= cols."""
    rows, cols = slices[0].shape
    if q > 1:
        nr, nc = cols // q, cols
    else:
        nr, nc = cols, cols // (1 / q)
    nr, nc = max(1, int(nr)), max(1, int(nc))
    blocks = []
    for i in range(int(rows // cols)):
        eigs = [np.linalg.svd(W[i * nr:(i + 1) * nr, :nc].astype(np.float64) * math.sqrt(conv_norm),
                              compute_uv=False) ** 2 for W in slices]
        blocks.append(np.sort(np.concatenate(eigs)))
    return blocks


def ref_median_alpha(eigs, xmin_pos=2):
    eigs = np.sort(eigs)
    n_all = len(eigs)
    i = int(n_all / xmin_pos)
    n = float(n_all - i)
    return 1 + n / (np.sum(np.log(eigs[i:])) - n * np.log(eigs[i]))


def ref_peak_alpha(eigs, bins=100):
    eigs = np.sort(eigs)
    n_all = len(eigs)
    logs = np.log10(eigs)
    lo, hi = logs.min(), logs.max()
    idx = np.minimum(((logs - lo) / (hi - lo) * bins).astype(int), bins - 1)  # torch.histc bins
    counts = np.bincount(idx, minlength=bins)
    edges = np.linspace(lo, hi, bins + 1)
    xmin2 = 10 ** edges[np.argmax(counts)]
    xmin_min, xmin_max = np.log10(0.95 * xmin2), 1.5 * xmin2
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(n_all - i)
        alpha = 1 + n / (np.sum(np.log(eigs[i:])) - n * np.log(xmin))
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = np.max(np.abs(1 - (eigs[i:] / xmin) ** (1 - alpha) - np.arange(n) / n))
    return alphas[np.argmin(ds)]


def _pareto(rng, shape, mu):
    return (rng.pareto(mu, shape) + 1.0) * rng.choice([-1.0, 1.0], shape)


def _matrices():
    rng = np.random.default_rng(11)
    return {
        "gauss_300x500": rng.standard_normal((300, 500)),
        "pareto1_257x190": _pareto(rng, (257, 190), 1.0),
        "pareto2_120x640": _pareto(rng, (120, 640), 2.0),
        "student_75x333": rng.standard_t(3, (75, 333)),  # 50 < 75 < 100: the negative-start slice
        "gauss_10x512": rng.standard_normal((10, 512)),  # a CIFAR-10 head
    }


# ------------------------------------------------------------------ linear layers


@pytest.mark.parametrize("name", list(_matrices()))
@pytest.mark.parametrize("m,q,ops,clamp", [(100, 1.0, 9, False), (100, 1.0, 9, True), (64, 2.0, 5, False),
                                            (90, 0.5, 4, True), (150, 1.0, 3, False)])
def test_linear_windows_pool_the_reference_esd(name, m, q, ops, clamp):
    W = _matrices()[name]
    s = FarmsSettings(window=m, windows_per_dim=ops, aspect_ratio=q, clamp_window=clamp)
    ours = linear_evals(W, s)
    ref = ref_windows_esd(W, m, q, ops, clamp)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=REL, atol=REL * ref[-1])


@pytest.mark.parametrize("name", list(_matrices()))
def test_median_and_peak_alpha_equal_the_reference(name):
    W = _matrices()[name]
    for preset, ref_fit in (("imagecls", ref_median_alpha), ("llm-pruning", ref_peak_alpha)):
        s = FarmsSettings(**{**PRESETS[preset].__dict__, "window": 60, "windows_per_dim": 6})
        fit = farms_fit(W, s)
        ref = ref_fit(ref_windows_esd(W, 60, 1.0, 6, s.clamp_window))
        assert fit["status"] == "success", (name, preset, fit)
        assert fit["alpha"] == pytest.approx(ref, rel=1e-9), (name, preset)


def test_ks_choice_is_weightwatchers_fit_of_the_pooled_esd():
    W = _matrices()["pareto1_257x190"]
    s = FarmsSettings(window=50, windows_per_dim=4, xmin="ks")
    expected = fit_power_law(ref_windows_esd(W, 50, 1.0, 4, False), method="ks")
    fit = farms_fit(W, s)
    assert fit["alpha"] == pytest.approx(expected["alpha"], rel=1e-9)
    assert fit["xmin"] == pytest.approx(expected["xmin"], rel=1e-9)
    assert fit["alpha"] != pytest.approx(farms_fit(W, FarmsSettings(window=50, windows_per_dim=4))["alpha"])


def test_window_grid_is_the_references():
    assert window_starts(512, 100, 9) == [0, 51, 102, 153, 204, 255, 306, 357, 408]  # last window ends at 508
    assert window_starts(105, 100, 9) == [0, 1, 2, 3, 4, 5]  # step clamped to 1
    assert window_starts(100, 100, 9) == [0]
    assert window_starts(75, 100, 9) == [-25]  # read as W[50:75] (numpy/torch negative start)
    assert window_starts(300, 100, 1) == [0]


def test_heavy_tailed_alpha_is_the_tail_exponent():
    """Square windows of a Pareto(mu=1) matrix keep the heavy-tail exponent 1 + mu/2 (KS xmin)."""
    rng = np.random.default_rng(4)
    W = _pareto(rng, (2048, 256), 1.0)
    fit = farms_fit(W, FarmsSettings(window=256, windows_per_dim=8, xmin="ks"))
    assert fit["status"] == "success"
    assert fit["alpha"] == pytest.approx(1.5, abs=0.15)


# ------------------------------------------------------------------ conv layers


@pytest.mark.parametrize("shape,q", [((64, 16, 3, 3), 1.0), ((40, 24, 3, 3), 1.0), ((96, 32, 3, 3), 2.0),
                                     ((50, 20, 1, 1), 0.5)])
def test_conv_alpha_is_the_mean_over_blocks_pooled_across_slices(shape, q):
    rng = np.random.default_rng(sum(shape))
    kernel = _pareto(rng, shape, 2.0)
    # the reference's channels-last slices W[:, :, i, j], transposed to rows >= cols
    slices = [kernel[:, :, i, j] if shape[0] >= shape[1] else kernel[:, :, i, j].T
              for i in range(shape[2]) for j in range(shape[3])]
    blocks = ref_conv_blocks(slices, q)
    expected = np.mean([ref_median_alpha(b) for b in blocks])
    fit = farms_fit(np.stack(slices), FarmsSettings(aspect_ratio=q), conv=True)
    assert fit["n_blocks"] == len(blocks) == shape[0] // shape[1]
    assert fit["alpha"] == pytest.approx(expected, rel=1e-9)


def test_a_conv_layer_through_analyze_uses_conv_norm_not_per_slice_scaling():
    torch = pytest.importorskip("torch")
    from wdiv.spectral import analyze

    rng = np.random.default_rng(5)
    kernel = _pareto(rng, (48, 16, 3, 3), 1.5).astype(np.float32)
    slices = [kernel[:, :, i, j].astype(np.float64) for i in range(3) for j in range(3)]
    expected = np.mean([ref_peak_alpha(b) for b in ref_conv_blocks(slices, 1.0)])
    for pool in (True, False):
        df = analyze({"conv.weight": torch.from_numpy(kernel)}, farms=True, farms_preset="llm-pruning", pool=pool)
        if pool:
            assert df.alpha_farms.iloc[0] == pytest.approx(expected, rel=1e-8)
        else:  # per slice: each slice's own blocks, the same conv_norm
            one = np.mean([ref_peak_alpha(b) for b in ref_conv_blocks(slices[:1], 1.0)])
            assert df.alpha_farms.iloc[0] == pytest.approx(one, rel=1e-8)


# ------------------------------------------------------------------ presets and options


def test_presets_are_the_papers_experiment_settings():
    img, llm = PRESETS["imagecls"], PRESETS["llm-pruning"]
    assert (img.window, img.aspect_ratio, img.windows_per_dim, img.xmin, img.clamp_window) == (100, 1.0, 9, "median", False)
    assert (llm.window, llm.aspect_ratio, llm.windows_per_dim, llm.xmin, llm.clamp_window) == (2000, 1.0, 15, "peak", True)
    assert FarmsOptions().settings() == img
    over = FarmsOptions(preset="llm-pruning", windows_per_dim=10, xmin="ks").settings()
    assert (over.window, over.windows_per_dim, over.xmin, over.clamp_window) == (2000, 10, "ks", True)
    opts = AnalyzeOptions.from_kwargs(farms=True, farms_preset="llm-pruning", farms_xmin="median")
    assert opts.farms_options.settings().xmin == "median"
    with pytest.raises(ConfigError, match="farms_preset"):
        FarmsOptions(preset="nope")
    with pytest.raises(ConfigError, match="farms_xmin"):
        FarmsOptions(xmin="mid")


def test_cli_farms_options(tmp_path, capsys):
    args = cli.build_parser().parse_args(["x", "--farms", "--farms-preset", "llm-pruning", "--farms-xmin", "ks"])
    assert cli.check_args(args).farms_options.settings() == FarmsSettings(
        window=2000, windows_per_dim=15, xmin="ks", clamp_window=True)
    assert cli.main([str(tmp_path), "--farms-preset", "imagecls"]) == 2
    assert "--farms-preset: needs --farms" in capsys.readouterr().err
    assert cli.main([str(tmp_path), "--farms", "--farms-aspect-ratio", "0"]) == 2
    assert "--farms-aspect-ratio" in capsys.readouterr().err


def test_degenerate_esds_fail_instead_of_returning_zero():
    # a rank-one matrix: more than half of every window's eigenvalues are zero
    W = np.outer(np.arange(1.0, 201.0), np.ones(150))
    fit = farms_fit(W, FarmsSettings(window=50, windows_per_dim=3))
    assert fit["status"] == "failed" and math.isnan(fit["alpha"])
    with pytest.raises(ValueError):
        peak_fit(np.ones(10))


def test_the_options_fingerprint_records_farms_as_resolved():
    """The default preset asked for by name, or its values given explicitly, is the same procedure and
    so one fingerprint (outputs stay up to date); FARMS options without --farms change nothing."""
    from wdiv.spectral.options import AnalyzeOptions, FarmsOptions

    default = AnalyzeOptions(farms=True).fingerprint()
    named = AnalyzeOptions(farms=True, farms_options=FarmsOptions(preset="imagecls", window=100, xmin="median"))
    assert named.fingerprint() == default
    assert default["farms_options"] == {"preset": "imagecls", "window": 100, "windows_per_dim": 9,
                                        "aspect_ratio": 1.0, "xmin": "median"}
    assert AnalyzeOptions(farms=True, farms_options=FarmsOptions(window=50)).fingerprint() != default
    off = AnalyzeOptions(farms=False, farms_options=FarmsOptions(window=50)).fingerprint()
    assert off == AnalyzeOptions().fingerprint() and off["farms_options"] is None


def test_a_window_with_no_column_is_refused_before_any_file_is_read():
    from wdiv.spectral.options import FarmsOptions

    with pytest.raises(ConfigError, match="farms_aspect_ratio"):
        FarmsOptions(window=10, aspect_ratio=0.05)  # floor(10 x 0.05) = 0 columns
