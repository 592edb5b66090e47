"""wdiv.compare: differences, baseline matching and statistics, checked against scipy directly."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wdiv.report import stats as compare


def _spectra(names_shapes, **metrics):
    rows = []
    for i, (name, n, m) in enumerate(names_shapes):
        rows.append({"longname": name, "N": n, "M": m, "rf": 1, **{k: v[i] for k, v in metrics.items()}})
    return pd.DataFrame(rows)


def test_layer_deltas_pairs_by_name_and_shape_and_lists_the_rest():
    pre = _spectra([("a", 10, 4), ("b", 20, 4), ("head", 32, 5), ("gone", 8, 8)], alpha=[3.0, 4.0, 5.0, 2.0])
    ft = _spectra([("b", 20, 4), ("a", 10, 4), ("head", 32, 10), ("new", 9, 9)], alpha=[4.5, 2.0, 1.0, 7.0])
    out, excluded = compare.layer_deltas(ft, pre, ["alpha"])
    assert out["longname"].tolist() == ["b", "a"]  # fine-tuned file order kept
    assert out["dM_alpha"].tolist() == [0.5, -1.0]
    assert out[["alpha_pre", "alpha_ft"]].to_numpy().tolist() == [[4.0, 4.5], [3.0, 2.0]]
    reasons = dict(zip(excluded["longname"], excluded["reason"]))
    assert set(reasons) == {"head", "gone", "new"}
    assert "5 -> 10" in reasons["head"]


def test_layer_deltas_failed_fit_gives_nan_not_a_number():
    pre = _spectra([("a", 10, 4)], alpha=[3.0])
    ft = _spectra([("a", 10, 4)], alpha=[np.nan])
    out, _ = compare.layer_deltas(ft, pre, ["alpha"])
    assert math.isnan(out["dM_alpha"].iloc[0])


def test_t_interval_matches_scipy_and_n1_has_no_interval():
    x = [0.1, 0.4, 0.35, 0.2]
    got = compare.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert got["n"] == 4
    assert got["ci_low"] == pytest.approx(lo, rel=1e-12)
    assert got["ci_high"] == pytest.approx(hi, rel=1e-12)
    one = compare.t_interval([0.3])
    assert one["mean"] == 0.3 and one["n"] == 1
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])


def _runs(arm_levels_seeds, keys=None):
    rows = []
    for arm, level, idx, seed in arm_levels_seeds:
        rows.append({"run_id": f"{arm}/{level}/{seed}", "exp": arm, "arm": arm, "level": level, "level_index": idx,
                     "variant": None, "seed": seed, "model": "m", "data": "d", "pretrained_sha256": "s", **(keys or {})})
    return pd.DataFrame(rows)


def test_match_baselines_by_seed_data_model_and_checkpoint():
    runs = _runs([("baseline", None, 0, 0), ("baseline", None, 0, 1), ("dropout", 0.1, 1, 1), ("dropout", 0.1, 1, 2)])
    other = _runs([("dropout", 0.1, 1, 0)], keys={"model": "other"})
    other["run_id"] = "dropout/other"
    runs = pd.concat([runs, other], ignore_index=True)
    got = dict(zip(runs["run_id"], compare.match_baselines(runs)))
    assert got["dropout/0.1/1"] == "baseline/None/1"
    assert got["baseline/None/0"] == "baseline/None/0"
    assert pd.isna(got["dropout/0.1/2"])  # no seed-2 baseline
    assert pd.isna(got["dropout/other"])  # different model


def _run_table(values: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    """(arm, level) -> per-seed layer-mean dM of log_norm; D filled as dM minus a zero baseline."""
    rows = []
    for (arm, level), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rows.append({"run_id": f"{arm}{level}s{seed}", "arm": arm, "level": level, "level_index": 1,
                         "variant": None, "seed": seed, "mean_dM_log_norm": v, "mean_D_log_norm": v})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({1e-5: [0.001, 0.002], 1e-4: [-0.01, -0.012], 1e-3: [-0.1, -0.09]}, "Yes"),
        ({1e-5: [0.001, 0.002], 1e-4: [0.02, 0.03], 1e-3: [-0.1, -0.09]}, "No"),
        ({1e-5: [-0.05, -0.05], 1e-4: [-0.05, -0.05]}, "No"),  # flat is not falling
    ],
)
def test_monotonic_statement_is_computed_both_ways(values, expected):
    runs = _run_table({("weight_decay", lvl): v for lvl, v in values.items()})
    sentence = compare.monotonic_statement(runs)
    assert sentence.startswith(expected + ":")
    assert "mean dlog_norm" in sentence
    if expected == "No" and len(values) == 3:
        assert "1e-05 -> 0.0001" in sentence


def test_monotonic_statement_without_levels_says_so():
    assert "cannot be assessed" in compare.monotonic_statement(_run_table({("dropout", 0.1): [0.0]}))
    assert "cannot be assessed" in compare.monotonic_statement(_run_table({("weight_decay", 1e-4): [0.0]}))


def test_level_summary_pools_levels_per_seed_and_shows_small_n():
    runs = _run_table({("dropout", 0.1): [0.1, 0.3], ("dropout", 0.5): [0.5, 0.9], ("weight_decay", 1e-3): [-0.2]})
    cat = compare.level_summary(runs, ["log_norm"])
    pooled = cat[(cat["category"] == "dropout") & (cat["level"] == "all")].iloc[0]
    per_seed = [np.mean([0.1, 0.5]), np.mean([0.3, 0.9])]
    lo, hi = stats.t.interval(0.95, 1, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert pooled["n_seeds"] == 2
    assert pooled["mean_D"] == pytest.approx(np.mean(per_seed))
    assert (pooled["ci_low_D"], pooled["ci_high_D"]) == pytest.approx((lo, hi))
    single = cat[(cat["category"] == "weight_decay") & (cat["level"] != "all")].iloc[0]
    assert single["n_seeds"] == 1 and math.isnan(single["ci_low_D"]) and single["note"] == "n=1: no CI"


def test_category_tests_match_scipy_with_seeds_and_layers_as_samples():
    rng = np.random.default_rng(0)
    layers, runs = [], []
    for arm, shift in (("dropout", 0.0), ("weight_decay", -0.05), ("augment", 0.01)):
        for level_index in (1, 2):
            for seed in range(3):
                run_id = f"{arm}{level_index}s{seed}"
                d = shift + rng.normal(0, 0.01, 5)
                layers.append(pd.DataFrame({"run_id": run_id, "arm": arm, "variant": None, "level_index": level_index,
                                            "seed": seed, "longname": list("abcde"), "slice_index": 0, "D_log_norm": d}))
                runs.append({"run_id": run_id, "arm": arm, "seed": seed, "mean_D_log_norm": d.mean()})
    layers, runs = pd.concat(layers, ignore_index=True), pd.DataFrame(runs)
    anova, pairs = compare.category_tests(runs, layers, ["log_norm"])

    seed_groups = {a: runs[runs.arm == a].groupby("seed")["mean_D_log_norm"].mean().to_numpy()
                   for a in ("dropout", "weight_decay", "augment")}
    layer_groups = {a: layers[layers.arm == a].groupby(["level_index", "longname"])["D_log_norm"].mean().to_numpy()
                    for a in ("dropout", "weight_decay", "augment")}
    for scheme, groups in ((compare.SEED_SAMPLES, seed_groups), (compare.LAYER_SAMPLES, layer_groups)):
        row = anova[anova["samples"] == scheme].iloc[0]
        ref = stats.f_oneway(*groups.values())
        assert row["F"] == pytest.approx(ref.statistic, rel=1e-10)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-10)
        pair = pairs[(pairs["samples"] == scheme) & (pairs["category_a"] == "dropout")
                     & (pairs["category_b"] == "weight_decay")].iloc[0]
        welch = stats.ttest_ind(groups["dropout"], groups["weight_decay"], equal_var=False)
        assert pair["p"] == pytest.approx(welch.pvalue, rel=1e-10)
        assert pair["t"] > 0  # dropout's D above weight decay's
    assert anova.loc[anova["samples"] == compare.SEED_SAMPLES, "n"].iloc[0] == "dropout=3, weight_decay=3, augment=3"
    assert "published" in compare.LAYER_SAMPLES


def test_category_tests_with_one_seed_report_nan_not_a_p_value():
    layers = pd.DataFrame({"run_id": ["a", "b"], "arm": ["dropout", "weight_decay"], "variant": None,
                           "level_index": 1, "seed": 0, "longname": "x", "slice_index": 0, "D_alpha": [0.1, 0.2]})
    runs = pd.DataFrame({"run_id": ["a", "b"], "arm": ["dropout", "weight_decay"], "seed": 0, "mean_D_alpha": [0.1, 0.2]})
    anova, pairs = compare.category_tests(runs, layers, ["alpha"])
    assert anova["p"].isna().all() and anova["note"].str.len().gt(0).all()
    assert pairs["p"].isna().all()


def test_level_trend_uses_level_index_for_named_levels():
    runs = pd.DataFrame({
        "run_id": list("abcd"), "arm": "augment", "variant": None, "seed": 0,
        "level": ["flip", "autoaugment", "randaugment", "augmix"], "level_index": [1, 2, 3, 4],
        "mean_D_alpha": [0.1, 0.2, 0.25, 0.4],
    })
    trend = compare.level_trend(runs, ["alpha"]).iloc[0]
    assert trend["x"] == "level_index"
    assert trend["spearman_rho"] == pytest.approx(1.0)
    assert trend["p"] == pytest.approx(stats.spearmanr([1, 2, 3, 4], [0.1, 0.2, 0.25, 0.4]).pvalue)


def test_accuracy_correlations_against_scipy():
    runs = pd.DataFrame({"test_acc": [0.8, 0.85, 0.9, 0.7], "ood_acc": [0.5, 0.6, 0.55, 0.4],
                         "mean_alpha_ft": [3.0, 3.5, 4.0, 2.0], "mean_dM_alpha": [0, 0.1, 0.2, -0.1],
                         "mean_D_alpha": [0, 0.1, 0.2, -0.1], "diversity_weighted_vs": [1.0, 2.0, 3.0, 0.5]})
    corr = compare.accuracy_correlations(runs, ["alpha"])
    row = corr[(corr.x == "diversity_weighted_vs") & (corr.y == "ood_acc")].iloc[0]
    ref = stats.pearsonr(runs["diversity_weighted_vs"], runs["ood_acc"])
    assert row["pearson_r"] == pytest.approx(ref.statistic)
    assert row["pearson_p"] == pytest.approx(ref.pvalue)
    assert row["n_runs"] == 4


def test_several_baselines_for_one_key_are_reported():
    runs = _runs([("baseline", None, 0, 0), ("dropout", 0.1, 1, 0)])
    extra = _runs([("baseline", None, 0, 0)])
    extra["run_id"] = "paper/default/seed0"
    runs = pd.concat([runs, extra], ignore_index=True)
    got = compare.match_baselines(runs)
    assert got.iloc[1] == "baseline/None/0"  # first by run_id
    (line,) = compare.baseline_conflicts(runs)
    assert "2 baselines for seed=0" in line and "paper/default/seed0" in line and "D uses baseline/None/0" in line


def test_alpha_farms_is_compared_only_when_both_tables_have_it():
    pre = _spectra([("a", 10, 4)], alpha=[3.0], alpha_farms=[2.5], log_norm=[1.0])
    ft = _spectra([("a", 10, 4)], alpha=[3.5], alpha_farms=[2.0], log_norm=[1.1])
    assert compare.metrics_present(ft, pre) == ["alpha", "log_norm", "alpha_farms"]
    assert compare.metrics_present(ft, pre.drop(columns="alpha_farms")) == ["alpha", "log_norm"]
    out, _ = compare.layer_deltas(ft, pre, compare.metrics_present(ft, pre))
    assert out["dM_alpha_farms"].iloc[0] == pytest.approx(-0.5)
