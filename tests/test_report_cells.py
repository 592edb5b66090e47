"""Acceptance tests of wdiv.report on a fabricated three-cell study (tests/_fake_cells.py).

Every statistic is recomputed here directly, from layers.csv and from what the fabricated inputs
are known to contain, with pandas / scipy / statsmodels, and compared with the report's tables.
"""

import gc
import json
import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway

from _fake_cells import (
    CELLS, EFFECTS, FAILED_FIT, FROZEN, GRID, HASH_CHANGED, HASH_FROZEN, HASHED_CELL, METRICS, MODEL, ONCE_UNCHANGED, PAPER,
    RECIPE, RECIPE_OFFSET, SEEDS, SKIPPED_RUNS, VISION, baseline_id, category, expected_mean_D, kept_layers,
    make_cells_study, runs_of,
)
from wdiv import report

UNCHANGED = "unchanged by fine-tuning"
SEEDS_SCHEME, LAYERS_SCHEME = "seeds", "layers (published)"
CELL_COLUMNS = ["model", "data", "recipe", "cell"]
LAYER_KEY = ["longname", "slice_index"]
EXACT = dict(rel=1e-9, abs=1e-12)
TOL_EFFECT = 5e-3  # about 5 sd of a 3-seed mean of run layer-mean D under the fabricated noise
TABLES = ("runs", "layers", "categories", "anova", "pairwise", "level_trend", "excluded_layers", "skipped")


def _level(value):
    """A level as read from a csv (number, name, 'all' or missing) -> float, str or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _load(root):
    out = root / "report"
    tables = {name: pd.read_csv(out / f"{name}.csv") for name in TABLES}
    for name in ("runs", "layers", "categories", "level_trend", "excluded_layers"):
        t = tables[name]
        if "variant" in t:
            t["variant"] = t["variant"].fillna("").astype(str)
        if "level" in t:
            t["level_v"] = t["level"].map(_level)
    tables["summary"] = json.loads((out / "summary.json").read_text())
    tables["root"] = root
    return tables


def _run_report(root, *extra):
    assert report.main([str(root), "--no-figures", *extra]) == 0
    return _load(root)


@pytest.fixture(scope="module", autouse=True)
def _cheap_gc():
    """statsmodels' Holm calls gc.collect() on every use; freezing the objects alive at import (pandas,
    scipy, ...) keeps those collections cheap, for the report and for these checks. Results are unaffected."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = make_cells_study(tmp_path_factory.mktemp("cells"))
    return _run_report(root)


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    root = make_cells_study(tmp_path_factory.mktemp("cells_keep"))
    return _run_report(root, "--keep-unchanged")


@pytest.fixture(scope="module")
def across(tmp_path_factory):
    root = make_cells_study(tmp_path_factory.mktemp("cells_across"))
    assert report.main([str(root), "--no-figures", "--across", "data"]) == 0
    return root / "report", pd.read_csv(root / "report" / "layers.csv")


def _cell_of(t, data, recipe):
    """The `cell` value the report gave a (data, recipe) cell (its printable name is its own business)."""
    cells = set(t["runs"].loc[(t["runs"].data == data) & (t["runs"].recipe == recipe), "cell"])
    assert len(cells) == 1, (data, recipe, cells)
    return cells.pop()


def _expected_runs():
    return {r["run_id"]: r for data, recipe in CELLS for r in runs_of(data, recipe)}


def _per_run(t):
    """One row per run, recomputed from layers.csv: its keys and its layer means of every D_ and dM_ column."""
    if "_per_run" not in t:
        layers = t["layers"]
        cols = [c for m in METRICS for c in (f"D_{m}", f"dM_{m}")]
        keys = layers.groupby("run_id")[["cell", "category", "arm", "level_v", "seed"]].first()
        t["_per_run"] = keys.join(layers.groupby("run_id")[cols].mean())
    return t["_per_run"]


def _seed_values(t, cell, cat, level, column):
    """Seeds as samples: per seed, the mean over the category's runs (at `level`, or all levels for 'all')
    of the run's layer mean of `column` (e.g. D_alpha); `cat` may be an arm pool. A Series by seed."""
    runs = _per_run(t)
    sub = runs[runs.cell == cell]
    in_cat = sub[sub.category == cat]
    if in_cat.empty:  # arm pool
        in_cat = sub[sub.arm == cat]
    if level != "all":
        in_cat = in_cat[in_cat.level_v == level]
    return in_cat.groupby("seed")[column].mean()


def _run_means(layers, metric, column="D"):
    return layers.groupby("run_id")[f"{column}_{metric}"].mean()


def _published_samples(layers, cell, cat, metric):
    """Layers as samples: per layer, D averaged over seeds within each configuration, then over the
    category's configurations (variant and level; an arm pool's configurations span its variants)."""
    sub = layers[layers.cell == cell]
    in_cat = sub[sub.category == cat]
    if in_cat.empty:
        in_cat = sub[sub.arm == cat]
    in_cat = in_cat.assign(_config=in_cat.variant + "|" + in_cat.level.astype(str))
    per_config = in_cat.groupby(["_config", *LAYER_KEY])[f"D_{metric}"].mean()
    return per_config.groupby(level=LAYER_KEY).mean().dropna()


def _non_baseline_categories(layers, cell):
    cats = layers.loc[(layers.cell == cell) & (layers.arm != "baseline"), "category"]
    return sorted(set(cats))


# ----------------------------------------------------------------------------- contract shape


def test_tables_have_the_contract_columns(study):
    t = study
    layer_cols = ["run_id", "model", "data", "recipe", "cell", "arm", "variant", "category", "level", "level_index",
                  "seed", "baseline_run_id", "longname", "slice_index", "layer_order", "N", "M", "rf"]
    layer_cols += [c for m in METRICS for c in (f"{m}_pre", f"{m}_ft", f"dM_{m}", f"D_{m}")]
    missing = [c for c in layer_cols if c not in t["layers"].columns]
    assert not missing
    assert {"run_id", *CELL_COLUMNS, "longname", "reason"} <= set(t["excluded_layers"].columns)
    cat_cols = [*CELL_COLUMNS, "category", "arm", "variant", "level", "level_index", "metric", "mean_D", "sd_D",
                "ci_low_D", "ci_high_D", "mean_dM", "n_seeds", "p", "p_holm", "q_bh", "published_mean_D",
                "published_n_layers", "note"]
    assert not [c for c in cat_cols if c not in t["categories"].columns]
    assert not [c for c in [*CELL_COLUMNS, "metric", "samples", "test", "F", "df_num", "df_den", "p", "k", "n", "note"]
                if c not in t["anova"].columns]
    assert not [c for c in [*CELL_COLUMNS, "metric", "samples", "category_a", "category_b", "mean_a", "mean_b", "n_a",
                            "n_b", "t", "df", "p", "p_holm", "q_bh", "test"] if c not in t["pairwise"].columns]
    assert not [c for c in [*CELL_COLUMNS, "category", "metric", "x"] if c not in t["level_trend"].columns]
    assert not [c for c in [*CELL_COLUMNS, "baseline_run_id", "category", "arm", "variant"] if c not in t["runs"].columns]
    assert set(t["categories"].metric) == set(METRICS)


# ----------------------------------------------------------------------------- cells, runs, baselines


def test_three_cells_each_with_three_seeds_never_six(study):
    t = study
    cats = t["categories"]
    assert set(map(tuple, cats[["model", "data", "recipe"]].drop_duplicates().to_numpy())) == {
        (MODEL, d, r) for d, r in CELLS}
    assert (cats["n_seeds"] == len(SEEDS)).all(), cats.loc[cats.n_seeds != len(SEEDS), ["cell", "category", "level", "n_seeds"]]
    for name in ("anova", "level_trend", "excluded_layers", "layers", "runs"):  # pairwise: r-paper has no pair
        assert cats["cell"].nunique() == t[name]["cell"].nunique() == 3, name
    summary = t["summary"]
    assert summary["n_runs"] == sum(len(runs_of(d, r)) for d, r in CELLS) == 60
    assert summary["n_skipped"] == len(SKIPPED_RUNS)
    found = {(c["model"], c["data"], c["recipe"]): c for c in summary["cells"]}
    assert set(found) == {(MODEL, d, r) for d, r in CELLS} and len(summary["cells"]) == 3
    for (model, data, recipe), c in found.items():
        assert c["n_runs"] == len(runs_of(data, recipe)) and c["n_seeds"] == 3, c
        assert "weight_decay" in c["headline"]
    # the weight-decay sentence is per cell: digits falls monotonically, cifar10 was fabricated not to
    assert found[(MODEL, "digits", RECIPE)]["headline"].startswith("Yes")
    assert found[(MODEL, "cifar10", RECIPE)]["headline"].startswith("No")
    assert not found[(MODEL, "digits", PAPER)]["headline"].startswith(("Yes", "No"))  # no weight-decay runs there


def test_runs_are_the_fabricated_ones_and_unmatched_runs_are_skipped(study):
    t = study
    assert set(t["runs"]["run_id"]) == set(_expected_runs())
    skipped = dict(zip(t["skipped"]["run_id"], t["skipped"]["reason"]))
    assert set(skipped) == set(SKIPPED_RUNS)
    for run, reason in SKIPPED_RUNS.items():
        assert skipped[run].startswith(reason), skipped[run]
        assert run not in set(t["layers"]["run_id"]) and run not in set(t["excluded_layers"]["run_id"])


def test_baselines_match_on_data_recipe_and_seed_and_datasets_never_share_one(study):
    t = study
    expected = _expected_runs()
    runs = t["runs"].set_index("run_id")
    for run_id, r in expected.items():
        assert runs.at[run_id, "baseline_run_id"] == baseline_id(r["data"], r["recipe"], r["seed"]), run_id
        assert (runs.at[run_id, "data"], runs.at[run_id, "recipe"]) == (r["data"], r["recipe"])
        assert runs.at[run_id, "category"] == category(r["arm"], r["variant"])
    base = runs.loc[runs["baseline_run_id"]]
    assert (base["data"].to_numpy() == runs["data"].to_numpy()).all()
    assert (base["recipe"].to_numpy() == runs["recipe"].to_numpy()).all()
    assert (base["seed"].to_numpy() == runs["seed"].to_numpy()).all()
    assert (base["arm"] == "baseline").all()
    by_data = runs.groupby("data")["baseline_run_id"].agg(set)
    assert not by_data["digits"] & by_data["cifar10"]
    # layers.csv carries the same baseline per run
    per_run = t["layers"].groupby("run_id")["baseline_run_id"].agg(set)
    assert all(per_run[r] == {runs.at[r, "baseline_run_id"]} for r in per_run.index)


def test_r_paper_dropout_is_matched_to_the_r_paper_baseline(study):
    t = study
    runs = t["runs"].set_index("run_id")
    paper = runs[(runs.recipe == PAPER) & (runs.arm == "dropout")]
    assert len(paper) == 3
    for run_id, row in paper.iterrows():
        assert row["baseline_run_id"] == f"digits/baseline/paper/seed{row['seed']}"
    cats = t["categories"]
    cell = _cell_of(t, "digits", PAPER)
    for metric, injected in EFFECTS[("digits", PAPER, "dropout", "", 0.1)].items():
        row = cats[(cats.cell == cell) & (cats.category == "dropout") & (cats.level_v == 0.1) & (cats.metric == metric)]
        assert len(row) == 1
        got = row["mean_D"].iloc[0]
        # the hashed cell keeps text.proj (D = 0), so the layer mean is 7/8 of the injected effect
        assert got == pytest.approx(injected * len(VISION) / len(kept_layers("digits", PAPER)), abs=TOL_EFFECT)
        assert got == pytest.approx(expected_mean_D("digits", PAPER, "dropout", 0.1, metric), abs=TOL_EFFECT)
        wrong = (injected + RECIPE_OFFSET[PAPER][metric]) * len(VISION) / len(kept_layers("digits", PAPER))
        assert abs(got - wrong) > 0.1  # what the r-default baseline would have given
        other = cats[(cats.cell == _cell_of(t, "digits", RECIPE)) & (cats.category == "dropout")
                     & (cats.level_v == 0.1) & (cats.metric == metric)]["mean_D"].iloc[0]
        assert abs(got - other) > 0.02  # its own effect, not the r-default one


# ----------------------------------------------------------------------------- layers and differences


def test_layers_csv_reproduces_the_inputs_and_the_double_differences(study):
    t = study
    layers = t["layers"]
    assert len(t["runs"]) == 60
    for run_id, sub in layers.groupby("run_id"):
        r = _expected_runs()[run_id]
        ft = pd.read_csv(t["root"] / run_id / "spectra.csv").set_index("longname")
        pre = pd.read_csv(t["root"] / run_id / "spectra_base.csv").set_index("longname")
        names = sub["longname"].tolist()
        assert (sub["slice_index"] == 0).all()
        for m in METRICS:
            assert np.array_equal(sub[f"{m}_ft"].to_numpy(), ft.loc[names, m].to_numpy(), equal_nan=True), (run_id, m)
            assert np.array_equal(sub[f"{m}_pre"].to_numpy(), pre.loc[names, m].to_numpy()), (run_id, m)
        assert r["seed"] == sub["seed"].iloc[0]
    for m in METRICS:
        assert layers[f"dM_{m}"].to_numpy() == pytest.approx((layers[f"{m}_ft"] - layers[f"{m}_pre"]).to_numpy(), nan_ok=True,
                                                             **EXACT)
        base = layers[["run_id", *LAYER_KEY, f"dM_{m}"]].rename(columns={"run_id": "baseline_run_id", f"dM_{m}": "base"})
        merged = layers.merge(base, on=["baseline_run_id", *LAYER_KEY], how="left", validate="many_to_one")
        assert merged["base"].notna().all()
        assert merged[f"D_{m}"].to_numpy() == pytest.approx((merged[f"dM_{m}"] - merged["base"]).to_numpy(), nan_ok=True,
                                                            **EXACT)
    # the failed fit: the layer is kept, only the failed metrics are NaN
    run_id, name, failed = FAILED_FIT
    row = layers[(layers.run_id == run_id) & (layers.longname == name)]
    assert len(row) == 1
    for m in METRICS:
        assert row[f"D_{m}"].isna().iloc[0] == (m in failed), m
    assert layers.drop(index=row.index)[[f"D_{m}" for m in METRICS]].notna().all().all()
    assert (layers.loc[layers.arm == "baseline", [f"D_{m}" for m in METRICS]] == 0).all().all()


def test_frozen_layers_are_excluded_with_the_exact_reason(study):
    t = study
    excluded, layers = t["excluded_layers"], t["layers"]
    unchanged = excluded[excluded.reason == UNCHANGED]
    for run_id, r in _expected_runs().items():
        cell = (r["data"], r["recipe"])
        want = set(FROZEN) | ({HASH_CHANGED} if cell != HASHED_CELL else set())
        got = set(unchanged.loc[unchanged.run_id == run_id, "longname"])
        assert got == want, (run_id, got ^ want)
        assert set(layers.loc[layers.run_id == run_id, "longname"]) == set(kept_layers(*cell)), run_id
        row = unchanged[unchanged.run_id == run_id].iloc[0]
        assert (row["model"], row["data"], row["recipe"]) == (MODEL, *cell)
    head = excluded[excluded.longname == "head"]
    assert set(head["run_id"]) == set(_expected_runs()) and not (head["reason"] == UNCHANGED).any()
    assert not layers["longname"].isin([*FROZEN, "head"]).any()


def test_layer_unchanged_in_only_one_run_is_kept(study):
    layers, excluded = study["layers"], study["excluded_layers"]
    run_id, name = ONCE_UNCHANGED
    assert not ((excluded.run_id == run_id) & (excluded.longname == name)).any()
    row = layers[(layers.run_id == run_id) & (layers.longname == name)]
    assert len(row) == 1
    base = layers[(layers.run_id == row["baseline_run_id"].iloc[0]) & (layers.longname == name)]
    for m in METRICS:
        assert row[f"dM_{m}"].iloc[0] == 0.0
        assert row[f"D_{m}"].iloc[0] == pytest.approx(-base[f"dM_{m}"].iloc[0], **EXACT)
    cifar = layers[layers.data == "cifar10"]
    assert cifar.groupby("run_id")["longname"].apply(lambda s: name in set(s)).all()


def test_changed_weight_hash_keeps_a_layer_whose_spectra_did_not_move(study):
    t = study
    layers, excluded = t["layers"], t["excluded_layers"]
    hashed = layers[(layers.data == HASHED_CELL[0]) & (layers.recipe == HASHED_CELL[1])]
    proj = hashed[hashed.longname == HASH_CHANGED]
    assert set(proj["run_id"]) == {r["run_id"] for r in runs_of(*HASHED_CELL)}
    assert (proj[[f"dM_{m}" for m in METRICS]] == 0).all().all()
    in_hashed = excluded[(excluded.data == HASHED_CELL[0]) & (excluded.recipe == HASHED_CELL[1])]
    assert HASH_CHANGED not in set(in_hashed["longname"])
    # the same spectra without hashes (the other cells): unchanged, left out
    others = excluded[(excluded.longname == HASH_CHANGED) & (excluded.recipe != HASHED_CELL[1])]
    assert set(others["run_id"]) == {r for r, v in _expected_runs().items() if (v["data"], v["recipe"]) != HASHED_CELL}
    assert (others["reason"] == UNCHANGED).all()


def test_equal_weight_hashes_exclude_a_layer_even_when_a_refit_wobbles(study):
    excluded = study["excluded_layers"]
    rows = excluded[(excluded.data == HASHED_CELL[0]) & (excluded.recipe == HASHED_CELL[1])
                    & (excluded.longname == HASH_FROZEN)]
    assert set(rows["run_id"]) == {r["run_id"] for r in runs_of(*HASHED_CELL)}
    assert (rows["reason"] == UNCHANGED).all()


def test_keep_unchanged_keeps_the_frozen_layers_with_zero_dM(kept):
    layers, excluded = kept["layers"], kept["excluded_layers"]
    assert not (excluded["reason"] == UNCHANGED).any()
    assert set(excluded["longname"]) == {"head"}
    for run_id, r in _expected_runs().items():
        sub = layers[layers.run_id == run_id]
        assert set(sub["longname"]) == set(kept_layers(r["data"], r["recipe"])) | set(FROZEN) | {HASH_CHANGED}, run_id
        bitwise = sub[sub.longname.isin(set(FROZEN) - ({HASH_FROZEN} if (r["data"], r["recipe"]) == HASHED_CELL else set()))]
        assert (bitwise[[f"dM_{m}" for m in METRICS]] == 0).all().all()
    assert (kept["categories"]["published_n_layers"].dropna() == len(VISION) + len(FROZEN) + 1).all()


# ----------------------------------------------------------------------------- categories


def _grid_rows():
    """(data, recipe, category, level) of every row categories.csv must hold (level 'all' included)."""
    rows = []
    for data, recipe in CELLS:
        levels = {}
        for arm, variant, level, _ in GRID[(data, recipe)]:
            levels.setdefault(category(arm, variant), []).append(level)
        rows.append((data, recipe, "baseline", None))
        for cat, lvls in levels.items():
            rows += [(data, recipe, cat, lvl) for lvl in lvls] + [(data, recipe, cat, "all")]
        if any(v for a, v, _, _ in GRID[(data, recipe)]):
            rows.append((data, recipe, "synthetic", "all"))
    return rows


def _cat_row(t, data, recipe, cat, level, metric):
    cats = t["categories"]
    cell = _cell_of(t, data, recipe)
    sel = cats[(cats.cell == cell) & (cats.category == cat) & (cats.metric == metric)]
    sel = sel[sel.level_v.isna()] if level is None else sel[sel.level_v == (level if isinstance(level, str) else float(level))]
    assert len(sel) == 1, (data, recipe, cat, level, metric, len(sel))
    return sel.iloc[0]


def test_synthetic_variants_are_separate_categories_plus_an_arm_pool(study):
    t = study
    cats = t["categories"]
    for data, recipe in [("digits", RECIPE), ("cifar10", RECIPE)]:
        cell = _cell_of(t, data, recipe)
        sub = cats[(cats.cell == cell) & (cats.metric == "alpha")]
        assert {"synthetic:replace", "synthetic:add", "synthetic"} <= set(sub["category"])
        rep = sub[sub.category == "synthetic:replace"]
        assert set(rep["level_v"]) == {0.5, 0.9, "all"} and set(rep["arm"]) == {"synthetic"} and set(rep["variant"]) == {"replace"}
        add = sub[sub.category == "synthetic:add"]
        assert set(add["level_v"]) == {0.5, "all"} and set(add["variant"]) == {"add"}
        pool = sub[sub.category == "synthetic"]
        assert len(pool) == 1
        assert (pool["arm"].iloc[0], pool["variant"].iloc[0], pool["level_v"].iloc[0]) == ("synthetic", "all", "all")
        assert (sub.category == "dropout").sum() == 3 and (sub[sub.category == "dropout"]["variant"] == "").all()
    want = {(d, r, c, lvl) for d, r, c, lvl in _grid_rows()}
    got = set()
    for row in cats[cats.metric == "alpha"].itertuples():
        got.add((row.data, row.recipe, row.category, row.level_v))
    assert got == want, got ^ want


def test_injected_effects_are_recovered_per_cell_where_pooling_would_miss_them(study):
    t = study
    for data, recipe, cat, level in _grid_rows():
        for m in METRICS:
            row = _cat_row(t, data, recipe, cat, level, m)
            want = 0.0 if cat == "baseline" else expected_mean_D(data, recipe, cat, level, m)
            assert row["mean_D"] == pytest.approx(want, abs=TOL_EFFECT), (data, recipe, cat, level, m)
            if abs(want) > 2 * TOL_EFFECT:
                assert np.sign(row["mean_D"]) == np.sign(want)
    # the datasets were fabricated with different effects; each cell shows its own, not the pool
    for cat, level, m in [("dropout", 0.5, "alpha"), ("weight_decay", 1e-3, "log_norm"), ("synthetic:add", 0.5, "alpha"),
                          ("synthetic:replace", 0.9, "entropy"), ("synthetic", "all", "alpha")]:
        d = _cat_row(t, "digits", RECIPE, cat, level, m)["mean_D"]
        c = _cat_row(t, "cifar10", RECIPE, cat, level, m)["mean_D"]
        pooled = (expected_mean_D("digits", RECIPE, cat, level, m) + expected_mean_D("cifar10", RECIPE, cat, level, m)) / 2
        assert abs(d - pooled) > 0.02 and abs(c - pooled) > 0.02, (cat, level, m)
    assert _cat_row(t, "digits", RECIPE, "dropout", 0.5, "alpha")["mean_D"] > 0 > _cat_row(t, "cifar10", RECIPE, "dropout", 0.5, "alpha")["mean_D"]


def test_seed_sample_statistics_equal_a_direct_recomputation(study):
    t = study
    for data, recipe, cat, level in _grid_rows():
        cell = _cell_of(t, data, recipe)
        for m in METRICS:
            row = _cat_row(t, data, recipe, cat, level, m)
            lvl = "all" if level is None else level  # the baseline has one configuration
            x = _seed_values(t, cell, cat, lvl, f"D_{m}")
            dm = _seed_values(t, cell, cat, lvl, f"dM_{m}")
            assert sorted(x.index) == list(SEEDS)
            assert row["n_seeds"] == 3
            assert row["mean_D"] == pytest.approx(x.mean(), **EXACT), (cell, cat, level, m)
            assert row["mean_dM"] == pytest.approx(dm.mean(), **EXACT), (cell, cat, level, m)
            if cat == "baseline":
                continue  # D = 0 exactly: no spread, no test
            assert row["sd_D"] == pytest.approx(x.std(ddof=1), rel=1e-9)
            lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
            assert (row["ci_low_D"], row["ci_high_D"]) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
            assert row["p"] == pytest.approx(stats.ttest_1samp(x.to_numpy(), 0.0).pvalue, rel=1e-9)


def test_holm_and_bh_within_cell_and_metric_over_per_level_rows(study):
    cats = study["categories"]
    n_families = 0
    for (cell, metric), grp in cats.groupby(["cell", "metric"]):
        fam = grp[(grp.level.astype(str) != "all") & (grp.category != "baseline") & grp.p.notna()]
        assert len(fam) >= 1
        n_families += 1
        assert fam["p_holm"].to_numpy() == pytest.approx(multipletests(fam["p"], method="holm")[1], rel=1e-9)
        assert fam["q_bh"].to_numpy() == pytest.approx(multipletests(fam["p"], method="fdr_bh")[1], rel=1e-9)
        # the family is the per-level rows of the cell: the digits r-default one has 9 of them
        if cell == _cell_of(study, "digits", RECIPE):
            assert len(fam) == len(GRID[("digits", RECIPE)])
    assert n_families == 3 * len(METRICS)


def test_published_layers_as_samples_statistic(study):
    t = study
    layers = t["layers"]
    for data, recipe, cat, level in _grid_rows():
        if level != "all":
            continue
        cell = _cell_of(t, data, recipe)
        for m in METRICS:
            row = _cat_row(t, data, recipe, cat, "all", m)
            samples = _published_samples(layers, cell, cat, m)
            assert len(samples) == row["published_n_layers"] == len(kept_layers(data, recipe))
            assert row["published_mean_D"] == pytest.approx(samples.mean(), **EXACT), (cell, cat, m)
    # the failed fit unbalances one layer's seeds across the replace levels: levels first is not a plain mean
    cell = _cell_of(t, "digits", RECIPE)
    sub = layers[(layers.cell == cell) & (layers.category == "synthetic:replace")]
    plain = sub.groupby(LAYER_KEY)["D_alpha"].mean().mean()
    row = _cat_row(t, "digits", RECIPE, "synthetic:replace", "all", "alpha")
    assert abs(row["published_mean_D"] - plain) > 1e-4 and row["published_mean_D"] == pytest.approx(
        _published_samples(layers, cell, "synthetic:replace", "alpha").mean(), **EXACT)


# ----------------------------------------------------------------------------- tests across categories


def _groups(t, cell, metric, scheme):
    layers = t["layers"]
    out = {}
    for cat in _non_baseline_categories(layers, cell):
        if scheme == SEEDS_SCHEME:
            out[cat] = _seed_values(t, cell, cat, "all", f"D_{metric}").to_numpy()
        else:
            out[cat] = _published_samples(layers, cell, cat, metric).to_numpy()
    return out


def _anova_row(t, cell, metric, samples, test):
    a = t["anova"]
    sel = a[(a.cell == cell) & (a.metric == metric) & (a.samples == samples) & (a.test == test)]
    assert len(sel) == 1, (cell, metric, samples, test, len(sel))
    return sel.iloc[0]


@pytest.mark.parametrize("data", ["digits", "cifar10"])
def test_seed_anova_classic_and_welch_equal_scipy_and_statsmodels(study, data):
    t = study
    cell = _cell_of(t, data, RECIPE)
    for m in METRICS:
        groups = _groups(t, cell, m, SEEDS_SCHEME)
        assert len(groups) == (5 if data == "digits" else 4) and all(len(g) == 3 for g in groups.values())
        classic = stats.f_oneway(*groups.values())
        row = _anova_row(t, cell, m, SEEDS_SCHEME, "one-way ANOVA")
        assert row["F"] == pytest.approx(classic.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(classic.pvalue, rel=1e-9, abs=1e-300)
        assert (row["df_num"], row["df_den"]) == (len(groups) - 1, 3 * len(groups) - len(groups))
        assert row["k"] == len(groups)
        welch = anova_oneway(list(groups.values()), use_var="unequal")
        row = _anova_row(t, cell, m, SEEDS_SCHEME, "Welch ANOVA")
        assert row["F"] == pytest.approx(welch.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(welch.pvalue, rel=1e-9, abs=1e-300)
        assert (row["df_num"], row["df_den"]) == pytest.approx((welch.df_num, welch.df_denom), rel=1e-9)


@pytest.mark.parametrize("data", ["digits", "cifar10"])
def test_published_anova_equals_f_oneway_over_layer_samples(study, data):
    t = study
    cell = _cell_of(t, data, RECIPE)
    a = t["anova"]
    assert not ((a.samples == LAYERS_SCHEME) & (a.test == "Welch ANOVA")).any()
    for m in METRICS:
        groups = _groups(t, cell, m, LAYERS_SCHEME)
        assert set(groups) >= {"synthetic:replace", "synthetic:add"} and "synthetic" not in groups
        assert all(len(g) == len(VISION) for g in groups.values())
        res = stats.f_oneway(*groups.values())
        row = _anova_row(t, cell, m, LAYERS_SCHEME, "one-way ANOVA")
        assert row["F"] == pytest.approx(res.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(res.pvalue, rel=1e-9, abs=1e-300)
        assert (row["df_num"], row["df_den"]) == (len(groups) - 1, len(VISION) * len(groups) - len(groups))


def test_a_cell_with_one_category_has_no_anova_p(study):
    a = study["anova"]
    rows = a[a.cell == _cell_of(study, "digits", PAPER)]
    assert rows["p"].isna().all()


@pytest.mark.parametrize("scheme", [SEEDS_SCHEME, LAYERS_SCHEME])
def test_pairwise_t_tests_and_their_corrections(study, scheme):
    t = study
    pw = t["pairwise"]
    for data in ("digits", "cifar10"):
        cell = _cell_of(t, data, RECIPE)
        for m in METRICS:
            groups = _groups(t, cell, m, scheme)
            fam = pw[(pw.cell == cell) & (pw.metric == m) & (pw.samples == scheme)]
            assert len(fam) == len(list(combinations(groups, 2)))
            assert set(fam["test"]) == {"Welch t" if scheme == SEEDS_SCHEME else "Student t"}
            for a, b in combinations(groups, 2):
                sel = fam[((fam.category_a == a) & (fam.category_b == b)) | ((fam.category_a == b) & (fam.category_b == a))]
                assert len(sel) == 1, (cell, m, a, b)
                row = sel.iloc[0]
                xa, xb = (groups[a], groups[b]) if row["category_a"] == a else (groups[b], groups[a])
                res = stats.ttest_ind(xa, xb, equal_var=scheme == LAYERS_SCHEME)
                assert row["t"] == pytest.approx(res.statistic, rel=1e-9)
                assert row["p"] == pytest.approx(res.pvalue, rel=1e-9, abs=1e-300)
                assert row["df"] == pytest.approx(res.df, rel=1e-9)
                assert (row["mean_a"], row["mean_b"]) == pytest.approx((xa.mean(), xb.mean()), **EXACT)
                assert (row["n_a"], row["n_b"]) == (len(xa), len(xb))
            ok = fam[fam.p.notna()]
            assert ok["p_holm"].to_numpy() == pytest.approx(multipletests(ok["p"], method="holm")[1], rel=1e-9)
            assert ok["q_bh"].to_numpy() == pytest.approx(multipletests(ok["p"], method="fdr_bh")[1], rel=1e-9)


# ----------------------------------------------------------------------------- level trends


def test_level_trend_on_numeric_levels_and_on_diversity_for_named_levels(study):
    t = study
    trend, layers, runs = t["level_trend"], t["layers"], t["runs"].set_index("run_id")
    cell = _cell_of(t, "digits", RECIPE)
    for m in ("alpha", "log_norm"):
        means = _run_means(layers[layers.cell == cell], m)
        for cat in ("dropout", "weight_decay", "synthetic:replace"):
            ids = runs.index[(runs.cell == cell) & (runs.category == cat)]
            sel = trend[(trend.cell == cell) & (trend.category == cat) & (trend.metric == m)]
            assert set(sel["x"]) == {"level"}, (cat, set(sel["x"]))
            want = stats.spearmanr(pd.to_numeric(runs.loc[ids, "level"]), means[ids]).statistic
            assert sel["spearman_rho"].iloc[0] == pytest.approx(want, rel=1e-9), (cat, m)
        aug = trend[(trend.cell == cell) & (trend.category == "augment") & (trend.metric == m)]
        assert set(aug["x"]) == {"diversity_vendi_embed", "diversity_weighted_vs"}  # never the grid index
        ids = runs.index[(runs.cell == cell) & (runs.category == "augment")]
        for x in ("diversity_vendi_embed", "diversity_weighted_vs"):
            want = stats.spearmanr(runs.loc[ids, x], means[ids]).statistic
            assert aug.loc[aug.x == x, "spearman_rho"].iloc[0] == pytest.approx(want, rel=1e-9), (x, m)
    # alpha rises with strength in digits dropout: the sign is that of the fabricated effects
    sel = trend[(trend.cell == cell) & (trend.category == "dropout") & (trend.metric == "alpha")]
    assert sel["spearman_rho"].iloc[0] > 0.8


# ----------------------------------------------------------------------------- across datasets


def test_across_data_per_layer_means_equal_a_direct_recomputation(across):
    out, layers = across
    table = pd.read_csv(out / "across_data_layers.csv")
    assert {"model", "category", "longname", "slice_index", "metric", "mean_D", "n_cells"} <= set(table.columns)
    assert not table["longname"].isin([*FROZEN, "head"]).any()
    layers = layers.assign(variant=layers["variant"].fillna("").astype(str))
    # weight decay, the synthetic variants and augment exist in the r-default cells only, so the answer does not
    # depend on whether the recipe is part of the across key; dropout does, so it is checked when recipe is a column
    cats = ["weight_decay", "synthetic:replace", "synthetic:add", "augment"]
    keyed = "recipe" in table.columns
    if keyed:
        cats.append("dropout")
    for m in METRICS:
        for cat in cats:
            rows = []
            for data, recipe in CELLS:
                cell_layers = layers[(layers.data == data) & (layers.recipe == recipe)]
                if cat not in set(cell_layers["category"]):
                    continue
                cell = cell_layers["cell"].iloc[0]
                s = _published_samples(cell_layers, cell, cat, m)
                rows.append(s.rename("D").reset_index().assign(recipe=recipe))
            per_cell = pd.concat(rows, ignore_index=True)
            by = (["recipe"] if keyed else []) + LAYER_KEY
            want = per_cell.groupby(by).agg(mean_D=("D", "mean"), n_cells=("D", "size")).reset_index()
            got = table[(table.model == MODEL) & (table.category == cat) & (table.metric == m)]
            merged = want.merge(got, on=by, how="outer", suffixes=("_want", ""), indicator=True)
            assert (merged["_merge"] == "both").all(), (cat, m, merged[merged._merge != "both"])
            assert merged["mean_D"].to_numpy() == pytest.approx(merged["mean_D_want"].to_numpy(), **EXACT), (cat, m)
            assert (merged["n_cells"] == merged["n_cells_want"]).all(), (cat, m)
            shared = merged if not keyed else merged[merged.recipe == RECIPE]
            assert (shared["n_cells"] == (1 if cat == "augment" else 2)).all(), (cat, m)  # digits and cifar10
            assert set(shared["longname"]) == set(VISION)
