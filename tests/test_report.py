"""wdiv.report on a fabricated analysed study with known injected effects (no training needed)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _fake_study import EFFECTS, METRICS, SKIPPED_RUNS, make_study
from wdiv import report
from wdiv.report import stats as compare


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = make_study(tmp_path_factory.mktemp("study"), diversity=True)
    assert report.main([str(root), "--formats", "png", "--figure-metrics", "alpha,log_norm"]) == 0
    out = root / "report"
    tables = {name: pd.read_csv(out / f"{name}.csv") for name in
              ("runs", "layers", "categories", "anova", "pairwise", "level_trend", "correlations", "accuracy", "skipped")}
    return root, out, tables


def test_outputs_have_the_contract_columns(study):
    _, out, t = study
    for col in ["run_id", "exp", "arm", "level", "level_index", "variant", "seed", "model", "data",
                "test_acc", "test_ece", "test_loss", "ood_acc", "ood_gaussian_noise", "diversity_weighted_vs",
                "baseline_run_id", "n_layers"]:
        assert col in t["runs"].columns, col
    for m in METRICS:
        assert {f"mean_{m}_ft", f"mean_dM_{m}", f"mean_D_{m}"} <= set(t["runs"].columns)
        assert {f"{m}_pre", f"{m}_ft", f"dM_{m}", f"D_{m}"} <= set(t["layers"].columns)
    assert {"run_id", "arm", "level", "seed", "longname", "N", "M"} <= set(t["layers"].columns)
    assert {"category", "level", "metric", "mean_D", "ci_low_D", "ci_high_D", "mean_dM", "n_seeds"} <= set(
        t["categories"].columns
    )
    assert set(t["anova"]["samples"]) == {compare.SEED_SAMPLES, compare.LAYER_SAMPLES}
    assert set(t["categories"]["metric"]) == set(METRICS)
    for name in ("summary.md", "categories.tex", "accuracy.tex", "figures/per_layer_D_alpha.png",
                 "figures/level_D_log_norm.png", "figures/accuracy_vs_weighted_vs.png"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    assert not (out / "figures" / "per_layer_D_entropy.png").exists()  # --figure-metrics honoured


def test_baseline_own_double_difference_is_exactly_zero(study):
    layers = study[2]["layers"]
    base = layers[layers["arm"] == "baseline"]
    assert len(base) > 0
    for m in METRICS:
        assert (base[f"D_{m}"] == 0.0).all(), m
        assert (base[f"dM_{m}"] != 0.0).any()  # dM itself is not trivially zero


def test_injected_effects_are_recovered_with_sign(study):
    cats = study[2]["categories"]
    for (arm, level), effect in EFFECTS.items():
        for metric in ("alpha", "log_norm", "log_spectral_norm"):
            row = cats[(cats.category == arm) & (cats.metric == metric) & (cats.level.astype(str) == str(level))]
            assert len(row) == 1
            expected = effect.get(metric, 0.0)
            assert row["mean_D"].iloc[0] == pytest.approx(expected, abs=2e-3), (arm, level, metric)
            if expected:
                assert np.sign(row["mean_D"].iloc[0]) == np.sign(expected)
                assert row["n_seeds"].iloc[0] == 2


def test_category_ci_matches_scipy_from_layers_csv(study):
    t = study[2]
    per_run = t["layers"].groupby("run_id")["D_log_norm"].mean()
    runs = t["runs"].set_index("run_id")
    wd = runs[(runs.arm == "weight_decay") & (runs.level == 1e-3)]
    x = per_run[wd.index].to_numpy()
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    row = t["categories"][(t["categories"].category == "weight_decay") & (t["categories"].metric == "log_norm")
                          & (t["categories"].level.astype(str) == "0.001")].iloc[0]
    assert (row["ci_low_D"], row["ci_high_D"]) == pytest.approx((lo, hi), rel=1e-9)
    seeds = {a: t["runs"][t["runs"].arm == a].groupby("seed")["mean_D_log_norm"].mean() for a in ("dropout", "weight_decay")}
    anova = t["anova"][(t["anova"].metric == "log_norm") & (t["anova"].samples == compare.SEED_SAMPLES)].iloc[0]
    assert anova["p"] == pytest.approx(stats.f_oneway(*seeds.values()).pvalue, rel=1e-9)
    # published variant beside it: one sample per layer (seed-averaged), n = layers, labelled
    lay = t["layers"][t["layers"].run_id.isin(wd.index)].groupby("longname")["D_log_norm"].mean().to_numpy()
    lo, hi = stats.t.interval(0.95, len(lay) - 1, loc=lay.mean(), scale=stats.sem(lay))
    assert row["published_n_layers"] == len(lay) == 7
    assert (row["published_ci_low_D"], row["published_ci_high_D"]) == pytest.approx((lo, hi), rel=1e-9)
    pooled = t["categories"][(t["categories"].category == "weight_decay") & (t["categories"].metric == "log_norm")
                             & (t["categories"].level.astype(str) == "all")].iloc[0]
    assert pooled["anova_p_seeds"] == pytest.approx(anova["p"], rel=1e-12)


def test_skipped_runs_are_listed_and_never_averaged(study):
    _, out, t = study
    summary = (out / "summary.md").read_text()
    skipped = dict(zip(t["skipped"]["run_id"], t["skipped"]["reason"]))
    assert set(skipped) == set(SKIPPED_RUNS)
    for run_id, reason in SKIPPED_RUNS.items():
        assert reason in skipped[run_id]
        assert run_id in summary
        assert run_id not in set(t["runs"]["run_id"]) and run_id not in set(t["layers"]["run_id"])
    assert len(t["runs"]) == 2 + 2 * 2 * 2
    assert "head" not in set(t["layers"]["longname"])
    excluded = pd.read_csv(out / "excluded_layers.csv")
    assert set(excluded["longname"]) == {"head"}
    assert "shape M 5 -> 10" in summary


def test_summary_states_the_weight_decay_trend_and_latex_is_escaped(study):
    _, out, _ = study
    summary = (out / "summary.md").read_text()
    assert "Yes: mean dlog_norm falls monotonically with weight_decay strength" in summary
    tex = (out / "categories.tex").read_text()
    assert "\\begin{tabular}" in tex and "weight\\_decay" in tex and "log\\_norm" in tex
    acc = (out / "accuracy.tex").read_text()
    assert "test\\_acc" in acc and "ood\\_acc" in acc


def test_non_monotonic_weight_decay_and_single_seed_are_reported_as_such(tmp_path):
    effects = dict(EFFECTS)
    effects[("weight_decay", 1e-3)] = {"log_norm": +0.05}
    root = make_study(tmp_path, seeds=(0,), effects=effects, extras=False)
    assert report.main([str(root), "--no-figures"]) == 0
    summary = (root / "report" / "summary.md").read_text()
    assert "No: mean dlog_norm does not fall monotonically" in summary
    assert "n=1, no CI" in summary
    cats = pd.read_csv(root / "report" / "categories.csv")
    assert (cats["n_seeds"] == 1).all() and cats.loc[cats.category != "baseline", "ci_low_D"].isna().all()
    anova = pd.read_csv(root / "report" / "anova.csv")
    assert anova.loc[anova.samples == compare.SEED_SAMPLES, "p"].isna().all()  # one seed: no test
    assert anova.loc[anova.samples == compare.LAYER_SAMPLES, "p"].notna().all()  # the published variant still runs
    assert not (root / "report" / "figures").exists()


def _write_options(root, options):
    import json

    for run_json in root.rglob("run.json"):
        (run_json.parent / "spectra_summary.json").write_text(json.dumps({"wdiv": {"options": options}}))


def test_reference_spectra_computed_once_with_the_recorded_options_when_missing(tmp_path):
    from wdiv.report.collect import collect

    ckpt = tmp_path / "pretrained.safetensors"
    ckpt.write_bytes(b"placeholder")
    root = make_study(tmp_path / "runs", extras=False, pretrained=str(ckpt))
    bases = sorted(root.rglob("spectra_base.csv"))
    reference = pd.read_csv(bases[0])
    for path in bases:
        path.unlink()
    calls = []

    def fake_analyze(path, options):
        calls.append((path, options))
        return reference

    # without recorded options the report refuses to guess them
    col = collect(root, analyze=fake_analyze)
    assert calls == [] and len(col.runs) == 0
    assert col.skipped["reason"].str.contains("no spectra_summary.json recording the options").all()

    options = {"fit": "hill", "mp_fit": False, "min_evals": 10}
    _write_options(root, options)
    col = collect(root, analyze=fake_analyze)
    assert calls == [(str(ckpt), options)]  # once per checkpoint and options, with exactly those options
    assert col.skipped.empty and len(col.runs) == 10
    rep = report.build(col)
    assert (rep.layers.loc[rep.layers.arm == "baseline", "D_log_norm"] == 0).all()


def test_reference_analysis_uses_the_recorded_options_for_real(tmp_path):
    """The real engine, given the recorded options (hill fit, no MP fit), reproduces what analyze writes."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from wdiv.report.collect import engine_analyze
    from wdiv.spectral import analyze

    g = torch.Generator().manual_seed(0)
    ckpt = tmp_path / "ref.safetensors"
    save_file({"fc.weight": torch.randn(96, 32, generator=g)}, str(ckpt))
    options = {"fit": "hill", "mp_fit": False, "farms_options": {"window": None}}
    got = engine_analyze(str(ckpt), options)
    want = analyze(str(ckpt), fit="hill", mp_fit=False)
    assert got["alpha"].tolist() == want["alpha"].tolist()
    assert got["alpha"].iloc[0] != analyze(str(ckpt))["alpha"].iloc[0]  # the default fit would differ


def test_runs_analysed_with_other_options_than_their_baseline_are_skipped(tmp_path):
    import json

    root = make_study(tmp_path, seeds=(0,), extras=False)
    _write_options(root, {"fit": "ks"})
    odd = root / "dropout" / "level0.1" / "seed0" / "spectra_summary.json"
    odd.write_text(json.dumps({"wdiv": {"options": {"fit": "hill"}}}))
    assert report.main([str(root), "--no-figures"]) == 0
    skipped = pd.read_csv(root / "report" / "skipped.csv").set_index("run_id")["reason"]
    assert "other options than its baseline baseline/baseline/seed0: fit='hill' vs 'ks'" in skipped["dropout/level0.1/seed0"]
    assert "dropout/level0.1/seed0" not in set(pd.read_csv(root / "report" / "runs.csv")["run_id"])


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "wdiv.report", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr
    root = tmp_path / "empty"
    (root / "a").mkdir(parents=True)
    (root / "a" / "run.json").write_text('{"status": "running", "arm": "baseline", "seed": 0}')
    empty = subprocess.run([sys.executable, "-m", "wdiv.report", str(root)], capture_output=True, text=True)
    assert empty.returncode == 1 and "no complete analysed run" in empty.stderr
    assert "status=running" in (root / "report" / "summary.md").read_text()


def test_esd_overlay_reads_the_saved_eigenvalues(tmp_path):
    root = make_study(tmp_path / "runs", extras=False)
    rng = np.random.default_rng(0)
    for i, run_json in enumerate(sorted(root.rglob("run.json"))):
        np.savez_compressed(run_json.parent / "esd.npz", **{"blocks.0.mlp.fc1": rng.pareto(2.0, 32) + i})
        np.savez_compressed(run_json.parent / "esd_base.npz", **{"blocks.0.mlp.fc1": rng.pareto(2.0, 32)})
    rep = report.build(report.collect(root))
    assert report.esd_figure(rep, None, None) is None  # default layer patch_embed.proj was not saved
    fig = report.esd_figure(rep, None, "blocks.0.mlp.fc1")
    assert fig is not None
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 3 and labels[0].startswith("pretrained") and "weight_decay/level0.001/seed0" in labels[1]
    assert "baseline/baseline/seed0" in labels[2]
    assert all("n=32" in label for label in labels)
    (root / "baseline" / "baseline" / "seed0" / "esd.npz").unlink()
    assert report.esd_figure(rep, None, "blocks.0.mlp.fc1") is None  # a missing file: no figure, not a crash


def test_duplicate_baselines_are_noted_in_the_summary(tmp_path):
    import shutil

    root = make_study(tmp_path, seeds=(0,), extras=False)
    shutil.copytree(root / "baseline" / "baseline" / "seed0", root / "paper" / "default" / "seed0")
    assert report.main([str(root), "--no-figures"]) == 0
    summary = (root / "report" / "summary.md").read_text()
    assert "Note: 2 baselines for model=vit_micro, data=digits, recipe=unrecorded, seed=0" in summary and "D uses baseline/baseline/seed0" in summary
