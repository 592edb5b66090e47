"""wdiv.report.across on a fabricated layer table with known effects: the published pooled
per-layer statistic against a direct pandas recomputation, its tests against scipy /
statsmodels called directly, and the design-respecting mixed model (and its labelled fallback)."""


import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from wdiv.report import across as ac

CATEGORIES = {"dropout": [0.1, 0.5], "weight_decay": [1e-4, 1e-3], "synthetic:replace": [0.3, 0.7]}
# Injected D of log_norm per category at level index 0 (doubled at index 1); alpha is pure noise.
EFFECT = {"dropout": 0.0, "weight_decay": -0.05, "synthetic:replace": 0.01}
KEYS = ["model", "data", "recipe", "cell", "run_id", "arm", "variant", "category", "level", "level_index", "seed"]
METRICS = ["log_norm", "alpha"]


def fabricate(cells=None, seeds=3, data_sd=0.04, seed_sd=0.02, noise=0.003, rng=0):
    """Layer and run tables as the report builds them: D per (run, layer), baseline D = 0.

    D = effect(category, level) + dataset offset + (cell, seed) offset + layer trend + noise;
    every model has 6 blocks plus an `extra` layer in dataset A only.
    """
    rng = np.random.default_rng(rng)
    cells = cells or {"vit": {"A": "r1", "B": "r1", "C": "r2"}}
    rows = []
    for model, datasets in cells.items():
        for data, recipe in datasets.items():
            cell = f"{model}/{data}/{recipe}"
            data_off = rng.normal(0, data_sd)
            names = [f"{model}.blocks.{i}" for i in range(6)] + ([f"{model}.extra"] if data == "A" else [])
            for seed in range(seeds):
                seed_off = rng.normal(0, seed_sd)
                for cat, levels in [*CATEGORIES.items(), ("baseline", [None])]:
                    arm, _, variant = cat.partition(":")
                    for index, level in enumerate(levels):
                        for order, name in enumerate(names):
                            row = dict(model=model, data=data, recipe=recipe, cell=cell, run_id=f"{cell}/{cat}/{level}/{seed}",
                                       arm=arm, variant=variant, category=cat, level=level, level_index=index, seed=seed,
                                       longname=name, slice_index=0, layer_order=order, D_log_norm=0.0, D_alpha=0.0)
                            if cat != "baseline":
                                row["D_log_norm"] = (EFFECT[cat] * (index + 1) + data_off + seed_off + 0.002 * order
                                                     + rng.normal(0, noise))
                                row["D_alpha"] = rng.normal(0, 0.1)
                            rows.append(row)
    return pd.DataFrame(rows)


def run_table(layers):
    """One row per run with its layer-mean D (NaN skipped), as the report's runs table has."""
    means = layers.groupby(KEYS, sort=False, dropna=False)[["D_log_norm", "D_alpha"]].mean()
    return means.add_prefix("mean_").reset_index()


@pytest.fixture(scope="module")
def study():
    layers = fabricate()
    return layers, run_table(layers), ac.across(layers, run_table(layers), METRICS, dims=("data",))


def published_values(layers, metric, group_by):
    """Independent recomputation: seeds -> configurations -> cells, one value per layer."""
    rows = layers[layers["category"] != "baseline"]
    per_config = rows.groupby(["model", "data", "cell", "category", "level", "longname", "slice_index"])[f"D_{metric}"].mean()
    per_cell = per_config.groupby(["model", "data", "cell", "category", "longname", "slice_index"]).mean().reset_index()
    return per_cell.groupby([*group_by, "category", "longname", "slice_index"]).agg(
        value=(f"D_{metric}", "mean"), n_cells=("cell", "nunique")).reset_index()


# ----------------------------------------------------------------------------- published scheme


def test_pooled_layers_equal_direct_recomputation(study):
    layers, _, result = study
    for metric in METRICS:
        expect = published_values(layers, metric, ["model"])
        got = result.layers.merge(expect, on=["model", "category", "longname", "slice_index"], how="outer", indicator=True)
        assert (got["_merge"] == "both").all()
        np.testing.assert_allclose(got[f"D_{metric}"], got["value"], rtol=1e-12, atol=1e-15)
        assert (got["n_cells_x"] == got["n_cells_y"]).all()
    assert "baseline" not in set(result.layers["category"])
    assert set(result.layers["group"]) == {"vit"}


def test_n_cells_counts_a_layer_present_in_one_dataset(study):
    _, _, result = study
    extra = result.layers[result.layers["longname"] == "vit.extra"]
    assert len(extra) == 3 and (extra["n_cells"] == 1).all() and (extra["datasets"] == "A").all()
    blocks = result.layers[result.layers["longname"] != "vit.extra"]
    assert (blocks["n_cells"] == 3).all() and (blocks["datasets"] == "A;B;C").all()
    assert (blocks["recipes"] == "r1;r2").all()  # recipe is not a grouping key; it is listed


def test_nan_values_are_skipped_one_by_one():
    """A failed fit drops one value: seeds are averaged per configuration before configurations,
    so a NaN seed does not shift the weight between levels; an all-NaN configuration drops out."""
    layers = fabricate(cells={"vit": {"A": "r1", "B": "r1"}})
    in_a = (layers["data"] == "A") & (layers["category"] == "dropout")
    one_seed = in_a & (layers["longname"] == "vit.blocks.2") & (layers["level"] == 0.1) & (layers["seed"] == 0)
    all_seeds = in_a & (layers["longname"] == "vit.blocks.3") & (layers["level"] == 0.5)
    layers.loc[one_seed | all_seeds, "D_log_norm"] = np.nan
    result = ac.across(layers, run_table(layers), ["log_norm"])

    def d(data, name, level, seeds=(0, 1, 2)):
        x = layers[(layers["data"] == data) & (layers["category"] == "dropout") & (layers["longname"] == name)
                   & (layers["level"] == level) & layers["seed"].isin(seeds)]["D_log_norm"].to_numpy()
        assert np.isfinite(x).all()
        return x.mean()

    expect = {
        "vit.blocks.2": ((d("A", "vit.blocks.2", 0.1, (1, 2)) + d("A", "vit.blocks.2", 0.5)) / 2
                         + (d("B", "vit.blocks.2", 0.1) + d("B", "vit.blocks.2", 0.5)) / 2) / 2,
        "vit.blocks.3": (d("A", "vit.blocks.3", 0.1) + (d("B", "vit.blocks.3", 0.1) + d("B", "vit.blocks.3", 0.5)) / 2) / 2,
    }
    for name, value in expect.items():
        row = result.layers[(result.layers["longname"] == name) & (result.layers["category"] == "dropout")]
        assert row["D_log_norm"].item() == pytest.approx(value, rel=1e-12)


def test_anova_and_student_t_equal_direct_scipy(study):
    layers, _, result = study
    for metric in METRICS:
        values = published_values(layers, metric, ["model"])
        samples = {c: values[values["category"] == c]["value"].to_numpy() for c in CATEGORIES}
        row = result.tests[(result.tests["metric"] == metric)].iloc[0]
        direct = stats.f_oneway(*samples.values())
        assert row["F"] == pytest.approx(direct.statistic, rel=1e-10)
        assert row["p"] == pytest.approx(direct.pvalue, rel=1e-8)
        assert (row["df_num"], row["df_den"]) == (2, 21 - 3)
        pairs = result.pairwise[result.pairwise["metric"] == metric]
        assert len(pairs) == 3
        for r in pairs.itertuples():
            t = stats.ttest_ind(samples[r.category_a], samples[r.category_b], equal_var=True)
            assert r.t == pytest.approx(t.statistic, rel=1e-10) and r.p == pytest.approx(t.pvalue, rel=1e-8)
            assert r.mean_a == pytest.approx(samples[r.category_a].mean())
    log_norm = result.tests[result.tests["metric"] == "log_norm"].iloc[0]
    assert log_norm["p"] < 1e-6  # the injected weight-decay effect is seen


def test_holm_and_bh_within_group_and_metric(study):
    _, _, result = study
    for _, family in result.pairwise.groupby(["group", "metric"]):
        p = family["p"].to_numpy()
        np.testing.assert_allclose(family["p_holm"], multipletests(p, method="holm")[1])
        np.testing.assert_allclose(family["q_bh"], multipletests(p, method="fdr_bh")[1])
    # one family over both metrics would give other values: the family really is (group, metric)
    pooled = multipletests(result.pairwise["p"].to_numpy(), method="holm")[1]
    assert not np.allclose(pooled, result.pairwise["p_holm"])


# ----------------------------------------------------------------------------- design-respecting model


def test_mixed_model_recovers_the_injected_effect_and_is_labelled(study):
    _, runs, result = study
    rows = result.model_tests[result.model_tests["metric"] == "log_norm"]
    assert (rows["method"] == ac.MIXED).all(), rows["note"].iloc[0]
    assert (rows["reference"] == "dropout").all()
    wd = rows[rows["contrast"] == "weight_decay - dropout"].iloc[0]
    assert wd["coef"] < 0 and wd["p"] < 1e-6 and wd["stat_name"] == "z"
    assert wd["ci_low"] < -0.075 < wd["ci_high"]  # injected: -0.05 and -0.10 at the two levels
    # balanced design: the GLS estimate is the difference of the run means, in D units (not rescaled)
    real = runs[runs["category"] != "baseline"].groupby("category")["mean_D_log_norm"].mean()
    assert wd["coef"] == pytest.approx(real["weight_decay"] - real["dropout"], rel=1e-6)
    omnibus = rows[rows["kind"] == "omnibus"].iloc[0]
    assert omnibus["stat_name"] == "chi2" and omnibus["df"] == 2 and omnibus["p"] < 1e-6
    variances = rows[rows["kind"] == "variance"].set_index("term")["coef"]
    assert set(variances.index) == {"data var", "seed var", "residual var"}
    assert "groups=data" in omnibus["formula"] and "C(seed_key)" in omnibus["formula"]


def test_fallback_on_a_design_mixedlm_cannot_fit():
    layers = fabricate(cells={"vit": {"A": "r1", "B": "r1"}}, seeds=1, data_sd=0.0, seed_sd=0.0)  # no between-dataset variance
    runs = run_table(layers)
    result = ac.across(layers, runs, ["log_norm"])
    rows = result.model_tests
    assert rows["method"].str.contains("fallback").all() and rows["method"].str.contains("dataset").all()
    assert rows["note"].str.contains("MixedLM").all()  # the reason is recorded, not dropped
    real = runs[runs["category"] != "baseline"].assign(category=lambda f: pd.Categorical(
        f["category"], categories=["dropout", "weight_decay", "synthetic:replace"]))
    fit = smf.ols("mean_D_log_norm ~ C(category) + C(data)", real).fit()
    direct = anova_lm(fit, typ=2).loc["C(category)"]
    omnibus = rows[rows["kind"] == "omnibus"].iloc[0]
    assert omnibus["stat"] == pytest.approx(direct["F"], rel=1e-10)
    assert omnibus["p"] == pytest.approx(direct["PR(>F)"], rel=1e-8)
    wd = rows[rows["contrast"] == "weight_decay - dropout"].iloc[0]
    assert wd["coef"] == pytest.approx(fit.params["C(category)[T.weight_decay]"]) and wd["coef"] < 0


def test_fallback_when_mixedlm_raises(study, monkeypatch):
    layers, runs, _ = study

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(ac.smf, "mixedlm", broken)
    rows = ac.across(layers, runs, ["log_norm"]).model_tests
    assert rows["method"].str.contains("fallback").all()
    assert rows["note"].str.contains("LinAlgError: Singular matrix").all()


def test_reference_category_can_be_chosen(study):
    layers, runs, _ = study
    rows = ac.across(layers, runs, ["log_norm"], reference="weight_decay").model_tests
    dropout = rows[rows["contrast"] == "dropout - weight_decay"].iloc[0]
    assert dropout["coef"] > 0 and (rows["reference"] == "weight_decay").all()


# ----------------------------------------------------------------------------- across model, data,model


def two_models():
    return fabricate(cells={"vit": {"A": "r1", "B": "r1"}, "cnn": {"A": "r1", "B": "r1"}})


def test_across_model_pools_layers_of_two_models_within_each_dataset():
    layers = two_models()
    result = ac.across(layers, run_table(layers), ["log_norm"], dims=("model",))
    assert result.dims == ("model",) and set(result.layers["group"]) == {"A", "B"}
    a = result.layers[(result.layers["group"] == "A") & (result.layers["category"] == "dropout")]
    assert set(a["model"]) == {"vit", "cnn"} and len(a) == 14  # 7 layers of each model, kept apart
    values = published_values(layers, "log_norm", ["data", "model"])
    for data in ("A", "B"):
        here = values[values["data"] == data]
        samples = [here[here["category"] == c]["value"].to_numpy() for c in CATEGORIES]
        row = result.tests[result.tests["group"] == data].iloc[0]
        assert row["F"] == pytest.approx(stats.f_oneway(*samples).statistic, rel=1e-10)
        assert row["n"] == ", ".join(f"{c}={len(s)}" for c, s in zip(CATEGORIES, samples))
    omnibus = result.model_tests[result.model_tests["kind"] == "omnibus"]
    assert set(omnibus["group"]) == {"A", "B"}
    assert omnibus["formula"].str.contains("groups=model|C\\(model\\)").all()


def test_across_data_and_model_averages_datasets_then_pools_models():
    layers = two_models()
    result = ac.across(layers, run_table(layers), ["log_norm"], dims=("model", "data"))
    assert result.dims == ("data", "model") and set(result.layers["group"]) == {"all"}
    values = published_values(layers, "log_norm", ["model"])
    got = result.layers.merge(values, on=["model", "category", "longname", "slice_index"])
    assert len(got) == len(values) == len(result.layers)
    np.testing.assert_allclose(got["D_log_norm"], got["value"], rtol=1e-12)
    samples = [values[values["category"] == c]["value"].to_numpy() for c in CATEGORIES]
    assert result.tests["F"].item() == pytest.approx(stats.f_oneway(*samples).statistic, rel=1e-10)
    omnibus = result.model_tests[result.model_tests["kind"] == "omnibus"].iloc[0]
    if omnibus["method"] == ac.MIXED:
        assert "groups=model" in omnibus["formula"] and "C(data)" in omnibus["formula"]
    else:
        assert "C(data) + C(model)" in omnibus["formula"]


def test_dims_are_checked_and_normalised():
    assert ac.normalise_dims("model,data") == ("data", "model")
    assert ac.normalise_dims(["data"]) == ("data",)
    with pytest.raises(ValueError):
        ac.normalise_dims(("recipe",))


# ----------------------------------------------------------------------------- markdown


def test_markdown_says_which_test_is_which_and_uses_the_given_formatter(study):
    _, _, result = study
    calls = []

    def formatter(table):
        calls.append(list(table.columns))
        return f"<table {len(table)} rows>\n"

    text = ac.across_markdown(result, ["log_norm"], formatter)
    assert "layers as samples" in text and "optimistic" in text
    assert "Mixed model (respects the design)" in text and "random intercept for the dataset" in text
    assert len(calls) == 4 and "<table 1 rows>" in text and "<table 3 rows>" in text  # log_norm only
    plain = ac.across_markdown(result, ["log_norm"])
    assert "| group | metric |" in plain and ac.MIXED in plain
