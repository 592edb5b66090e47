"""The report's parts on small hand-made tables: differences, unchanged layers, baseline
matching, categories and tests, each checked against scipy / statsmodels directly."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway

from wdiv.report import stats as rstats
from wdiv.report.cells import annotate, match_baselines
from wdiv.report.deltas import frozen_layers, layer_deltas, metrics_present
from wdiv.report.tables import accuracy_correlations, category_table, category_tests, level_trend, monotonic_statement


def _spectra(names_shapes, **metrics):
    rows = []
    for i, (name, n, m) in enumerate(names_shapes):
        rows.append({"longname": name, "N": n, "M": m, "rf": 1, **{k: v[i] for k, v in metrics.items()}})
    return pd.DataFrame(rows)


def test_layer_deltas_pairs_by_name_and_shape_and_lists_the_rest():
    pre = _spectra([("a", 10, 4), ("b", 20, 4), ("head", 32, 5), ("gone", 8, 8)], alpha=[3.0, 4.0, 5.0, 2.0])
    ft = _spectra([("b", 20, 4), ("a", 10, 4), ("head", 32, 10), ("new", 9, 9)], alpha=[4.5, 2.0, 1.0, 7.0])
    out, excluded = layer_deltas(ft, pre, ["alpha"])
    assert out["longname"].tolist() == ["b", "a"]  # fine-tuned file order kept
    assert out["dM_alpha"].tolist() == [0.5, -1.0]
    assert out[["alpha_pre", "alpha_ft"]].to_numpy().tolist() == [[4.0, 4.5], [3.0, 2.0]]
    reasons = dict(zip(excluded["longname"], excluded["reason"]))
    assert set(reasons) == {"head", "gone", "new"}
    assert "5 -> 10" in reasons["head"]


def test_layer_deltas_failed_fit_gives_nan_not_a_number():
    pre = _spectra([("a", 10, 4)], alpha=[3.0])
    ft = _spectra([("a", 10, 4)], alpha=[np.nan])
    out, _ = layer_deltas(ft, pre, ["alpha"])
    assert math.isnan(out["dM_alpha"].iloc[0])
    assert not out["unchanged"].iloc[0]


def test_unchanged_from_spectra_and_from_weights_where_hashes_exist():
    pre = _spectra([("a", 10, 4), ("b", 10, 4), ("c", 10, 4)], alpha=[3.0, np.nan, 4.0], log_norm=[1.0, 2.0, 1.5])
    ft = _spectra([("a", 10, 4), ("b", 10, 4), ("c", 10, 4)], alpha=[3.0, np.nan, 4.0], log_norm=[1.0, 2.0, 1.6])
    out, _ = layer_deltas(ft, pre, ["alpha", "log_norm"])
    assert out["unchanged"].tolist() == [True, True, False]  # NaN == NaN before and after: unchanged
    assert set(out["unchanged_by"]) == {"spectra"}
    # the weights decide when both tables hash them: identical metrics but changed weights is changed
    pre["weights_sha256"], ft["weights_sha256"] = ["h1", "h2", "h3"], ["h1", "CHANGED", "h3"]
    out, _ = layer_deltas(ft, pre, ["alpha", "log_norm"])
    assert out["unchanged"].tolist() == [True, False, True]
    assert set(out["unchanged_by"]) == {"weights"}


def test_frozen_layers_are_those_unchanged_in_every_run_of_the_cell():
    layers = pd.DataFrame({"cell": ["c"] * 4 + ["d"] * 2, "run_id": ["r1", "r1", "r2", "r2", "r3", "r3"],
                           "longname": ["x", "y", "x", "y", "x", "y"], "slice_index": 0,
                           "unchanged": [True, True, True, False, False, True]})
    assert frozen_layers(layers, ["cell"]).tolist() == [True, False, True, False, False, True]


def _runs(specs, **keys):
    rows = []
    for arm, level, seed, extra in specs:
        rows.append({"run_id": f"{arm}/{level}/{seed}/{extra.get('recipe', 'r')}", "exp": arm, "arm": arm,
                     "level": level, "level_index": 1, "variant": None, "seed": seed, "model": "m", "data": "d",
                     "recipe": "r", "pretrained_sha256": "s", "pretrained_kind": "builtin", **keys, **extra})
    return annotate(pd.DataFrame(rows))


def test_match_baselines_within_the_cell_seed_and_checkpoint():
    runs = _runs([("baseline", None, 0, {}), ("baseline", None, 1, {}), ("dropout", 0.1, 1, {}), ("dropout", 0.1, 2, {}),
                  ("dropout", 0.1, 0, {"model": "other"}), ("dropout", 0.1, 0, {"recipe": "paper"}),
                  ("baseline", None, 0, {"recipe": "paper"}), ("dropout", 0.1, 1, {"pretrained_sha256": "t"})])
    runs.loc[runs.index[-1], "run_id"] = "dropout/othersha"
    got = dict(zip(runs["run_id"], match_baselines(runs)[0]))
    assert got["dropout/0.1/1/r"] == "baseline/None/1/r"
    assert got["baseline/None/0/r"] == "baseline/None/0/r"
    assert pd.isna(got["dropout/0.1/2/r"])  # no seed-2 baseline
    assert pd.isna(got["dropout/othersha"])  # another starting checkpoint
    assert got["dropout/0.1/0/paper"] == "baseline/None/0/paper"  # the recipe's own baseline, not the default one
    other_model = runs[runs["model"] == "other"]["run_id"].iloc[0]
    assert pd.isna(got[other_model])


def test_runs_from_their_own_initial_weights_match_without_a_shared_checkpoint():
    runs = _runs([("baseline", None, 0, {"pretrained_sha256": "init-a"}), ("dropout", 0.1, 0, {"pretrained_sha256": "init-b"})],
                 pretrained_kind="initial")
    assert match_baselines(runs)[0].tolist() == ["baseline/None/0/r"] * 2


def test_several_baselines_for_one_key_are_reported():
    runs = _runs([("baseline", None, 0, {}), ("dropout", 0.1, 0, {}), ("baseline", None, 0, {})])
    runs.loc[2, "run_id"] = "paper/default/seed0"
    got, notes = match_baselines(runs)
    assert got.iloc[1] == "baseline/None/0/r"  # first by run_id
    (line,) = notes
    assert "2 baselines for model=m, data=d, recipe=r, seed=0" in line and "D uses baseline/None/0/r" in line


def _run_table(values: dict[tuple[str, float], list[float]], variant=None) -> pd.DataFrame:
    """(arm, level) -> per-seed layer-mean dM of log_norm; D filled as dM minus a zero baseline."""
    rows = []
    for (arm, level), per_seed in values.items():
        for seed, v in enumerate(per_seed):
            rows.append({"run_id": f"{arm}{level}s{seed}{variant}", "arm": arm, "level": level, "level_index": 1,
                         "variant": variant, "seed": seed, "mean_dM_log_norm": v, "mean_D_log_norm": v,
                         "model": "m", "data": "d", "recipe": "r"})
    return annotate(pd.DataFrame(rows))


@pytest.mark.parametrize(
    "values, expected",
    [
        ({1e-5: [0.001, 0.002], 1e-4: [-0.01, -0.012], 1e-3: [-0.1, -0.09]}, "Yes"),
        ({1e-5: [0.001, 0.002], 1e-4: [0.02, 0.03], 1e-3: [-0.1, -0.09]}, "No"),
        ({1e-5: [-0.05, -0.05], 1e-4: [-0.05, -0.05]}, "No"),  # flat is not falling
    ],
)
def test_monotonic_statement_is_computed_both_ways(values, expected):
    found = monotonic_statement(_run_table({("weight_decay", lvl): v for lvl, v in values.items()}))
    assert found["statement"].startswith(expected + ":")
    assert found["monotonic"] is (expected == "Yes")
    assert "mean dlog_norm" in found["statement"]
    if expected == "No" and len(values) == 3:
        assert "1e-05 -> 0.0001" in found["statement"]


def test_monotonic_statement_without_levels_says_so():
    assert "cannot be assessed" in monotonic_statement(_run_table({("dropout", 0.1): [0.0]}))["statement"]
    assert monotonic_statement(_run_table({("weight_decay", 1e-4): [0.0]}))["monotonic"] is None


def _layers_for(runs: pd.DataFrame, values_per_layer) -> pd.DataFrame:
    rows = []
    for r in runs.to_dict("records"):
        for i, v in enumerate(values_per_layer(r)):
            rows.append({**{k: r[k] for k in ("run_id", "cell", "arm", "variant", "category", "level", "seed")},
                         "longname": f"l{i}", "slice_index": 0, "D_log_norm": v})
    return pd.DataFrame(rows)


def test_category_table_pools_levels_per_seed_adjusts_and_shows_small_n():
    runs = _run_table({("dropout", 0.1): [0.1, 0.3, 0.2], ("dropout", 0.5): [0.5, 0.9, 0.4], ("weight_decay", 1e-3): [-0.2]})
    layers = _layers_for(runs, lambda r: [r["mean_D_log_norm"] - 0.01, r["mean_D_log_norm"] + 0.01])
    cat = category_table(runs, layers, ["log_norm"])
    pooled = cat[(cat["category"] == "dropout") & (cat["level"] == "all")].iloc[0]
    per_seed = [np.mean([0.1, 0.5]), np.mean([0.3, 0.9]), np.mean([0.2, 0.4])]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert pooled["n_seeds"] == 3
    assert pooled["mean_D"] == pytest.approx(np.mean(per_seed))
    assert (pooled["ci_low_D"], pooled["ci_high_D"]) == pytest.approx((lo, hi))
    assert pooled["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue)
    assert pooled["published_n_layers"] == 2
    single = cat[(cat["category"] == "weight_decay") & (cat["level"] != "all")].iloc[0]
    assert single["n_seeds"] == 1 and math.isnan(single["ci_low_D"]) and single["note"] == "n=1: no CI"
    levels = cat[(cat["level"] != "all") & cat["p"].notna()]
    assert levels["p_holm"].tolist() == pytest.approx(list(multipletests(levels["p"], method="holm")[1]))
    assert levels["q_bh"].tolist() == pytest.approx(list(multipletests(levels["p"], method="fdr_bh")[1]))


def test_category_tests_match_scipy_and_statsmodels_under_both_schemes():
    rng = np.random.default_rng(0)
    frames = []
    for arm, shift in (("dropout", 0.0), ("weight_decay", -0.05), ("augment", 0.01)):
        frames.append(_run_table({(arm, lvl): [0.0, 0.0, 0.0] for lvl in (1, 2)}))
    runs = pd.concat(frames, ignore_index=True)
    shifts = {"dropout": 0.0, "weight_decay": -0.05, "augment": 0.01}
    layer_values = {r: shifts[a] + rng.normal(0, 0.01, 5) for r, a in zip(runs["run_id"], runs["arm"])}
    layers = _layers_for(runs, lambda r: layer_values[r["run_id"]])
    runs["mean_D_log_norm"] = runs["run_id"].map(lambda r: layer_values[r].mean())
    anova, pairs = category_tests(runs, layers, ["log_norm"])

    arms = ("dropout", "weight_decay", "augment")
    seed_groups = {a: runs[runs.arm == a].groupby("seed")["mean_D_log_norm"].mean().to_numpy() for a in arms}
    layer_groups = {a: layers[layers.arm == a].groupby(["level", "longname"])["D_log_norm"].mean()
                    .groupby("longname").mean().to_numpy() for a in arms}
    assert all(len(v) == 5 for v in layer_groups.values())  # one sample per layer
    for scheme, groups, equal_var in ((rstats.SEED_SAMPLES, seed_groups, False), (rstats.LAYER_SAMPLES, layer_groups, True)):
        row = anova[(anova["samples"] == scheme) & (anova["test"] == rstats.ONE_WAY)].iloc[0]
        ref = stats.f_oneway(*groups.values())
        assert row["F"] == pytest.approx(ref.statistic, rel=1e-10)
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-10)
        sub = pairs[pairs["samples"] == scheme]
        pair = sub[(sub["category_a"] == "dropout") & (sub["category_b"] == "weight_decay")].iloc[0]
        ref_t = stats.ttest_ind(groups["dropout"], groups["weight_decay"], equal_var=equal_var)
        assert pair["p"] == pytest.approx(ref_t.pvalue, rel=1e-10)
        assert pair["test"] == (rstats.STUDENT_T if equal_var else rstats.WELCH_T)
        assert pair["t"] > 0  # dropout's D above weight decay's
        assert sub["p_holm"].tolist() == pytest.approx(list(multipletests(sub["p"], method="holm")[1]))
        assert sub["q_bh"].tolist() == pytest.approx(list(multipletests(sub["p"], method="fdr_bh")[1]))
    welch = anova[anova["test"] == rstats.WELCH].iloc[0]
    ref = anova_oneway(list(seed_groups.values()), use_var="unequal")
    assert welch["samples"] == rstats.SEED_SAMPLES
    assert (welch["F"], welch["p"], welch["df_den"]) == pytest.approx((ref.statistic, ref.pvalue, ref.df_denom), rel=1e-10)
    assert anova["n"].iloc[0] == "dropout=3, weight_decay=3, augment=3"
    assert not (anova["samples"] == rstats.LAYER_SAMPLES).sum() > 1  # no Welch for the published scheme


def test_category_tests_with_one_seed_report_nan_not_a_p_value():
    runs = _run_table({("dropout", 0.1): [0.1], ("weight_decay", 0.1): [0.2]})
    layers = _layers_for(runs, lambda r: [r["mean_D_log_norm"]])
    anova, pairs = category_tests(runs, layers, ["log_norm"])
    assert anova["p"].isna().all() and anova["note"].str.len().gt(0).all()
    assert pairs["p"].isna().all()


def test_level_trend_on_value_for_numbers_and_on_diversity_for_named_levels():
    runs = annotate(pd.DataFrame({
        "run_id": list("abcd"), "arm": "augment", "variant": None, "seed": 0, "model": "m", "data": "d", "recipe": "r",
        "level": ["flip", "autoaugment", "randaugment", "augmix"], "level_index": [1, 2, 3, 4],
        "mean_D_alpha": [0.1, 0.2, 0.25, 0.4],
    }))
    none = level_trend(runs, ["alpha"]).iloc[0]
    assert none["x"] == "" and math.isnan(none["spearman_rho"]) and "no strength" in none["note"]
    runs["diversity_vendi_embed"] = [3.0, 1.0, 2.0, 4.0]
    trend = level_trend(runs, ["alpha"]).iloc[0]
    assert trend["x"] == "diversity_vendi_embed"
    ref = stats.spearmanr([3.0, 1.0, 2.0, 4.0], [0.1, 0.2, 0.25, 0.4])
    assert (trend["spearman_rho"], trend["p"]) == pytest.approx((ref.statistic, ref.pvalue))
    numeric = _run_table({("dropout", 0.1): [0.1], ("dropout", 0.3): [0.3], ("dropout", 0.7): [0.2]})
    row = level_trend(numeric, ["log_norm"]).iloc[0]
    assert row["x"] == "level" and row["spearman_rho"] == pytest.approx(stats.spearmanr([0.1, 0.3, 0.7], [0.1, 0.3, 0.2]).statistic)


def test_accuracy_correlations_against_scipy():
    runs = annotate(pd.DataFrame({"model": "m", "data": "d", "recipe": "r", "arm": "dropout", "variant": None,
                                  "test_acc": [0.8, 0.85, 0.9, 0.7], "ood_acc": [0.5, 0.6, 0.55, 0.4],
                                  "mean_alpha_ft": [3.0, 3.5, 4.0, 2.0], "mean_dM_alpha": [0, 0.1, 0.2, -0.1],
                                  "mean_D_alpha": [0, 0.1, 0.2, -0.1], "diversity_weighted_vs": [1.0, 2.0, 3.0, 0.5]}))
    corr = accuracy_correlations(runs, ["alpha"])
    row = corr[(corr.x == "diversity_weighted_vs") & (corr.y == "ood_acc")].iloc[0]
    ref = stats.pearsonr(runs["diversity_weighted_vs"], runs["ood_acc"])
    assert row["pearson_r"] == pytest.approx(ref.statistic)
    assert row["pearson_p"] == pytest.approx(ref.pvalue)
    assert row["n_runs"] == 4 and row["cell"] == "m/d/r"


def test_alpha_farms_is_compared_only_when_both_tables_have_it():
    pre = _spectra([("a", 10, 4)], alpha=[3.0], alpha_farms=[2.5], log_norm=[1.0])
    ft = _spectra([("a", 10, 4)], alpha=[3.5], alpha_farms=[2.0], log_norm=[1.1])
    assert metrics_present(ft, pre) == ["alpha", "log_norm", "alpha_farms"]
    assert metrics_present(ft, pre.drop(columns="alpha_farms")) == ["alpha", "log_norm"]
    out, _ = layer_deltas(ft, pre, metrics_present(ft, pre))
    assert out["dM_alpha_farms"].iloc[0] == pytest.approx(-0.5)


def test_t_interval_matches_scipy_and_n1_has_no_interval():
    x = [0.1, 0.4, 0.35, 0.2]
    got = rstats.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert got["n"] == 4
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    one = rstats.t_interval([0.3])
    assert one["mean"] == 0.3 and one["n"] == 1 and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])


def test_an_older_runs_filtered_variant_is_the_add_filter_category():
    """Runs of the former third mode and of add + filter are one category, not two."""
    runs = pd.DataFrame({"arm": ["synthetic"] * 4, "variant": ["filtered", "add+filter", "add", None],
                         "model": "m", "data": "d", "recipe": "r"})
    out = annotate(runs)
    assert out["category"].tolist() == ["synthetic:add+filter", "synthetic:add+filter", "synthetic:add", "synthetic"]
    assert out["variant"].tolist() == ["add+filter", "add+filter", "add", ""]


def test_per_layer_figure_draws_levels_off_the_grid():
    """A soup's group (level_index null) is drawn as a line of its own, not dropped."""
    import matplotlib
    matplotlib.use("Agg")
    from wdiv.report.figures import per_layer_d

    rows = [{"arm": arm, "variant": variant, "level": level, "level_index": index, "seed": seed,
             "longname": name, "layer_order": order, "D_log_norm": 0.1 * order + seed}
            for arm, variant, level, index in (("dropout", None, 0.1, 0), ("soup", "uniform", "dropout", None),
                                               ("soup", "greedy", "dropout", None), ("soup", "uniform", "weight_decay", None))
            for seed in (0, 1) for order, name in enumerate(("a", "b", "c"))]
    fig = per_layer_d(pd.DataFrame(rows), "log_norm")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    labels = sorted(t.get_text() for t in panels["soup"].get_legend().get_texts())
    assert labels == ["greedy dropout", "uniform dropout", "uniform weight_decay"]
    assert len(panels["dropout"].get_legend().get_texts()) == 1
