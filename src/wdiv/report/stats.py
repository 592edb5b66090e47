"""Differences of spectral metrics and their statistics across seeds.

For metric M, layer l and run c: dM(c, l) = M_finetuned - M_pretrained, and the double
difference D(c, l) = dM(c, l) - dM(baseline, l), the baseline being the run with the same seed,
data, model and starting checkpoint. Statistics treat seeds as the samples (independent
trainings); the published layers-as-samples variant is computed beside them, labelled as such,
because layers of one network are not independent draws.

Pure pandas/scipy: tables in, tables out.
"""

from __future__ import annotations

import logging
import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

BASELINE = "baseline"
SPECTRAL_METRICS = (
    "alpha",
    "log_norm",
    "log_spectral_norm",
    "alpha_weighted",
    "log_alpha_norm",
    "stable_rank",
    "entropy",
    "num_spikes",
    "mp_softrank",
)
OPTIONAL_METRICS = ("alpha_farms",)
SHAPE_COLUMNS = ("N", "M", "rf")
RUN_KEYS = ("run_id", "exp", "arm", "level", "level_index", "variant", "seed", "model", "data")
BASELINE_KEYS = ("seed", "data", "model", "pretrained_sha256")
SEED_SAMPLES = "seeds"
LAYER_SAMPLES = "layers (published; layers are not independent)"
CONFIDENCE = 0.95


def metrics_present(*tables: pd.DataFrame) -> list[str]:
    """The spectral metrics every table carries (optional ones only when all have them)."""
    wanted = SPECTRAL_METRICS + OPTIONAL_METRICS
    return [m for m in wanted if all(m in t.columns for t in tables)]


def _layer_key(table: pd.DataFrame) -> pd.DataFrame:
    """longname plus its occurrence number, so per-slice rows (same longname) pair up in order."""
    out = table.reset_index(drop=True)
    out["slice_index"] = out.groupby("longname", sort=False).cumcount()
    out["layer_order"] = np.arange(len(out))
    return out


def _size(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def layer_deltas(
    finetuned: pd.DataFrame, pretrained: pd.DataFrame, metrics: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair layers by longname and shape; return (pre/ft/dM table, excluded layers with reason).

    A layer whose shape differs from the reference (a replaced head, say) has no meaningful
    difference, so it is excluded and reported rather than compared.
    """
    ft, pre = _layer_key(finetuned), _layer_key(pretrained)
    shape = [c for c in SHAPE_COLUMNS if c in ft.columns and c in pre.columns]
    left = ft[["longname", "slice_index", "layer_order", *shape, *metrics]]
    right = pre[["longname", "slice_index", *shape, *metrics]]
    merged = left.merge(right, on=["longname", "slice_index"], how="outer", suffixes=("_ft", "_pre"), indicator=True)

    excluded = []
    for _, row in merged.iterrows():
        if row["_merge"] == "left_only":
            excluded.append((row["longname"], "absent from the pretrained reference"))
        elif row["_merge"] == "right_only":
            excluded.append((row["longname"], "absent from the fine-tuned spectra"))
        else:
            differs = [c for c in shape if row[f"{c}_ft"] != row[f"{c}_pre"]]
            if differs:
                was = "x".join(_size(row[f"{c}_pre"]) for c in differs)
                now = "x".join(_size(row[f"{c}_ft"]) for c in differs)
                excluded.append((row["longname"], f"shape {'/'.join(differs)} {was} -> {now}"))
    excluded_df = pd.DataFrame(excluded, columns=["longname", "reason"])

    both = merged[merged["_merge"] == "both"]
    keep = np.ones(len(both), dtype=bool)
    for c in shape:
        keep &= (both[f"{c}_ft"] == both[f"{c}_pre"]).to_numpy()
    both = both[keep].sort_values("layer_order")

    out = pd.DataFrame(
        {
            "longname": both["longname"].to_numpy(),
            "slice_index": both["slice_index"].to_numpy(dtype=int),
            "layer_order": both["layer_order"].to_numpy(dtype=int),
        }
    )
    for c in shape:
        out[c] = both[f"{c}_ft"].to_numpy()
    for m in metrics:
        pre_m = pd.to_numeric(both[f"{m}_pre"], errors="coerce").to_numpy(dtype=float)
        ft_m = pd.to_numeric(both[f"{m}_ft"], errors="coerce").to_numpy(dtype=float)
        out[f"{m}_pre"] = pre_m
        out[f"{m}_ft"] = ft_m
        out[f"dM_{m}"] = ft_m - pre_m
    return out, excluded_df


def _baseline_keys(runs: pd.DataFrame) -> tuple[list[str], pd.Series]:
    keys = [k for k in BASELINE_KEYS if k in runs.columns]
    return keys, runs[keys].astype(str).apply(tuple, axis=1)


def match_baselines(runs: pd.DataFrame) -> pd.Series:
    """For each run, the run_id of its baseline (same seed, data, model, checkpoint) or NaN.

    Several candidate baselines are ambiguous: the first by run_id is used (see baseline_conflicts).
    """
    keys, key_of = _baseline_keys(runs)
    lookup: dict[tuple, str] = {}
    for idx in runs[runs["arm"] == BASELINE].sort_values("run_id").index:
        if key_of[idx] in lookup:
            log.warning("several baselines for %s; using %s", dict(zip(keys, key_of[idx])), lookup[key_of[idx]])
            continue
        lookup[key_of[idx]] = runs.loc[idx, "run_id"]
    return pd.Series([lookup.get(k, np.nan) for k in key_of], index=runs.index, name="baseline_run_id", dtype=object)


def baseline_conflicts(runs: pd.DataFrame) -> list[str]:
    """One line per (seed, data, model, checkpoint) that has more than one baseline run."""
    keys, key_of = _baseline_keys(runs)
    base = runs[runs["arm"] == BASELINE].assign(_key=key_of).sort_values("run_id")
    lines = []
    for key, grp in base.groupby("_key", sort=True):
        if len(grp) > 1:
            where = ", ".join(f"{k}={v}" for k, v in zip(keys, key))
            ids = grp["run_id"].tolist()
            lines.append(f"{len(ids)} baselines for {where}: {', '.join(ids)}; D uses {ids[0]}")
    return lines


def double_differences(layers: pd.DataFrame, runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Add D_<metric> = dM - dM(baseline of the same seed/data/model) per layer.

    `runs` must carry run_id and baseline_run_id; layers missing from the baseline get NaN.
    """
    base_of = runs.set_index("run_id")["baseline_run_id"]
    dm_cols = [f"dM_{m}" for m in metrics]
    base = layers[["run_id", "longname", "slice_index", *dm_cols]].rename(
        columns={"run_id": "baseline_run_id", **{c: f"{c}_base" for c in dm_cols}}
    )
    out = layers.copy()
    out["baseline_run_id"] = out["run_id"].map(base_of)
    out = out.merge(base, on=["baseline_run_id", "longname", "slice_index"], how="left")
    for m in metrics:
        out[f"D_{m}"] = out[f"dM_{m}"] - out[f"dM_{m}_base"]
    return out.drop(columns=[f"{c}_base" for c in dm_cols])


def run_means(layers: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per run: the layer means of M_pre, M_ft, dM and D (NaN layers, e.g. failed fits, skipped)."""
    cols = {}
    for m in metrics:
        cols[f"mean_{m}_pre"] = f"{m}_pre"
        cols[f"mean_{m}_ft"] = f"{m}_ft"
        cols[f"mean_dM_{m}"] = f"dM_{m}"
        if f"D_{m}" in layers.columns:
            cols[f"mean_D_{m}"] = f"D_{m}"
    grouped = layers.groupby("run_id", sort=False)
    out = grouped[list(cols.values())].mean()
    out.columns = list(cols.keys())
    out["n_layers"] = grouped.size()
    return out.reset_index()


def t_interval(values) -> dict:
    """Mean, sd, n and the two-sided 95 % Student-t interval; n < 2 gives NaN bounds."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "sd": math.nan, "n": n, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def _small_n_note(n: int) -> str:
    if n == 0:
        return "no data"
    if n == 1:
        return "n=1: no CI"
    if n < 3:
        return f"n={n}: wide CI"
    return ""


def level_label(level) -> str:
    """A level (number, policy name or None) as the text tables group and print by."""
    if level is None or (isinstance(level, float) and math.isnan(level)):
        return ""
    return str(level)


def level_summary(
    runs: pd.DataFrame, metrics: list[str], layers: pd.DataFrame | None = None, anova: pd.DataFrame | None = None
) -> pd.DataFrame:
    """categories.csv: category x variant x level x metric, seeds as samples.

    Each seed contributes its run's layer-mean D (and dM); rows with level 'all' pool every level
    of the category per seed first (mean over that seed's runs), so n stays the number of seeds.
    With `layers`, the published layers-as-samples interval sits beside it in `published_*`
    columns (one sample per configuration and layer, averaged over seeds); with `anova`, the
    'all' rows carry the across-category ANOVA p-values of both schemes.
    """
    rows = []
    frame = runs.copy()
    frame["variant"] = frame["variant"].map(level_label)
    frame["level_label"] = frame["level"].map(level_label)
    for (arm, variant, label), grp in frame.groupby(["arm", "variant", "level_label"], sort=False, dropna=False):
        for m in metrics:
            row = _summary_row(arm, variant, grp["level"].iloc[0], grp["level_index"].iloc[0], m, grp)
            rows.append(row | _published_columns(layers, grp["run_id"], m))
    for arm, grp in frame[frame["arm"] != BASELINE].groupby("arm", sort=False):
        per_seed = grp.groupby("seed")[[c for m in metrics for c in (f"mean_D_{m}", f"mean_dM_{m}")]].mean()
        for m in metrics:
            row = _summary_row(arm, "", "all", np.nan, m, per_seed)
            rows.append(row | _published_columns(layers, grp["run_id"], m) | _anova_columns(anova, m))
    out = pd.DataFrame(rows)
    order = {a: i for i, a in enumerate([BASELINE, "dropout", "weight_decay", "augment", "synthetic"])}
    out["_arm_order"] = out["category"].map(lambda a: order.get(a, len(order)))
    out["_all"] = out["level"].astype(str) == "all"
    out = out.sort_values(["_arm_order", "category", "_all", "variant", "level_index"], kind="stable")
    return out.drop(columns=["_arm_order", "_all"]).reset_index(drop=True)


def layer_samples(layers: pd.DataFrame, metric: str) -> np.ndarray:
    """The published samples: D per (configuration, layer), averaged over seeds."""
    keys = ["arm", "variant", "level_index", "longname", "slice_index"]
    frame = layers.assign(variant=layers["variant"].map(level_label))
    return frame.groupby(keys, dropna=False)[f"D_{metric}"].mean().dropna().to_numpy(dtype=float)


def _published_columns(layers: pd.DataFrame | None, run_ids: pd.Series, metric: str) -> dict:
    if layers is None:
        return {}
    ci = t_interval(layer_samples(layers[layers["run_id"].isin(set(run_ids))], metric))
    return {
        "published_mean_D": ci["mean"],
        "published_ci_low_D": ci["ci_low"],
        "published_ci_high_D": ci["ci_high"],
        "published_n_layers": ci["n"],
    }


def _anova_columns(anova: pd.DataFrame | None, metric: str) -> dict:
    if anova is None:
        return {}
    rows = anova[anova["metric"] == metric].set_index("samples")["p"]
    return {"anova_p_seeds": rows.get(SEED_SAMPLES, math.nan), "anova_p_published": rows.get(LAYER_SAMPLES, math.nan)}


def _summary_row(arm, variant, level, level_index, metric, grp) -> dict:
    d = t_interval(grp[f"mean_D_{metric}"])
    dm = t_interval(grp[f"mean_dM_{metric}"])
    return {
        "category": arm,
        "variant": variant,
        "level": level,
        "level_index": level_index,
        "metric": metric,
        "mean_D": d["mean"],
        "sd_D": d["sd"],
        "ci_low_D": d["ci_low"],
        "ci_high_D": d["ci_high"],
        "mean_dM": dm["mean"],
        "sd_dM": dm["sd"],
        "ci_low_dM": dm["ci_low"],
        "ci_high_dM": dm["ci_high"],
        "n_seeds": d["n"],
        "note": _small_n_note(d["n"]),
    }


def _category_samples(runs: pd.DataFrame, layers: pd.DataFrame, metric: str) -> dict[str, dict[str, np.ndarray]]:
    """Samples per category under both schemes: per-seed means, and per (config, layer) values."""
    samples: dict[str, dict[str, np.ndarray]] = {SEED_SAMPLES: {}, LAYER_SAMPLES: {}}
    arms = [a for a in runs["arm"].unique() if a != BASELINE]
    for arm in arms:
        per_seed = runs[runs["arm"] == arm].groupby("seed")[f"mean_D_{metric}"].mean().dropna()
        samples[SEED_SAMPLES][arm] = per_seed.to_numpy(dtype=float)
        samples[LAYER_SAMPLES][arm] = layer_samples(layers[layers["arm"] == arm], metric)
    return samples


def category_tests(runs: pd.DataFrame, layers: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-way ANOVA across categories and pairwise Welch t-tests, per metric and sample scheme."""
    anova_rows, pair_rows = [], []
    for m in metrics:
        for scheme, groups in _category_samples(runs, layers, m).items():
            usable = {a: x for a, x in groups.items() if len(x) >= 2}
            sizes = ", ".join(f"{a}={len(x)}" for a, x in groups.items())
            f_stat = p_val = math.nan
            note = ""
            if len(usable) >= 2 and not all(np.ptp(x) == 0 for x in usable.values()):
                f_stat, p_val = (float(v) for v in stats.f_oneway(*usable.values()))
            else:
                note = "needs >= 2 categories with n >= 2 and some spread"
            if len(usable) < len(groups):
                note = (note + "; " if note else "") + "categories with n < 2 left out"
            anova_rows.append(
                {"metric": m, "samples": scheme, "F": f_stat, "p": p_val, "k": len(usable), "n": sizes, "note": note}
            )
            for a, b in combinations(groups, 2):
                xa, xb = groups[a], groups[b]
                t_stat = p_pair = dof = math.nan
                pair_note = ""
                if len(xa) >= 2 and len(xb) >= 2 and (np.ptp(xa) > 0 or np.ptp(xb) > 0):
                    res = stats.ttest_ind(xa, xb, equal_var=False)
                    t_stat, p_pair, dof = float(res.statistic), float(res.pvalue), float(res.df)
                else:
                    pair_note = "needs n >= 2 in both categories"
                pair_rows.append(
                    {
                        "metric": m,
                        "samples": scheme,
                        "category_a": a,
                        "category_b": b,
                        "mean_a": float(np.mean(xa)) if len(xa) else math.nan,
                        "mean_b": float(np.mean(xb)) if len(xb) else math.nan,
                        "n_a": len(xa),
                        "n_b": len(xb),
                        "t": t_stat,
                        "df": dof,
                        "p": p_pair,
                        "note": pair_note,
                    }
                )
    return pd.DataFrame(anova_rows), pd.DataFrame(pair_rows)


def level_axis(levels: pd.Series, level_index: pd.Series) -> tuple[pd.Series, str]:
    """Numeric levels when every level is a number, else the ordinal level_index."""
    numeric = pd.to_numeric(levels, errors="coerce")
    if len(numeric) and numeric.notna().all():
        return numeric.astype(float), "level"
    return pd.to_numeric(level_index, errors="coerce").astype(float), "level_index"


def level_trend(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Spearman correlation of strength with per-run mean D, within each arm (and variant)."""
    rows = []
    frame = runs[runs["arm"] != BASELINE].copy()
    frame["variant"] = frame["variant"].map(level_label)
    for (arm, variant), grp in frame.groupby(["arm", "variant"], sort=False):
        x, axis = level_axis(grp["level"], grp["level_index"])
        for m in metrics:
            y = grp[f"mean_D_{m}"].astype(float)
            rho, p, n, note = _correlate(x, y, stats.spearmanr)
            rows.append(
                {"arm": arm, "variant": variant, "metric": m, "x": axis, "n_runs": n,
                 "n_levels": int(x.nunique()), "spearman_rho": rho, "p": p, "note": note}
            )
    return pd.DataFrame(rows)


def _correlate(x: pd.Series, y: pd.Series, fn) -> tuple[float, float, int, str]:
    ok = x.notna() & y.notna()
    xs, ys = x[ok].to_numpy(dtype=float), y[ok].to_numpy(dtype=float)
    n = len(xs)
    if n < 3:
        return math.nan, math.nan, n, f"n={n}: too few"
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan, math.nan, n, "constant input"
    res = fn(xs, ys)
    return float(res.statistic), float(res.pvalue), n, ""


DIVERSITY_COLUMNS = ("diversity_vendi_pixel", "diversity_vendi_embed", "diversity_rho", "diversity_weighted_vs")
ACCURACY_COLUMNS = ("test_acc", "ood_acc")


def accuracy_correlations(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Pearson and Spearman of spectral metrics and diversity with test and OOD accuracy, over runs."""
    xs = [f"mean_{m}_ft" for m in metrics] + [f"mean_dM_{m}" for m in metrics] + [f"mean_D_{m}" for m in metrics]
    xs += [c for c in DIVERSITY_COLUMNS if c in runs.columns]
    rows = []
    for y_name in (c for c in ACCURACY_COLUMNS if c in runs.columns):
        y = pd.to_numeric(runs[y_name], errors="coerce")
        for x_name in (c for c in xs if c in runs.columns):
            x = pd.to_numeric(runs[x_name], errors="coerce")
            r, pr, n, note = _correlate(x, y, stats.pearsonr)
            rho, ps, _, _ = _correlate(x, y, stats.spearmanr)
            rows.append(
                {"x": x_name, "y": y_name, "n_runs": n, "pearson_r": r, "pearson_p": pr,
                 "spearman_rho": rho, "spearman_p": ps, "note": note}
            )
    return pd.DataFrame(rows, columns=["x", "y", "n_runs", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "note"])


def monotonic_statement(runs: pd.DataFrame, arm: str = "weight_decay", metric: str = "log_norm") -> str:
    """One sentence: does the seed-mean of the layer-mean dM fall monotonically with the level?

    Uses dM (fine-tuned minus pretrained), the quantity the published table reports per level.
    """
    col = f"mean_dM_{metric}"
    sub = runs[runs["arm"] == arm]
    name = f"mean d{metric}"
    if sub.empty or col not in sub.columns:
        return f"Whether {name} falls monotonically with {arm} strength cannot be assessed: no complete {arm} runs."
    levels = pd.to_numeric(sub["level"], errors="coerce")
    sub = sub.assign(_level=levels).dropna(subset=["_level"])
    per_level = sub.groupby("_level").agg(mean=(col, "mean"), n=(col, "count")).sort_index()
    if len(per_level) < 2:
        return f"Whether {name} falls monotonically with {arm} strength cannot be assessed: fewer than 2 levels."
    means = per_level["mean"].to_numpy()
    seeds = per_level["n"]
    n_text = f"n={seeds.min()}" if seeds.min() == seeds.max() else f"n={seeds.min()}-{seeds.max()}"
    values = ", ".join(f"{v:+.4g} ({lvl:g})" for lvl, v in zip(per_level.index, means))
    if np.any(np.isnan(means)):
        return f"Whether {name} falls monotonically with {arm} strength cannot be assessed: NaN means ({values})."
    steps = np.diff(means)
    if np.all(steps < 0):
        return f"Yes: {name} falls monotonically with {arm} strength: {values} (seed means, {n_text} seeds per level)."
    bad = [f"{per_level.index[i]:g} -> {per_level.index[i + 1]:g}" for i in np.flatnonzero(steps >= 0)]
    return (
        f"No: {name} does not fall monotonically with {arm} strength (rises or stays between "
        f"{', '.join(bad)}): {values} (seed means, {n_text} seeds per level)."
    )
