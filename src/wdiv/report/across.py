"""The explicit cross-cell mode (`--across data`, `--across model`, `--across data,model`).

Every other report statistic stays inside a study cell (model, data, recipe). This module
reproduces the published "all datasets" analysis and puts beside it a test that respects the
design:

- published (layers as samples): per cell, each layer's D is averaged over seeds within a
  configuration and then over the category's configurations (one value per cell, category and
  layer); across data these values are averaged over the cells of one model (layers matched by
  longname and slice_index); one-way ANOVA and Student t-tests then treat the layers as
  independent samples. Layers of one network are not independent, so these p-values are
  optimistic.
- design-respecting: a linear mixed model of the run-level layer-mean D with category as fixed
  effect and the pooled dimension (dataset, or model) as random intercept, seeds (each with its
  own baseline) nested in their cell as a variance component. When MixedLM cannot fit (singular,
  boundary or non-converged fit, too few blocks) a two-way ANOVA with the pooled dimension as a
  block is reported instead, labelled as the fallback, with the reason in `note`.

Decisions:
- recipe is not a grouping key in across mode: cells that differ in recipe are averaged like
  cells that differ in data (each cell counts once), and the tables list the recipes involved.
- layer identity is always (model, longname, slice_index): names are not comparable between
  architectures, so across model the layers of different models are separate samples, pooled
  within each dataset; across data,model the layers are first averaged over the cells of each
  model (as across data) and then the models' layers are pooled into one group, "all".
- the random / block factor: dataset across data, model across model; across data,model the
  random intercept is the model with the dataset nested in it as a variance component (that is,
  a cell effect), and the fallback blocks on both dataset and model.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Callable

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm
from wdiv.report.stats import adjust
from statsmodels.tools.sm_exceptions import ConvergenceWarning, SingularMatrixWarning

BASELINE = "baseline"
DIMS = ("data", "model")  # canonical order of the pooled dimensions
CONFIG = ("variant", "level")  # one configuration of a category (variant for multi-variant pools)
CELL_COLUMNS = ("model", "data", "recipe", "cell")
ARM_ORDER = ("dropout", "weight_decay", "augment", "synthetic")
ALL = "all"
LAYER_SAMPLES = "layers (published)"
ONE_WAY = "one-way ANOVA"
STUDENT_T = "Student t"
MIXED = "mixed model"
FALLBACK = "two-way ANOVA with {blocks} as block (fallback)"
FALLBACK_ONE_WAY = "one-way ANOVA of runs, no block with >= 2 levels (fallback)"
CONFIDENCE = 0.95  # of the coefficients' intervals
# Powell first, then L-BFGS from its optimum: statsmodels' advice for hard MixedLM problems; its
# default gradient start stalls on small designs with variances near zero.
FIT_METHODS = ["powell", "lbfgs"]


@dataclass
class AcrossResult:
    """What one `--across DIMS` analysis produced (the report writes each table as across_<dims>_*.csv).

    layers: one row per (group, model, category, longname, slice_index): group (the unit the
        tests run in: the model across data, the dataset across model, "all" across data,model),
        model, category, longname, slice_index, layer_order, n_cells (cells that had this layer
        and category), datasets and recipes (";"-joined), D_<metric> (mean over those cells of
        the cell's published per-layer value; NaN when every cell's value was NaN).
    tests: one row per (group, metric): samples, test (one-way ANOVA), k, n (layers per
        category), means (category means of the samples), F, df_num, df_den, p, note.
    pairwise: one row per (group, metric, pair of categories): samples, test (Student t),
        category_a, category_b, mean_a, mean_b, n_a, n_b, t, df, p, p_holm, q_bh (Holm and
        Benjamini-Hochberg within (group, metric)), note.
    model_tests: per (group, metric), rows of kind "omnibus" (all category effects at once:
        Wald chi2 for the mixed model, F for the fallback), "coefficient" (one per fixed-effect
        term: the reference category's mean D against 0, then each category minus the
        reference) and "variance" (mixed model variance components). Columns: group, metric,
        method, kind, term, contrast, coef, se, stat_name, stat, df, p, ci_low, ci_high, n_obs,
        n_blocks, n_seeds, reference, formula, note.
    dims: the pooled dimensions, in canonical order ("data",), ("model",) or ("data", "model").
    """

    layers: pd.DataFrame
    tests: pd.DataFrame
    pairwise: pd.DataFrame
    model_tests: pd.DataFrame
    dims: tuple[str, ...]


# ----------------------------------------------------------------------------- keys and order


def _text(value) -> str:
    """A key as text, so that missing levels / variants group together instead of dropping out."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def normalise_dims(dims) -> tuple[str, ...]:
    """("model", "data") and "data,model" mean the same analysis; anything else is an error."""
    items = dims.split(",") if isinstance(dims, str) else list(dims)
    items = {d.strip() for d in items if d.strip()}
    if not items or items - set(DIMS):
        raise ValueError(f"across dims {dims!r}: give data, model or data,model")
    return tuple(d for d in DIMS if d in items)


def group_column(dims: tuple[str, ...]) -> str | None:
    """The column a group is named by: the dimension that is *not* pooled (None: one group)."""
    if dims == ("data",):
        return "model"
    if dims == ("model",):
        return "data"
    return None


def category_order(categories) -> list[str]:
    """Arms in the report's order (dropout, weight_decay, augment, synthetic, others), variants by name."""
    def key(cat: str):
        arm = cat.split(":", 1)[0]
        return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm, cat)
    return sorted({str(c) for c in categories}, key=key)


def _with_group(frame: pd.DataFrame, dims: tuple[str, ...]) -> pd.DataFrame:
    col = group_column(dims)
    return frame.assign(group=frame[col].map(_text) if col else ALL)


def _d_columns(frame: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [f"D_{m}" for m in metrics if f"D_{m}" in frame.columns]


# ----------------------------------------------------------------------------- per-layer samples


def cell_layer_values(layers: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """The published per-layer value in each cell: mean over seeds per configuration, then over configurations.

    One row per (cell, category, layer); baseline rows are left out (their D is 0 by construction).
    NaN D (failed fits) are skipped value by value.
    """
    cols = _d_columns(layers, metrics)
    rows = layers[layers["category"].astype(str) != BASELINE]
    frame = rows.assign(**{f"_{k}": rows[k].map(_text) if k in rows else "" for k in CONFIG})
    if "layer_order" not in frame:
        frame = frame.assign(layer_order=np.nan)
    cell = [*CELL_COLUMNS, "category"]
    layer = ["longname", "slice_index"]
    per_config = frame.groupby([*cell, *[f"_{k}" for k in CONFIG], *layer], sort=False, dropna=False).agg(
        {**{c: "mean" for c in cols}, "layer_order": "min"})
    return per_config.groupby(level=[*cell, *layer], sort=False, dropna=False).agg(
        {**{c: "mean" for c in cols}, "layer_order": "min"}).reset_index()


def _join(values) -> str:
    return ";".join(sorted({_text(v) for v in values}))


def pooled_layers(layers: pd.DataFrame, metrics: list[str], dims: tuple[str, ...]) -> pd.DataFrame:
    """Average the cells' per-layer values over the pooled dimension(s), keeping layer identity.

    Across data (and data,model): mean over the cells of one model, layers matched by
    (longname, slice_index). Across model: mean over the cells of one (data, model), which differ
    only in recipe; the models' layers stay separate samples of their dataset's group.
    """
    cols = _d_columns(layers, metrics)
    values = _with_group(cell_layer_values(layers, metrics), dims)
    keys = ["group", "model", "category", "longname", "slice_index"]
    grouped = values.groupby(keys, sort=False, dropna=False)
    out = grouped[cols].mean()
    out.insert(0, "layer_order", grouped["layer_order"].min())
    out.insert(1, "n_cells", grouped["cell"].nunique())
    out.insert(2, "datasets", grouped["data"].agg(_join))
    out.insert(3, "recipes", grouped["recipe"].agg(_join))
    out = out.reset_index()
    order = {c: i for i, c in enumerate(category_order(out["category"]))}
    out = out.assign(_o=out["category"].map(order)).sort_values(
        ["group", "_o", "model", "layer_order", "longname", "slice_index"], kind="stable")
    return out.drop(columns="_o").reset_index(drop=True)


def layer_samples(pooled: pd.DataFrame, metric: str) -> dict[tuple[str, str], np.ndarray]:
    """(group, category) -> the finite per-layer values of `metric`: the published test samples."""
    col = f"D_{metric}"
    out = {}
    for (group, cat), grp in pooled.groupby(["group", "category"], sort=False):
        x = grp[col].to_numpy(dtype=float)
        out[(group, cat)] = x[np.isfinite(x)]
    return out


# ----------------------------------------------------------------------------- published tests


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.3g}"


def one_way(samples: dict[str, np.ndarray]) -> dict:
    """scipy f_oneway over the categories with >= 2 layers; the reason when it cannot run."""
    usable = {k: v for k, v in samples.items() if len(v) >= 2}
    row = {"test": ONE_WAY, "k": len(usable), "n": ", ".join(f"{k}={len(v)}" for k, v in samples.items()),
           "means": ", ".join(f"{k}={_fmt(float(v.mean())) if len(v) else 'nan'}" for k, v in samples.items()),
           "F": math.nan, "df_num": math.nan, "df_den": math.nan, "p": math.nan, "note": ""}
    notes = []
    if len(usable) < len(samples):
        notes.append("categories with < 2 layers left out")
    if len(usable) < 2 or all(np.ptp(v) == 0 for v in usable.values()):
        notes.insert(0, "needs >= 2 categories with >= 2 layers and some spread")
    else:
        res = stats.f_oneway(*usable.values())
        n = sum(len(v) for v in usable.values())
        row |= {"F": float(res.statistic), "df_num": float(len(usable) - 1), "df_den": float(n - len(usable)),
                "p": float(res.pvalue)}
    return row | {"note": "; ".join(notes)}


def student_pairs(samples: dict[str, np.ndarray]) -> list[dict]:
    """Student two-sample t-test (equal variances, as published) for every pair of categories."""
    rows = []
    for a, b in combinations(samples, 2):
        xa, xb = samples[a], samples[b]
        row = {"test": STUDENT_T, "category_a": a, "category_b": b,
               "mean_a": float(xa.mean()) if len(xa) else math.nan, "mean_b": float(xb.mean()) if len(xb) else math.nan,
               "n_a": len(xa), "n_b": len(xb), "t": math.nan, "df": math.nan, "p": math.nan, "note": ""}
        if len(xa) >= 2 and len(xb) >= 2 and (np.ptp(xa) > 0 or np.ptp(xb) > 0):
            res = stats.ttest_ind(xa, xb, equal_var=True)
            row |= {"t": float(res.statistic), "df": float(len(xa) + len(xb) - 2), "p": float(res.pvalue)}
        else:
            row["note"] = "needs >= 2 layers in both categories and some spread"
        rows.append(row)
    return rows


def published_tests(pooled: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-way ANOVA and pairwise Student t per (group, metric) on the per-layer samples; Holm/BH per family."""
    test_rows, pair_rows = [], []
    order = category_order(pooled["category"]) if len(pooled) else []
    for group in pd.unique(pooled["group"]):
        for m in metrics:
            if f"D_{m}" not in pooled.columns:
                continue
            by_key = layer_samples(pooled[pooled["group"] == group], m)
            samples = {c: by_key[(group, c)] for c in order if (group, c) in by_key}
            base = {"group": group, "metric": m, "samples": LAYER_SAMPLES}
            test_rows.append(base | one_way(samples))
            pairs = student_pairs(samples)
            holm, bh = adjust([r["p"] for r in pairs])
            pair_rows += [base | r | {"p_holm": h, "q_bh": q} for r, h, q in zip(pairs, holm, bh)]
    test_cols = ["group", "metric", "samples", "test", "k", "n", "means", "F", "df_num", "df_den", "p", "note"]
    pair_cols = ["group", "metric", "samples", "test", "category_a", "category_b", "mean_a", "mean_b", "n_a", "n_b",
                 "t", "df", "p", "p_holm", "q_bh", "note"]
    return pd.DataFrame(test_rows, columns=test_cols), pd.DataFrame(pair_rows, columns=pair_cols)


# ----------------------------------------------------------------------------- design-respecting model


MODEL_COLUMNS = ["group", "metric", "method", "kind", "term", "contrast", "coef", "se", "stat_name", "stat", "df", "p",
                 "ci_low", "ci_high", "n_obs", "n_blocks", "n_seeds", "reference", "formula", "note"]


class FitFailed(Exception):
    """MixedLM did not give a usable fit; the message says why (it goes into `note`)."""


def run_frame(runs: pd.DataFrame, metric: str, reference: str | None) -> tuple[pd.DataFrame, str, str]:
    """Non-baseline runs with a finite layer-mean D, category as a categorical with the reference first.

    Returns (frame, reference, note). `seed_key` names a seed within its cell: runs of one cell
    and seed share their baseline run, hence its noise, so seeds are nested in cells.
    """
    col = f"mean_D_{metric}"
    keep = runs[(runs["category"].astype(str) != BASELINE) & np.isfinite(pd.to_numeric(runs[col], errors="coerce"))]
    levels = category_order(keep["category"])
    note = ""
    ref = reference if reference in levels else (levels[0] if levels else "")
    if reference and reference not in levels:
        note = f"reference {reference} has no runs here; {ref} used"
    frame = pd.DataFrame({
        "D": pd.to_numeric(keep[col]).to_numpy(dtype=float),
        "category": pd.Categorical(keep["category"].astype(str), categories=[ref, *[c for c in levels if c != ref]]),
        "data": keep["data"].map(_text).to_numpy(),
        "model": keep["model"].map(_text).to_numpy(),
        "cell": keep["cell"].map(_text).to_numpy(),
        "seed_key": (keep["cell"].map(_text) + "#" + keep["seed"].map(_text)).to_numpy(),
    })
    return frame, ref, note


def _seeds_per_cell(frame: pd.DataFrame) -> int:
    return int(frame.groupby("cell")["seed_key"].nunique().min()) if len(frame) else 0


def _category_terms(levels: list[str]) -> list[str]:
    return [f"C(category)[T.{c}]" for c in levels[1:]]


def _contrast(term: str, ref: str) -> str:
    if term == "Intercept":
        return f"{ref} (vs baseline, D = 0)"
    return f"{term[len('C(category)[T.'):-1]} - {ref}"


def _coef_rows(params, bse, stat, pvals, ci, terms: list[str], ref: str, stat_name: str, df) -> list[dict]:
    return [{"kind": "coefficient", "term": t, "contrast": _contrast(t, ref), "coef": float(params[t]),
             "se": float(bse[t]), "stat_name": stat_name, "stat": float(stat[t]), "df": df, "p": float(pvals[t]),
             "ci_low": float(ci.loc[t].iloc[0]), "ci_high": float(ci.loc[t].iloc[1])} for t in ["Intercept", *terms]]


def mixed_design(dims: tuple[str, ...], frame: pd.DataFrame) -> tuple[str, dict[str, str]]:
    """(groups column, variance-component formulas) for MixedLM on this design.

    Random intercept for the pooled dimension; across data,model the model is the group and the
    dataset a variance component within it (a cell effect); seeds nested in cells when every cell
    has >= 2 seeds (with one seed per cell the seed effect is the cell effect itself).
    """
    groups = "data" if dims == ("data",) else "model"
    vc = {"data": "0 + C(data)"} if dims == ("data", "model") else {}
    if _seeds_per_cell(frame) >= 2:
        vc["seed"] = "0 + C(seed_key)"
    return groups, vc


def fit_mixed(frame: pd.DataFrame, dims: tuple[str, ...], ref: str) -> tuple[list[dict], str]:
    """MixedLM (REML) of D on category; raises FitFailed on any singular, boundary or non-converged fit.

    Fitted on D / sd(D): statsmodels calls a variance component under 0.01 a boundary fit, which
    on raw D (often ~1e-3) would be every fit; on the standardised D it means a component under
    1 % of var(D). Coefficients, SEs, CIs and variances are reported back in D units (z, p and
    the Wald test do not depend on the scale).
    """
    groups, vc = mixed_design(dims, frame)
    levels = list(frame["category"].cat.categories)
    n_blocks = frame[groups].nunique()
    formula = f"D ~ C(category); groups={groups}" + "".join(f"; vc {k}: {v}" for k, v in vc.items())
    if n_blocks < 2:
        raise FitFailed(f"{n_blocks} {groups} level(s): a random intercept needs >= 2")
    if len(levels) < 2:
        raise FitFailed("needs >= 2 categories")
    unit = float(frame["D"].std())
    if not np.isfinite(unit) or unit == 0:
        raise FitFailed("no spread in D")
    scaled = frame.assign(D=frame["D"] / unit)  # statsmodels' boundary checks are absolute; D is often ~1e-3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # re_formula="1": with vc_formula given, MixedLM would otherwise drop the random intercept
            model = smf.mixedlm("D ~ C(category)", scaled, groups=scaled[groups], re_formula="1", vc_formula=vc or None)
            res = model.fit(reml=True, method=FIT_METHODS)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as why:
            raise FitFailed(f"MixedLM failed: {type(why).__name__}: {why}") from why
    serious = [w for w in caught if issubclass(w.category, (ConvergenceWarning, SingularMatrixWarning))]
    others = sorted({f"{w.category.__name__}: {w.message}" for w in caught if w not in serious})
    if serious:
        raise FitFailed("MixedLM: " + "; ".join(sorted({f"{w.category.__name__}: {w.message}" for w in serious})))
    terms = _category_terms(levels)
    names = list(res.params.index)
    if not np.all(np.isfinite(res.bse[["Intercept", *terms]])):
        raise FitFailed("MixedLM: non-finite standard errors")
    rows = _coef_rows(res.params * unit, res.bse * unit, res.tvalues, res.pvalues,
                      res.conf_int(alpha=1 - CONFIDENCE) * unit, terms, ref, "z", math.nan)
    restriction = np.zeros((len(terms), len(names)))
    for i, t in enumerate(terms):
        restriction[i, names.index(t)] = 1.0
    wald = res.wald_test(restriction, use_f=False, scalar=True)
    rows.insert(0, {"kind": "omnibus", "term": "all categories", "contrast": "every category equal", "stat_name": "chi2",
                    "stat": float(wald.statistic), "df": float(len(terms)), "p": float(wald.pvalue)})
    variances = [(f"{groups} var", float(np.asarray(res.cov_re)[0, 0]))]
    variances += [(f"{name} var", float(v)) for name, v in zip(model.exog_vc.names if vc else [], np.atleast_1d(res.vcomp))]
    variances.append(("residual var", float(res.scale)))
    rows += [{"kind": "variance", "term": name, "coef": v * unit**2} for name, v in variances]
    base = {"method": MIXED, "n_blocks": int(n_blocks), "formula": formula}
    return [base | r for r in rows], "; ".join(others)


def block_columns(dims: tuple[str, ...]) -> list[str]:
    """The fallback's blocks: the pooled dimension(s)."""
    return list(dims)


def fit_block_anova(frame: pd.DataFrame, dims: tuple[str, ...], ref: str) -> tuple[list[dict], str]:
    """OLS D ~ C(category) + C(block...) with a type-2 ANOVA: the fallback when MixedLM cannot fit."""
    blocks = [b for b in block_columns(dims) if frame[b].nunique() >= 2]
    dropped = [b for b in block_columns(dims) if b not in blocks]
    formula = "D ~ C(category)" + "".join(f" + C({b})" for b in blocks)
    method = (FALLBACK.format(blocks=" and ".join({"data": "dataset"}.get(b, b) for b in blocks)) if blocks
              else FALLBACK_ONE_WAY)
    note = f"{', '.join(dropped)}: one level only, not a block" if dropped else ""
    levels = list(frame["category"].cat.categories)
    base = {"method": method, "formula": formula + "; anova_lm typ=2", "n_blocks": len(frame[list(dims)].drop_duplicates())}
    failed = {"kind": "omnibus", "term": "all categories"}
    if len(levels) < 2:
        return [base | failed], "; ".join(filter(None, [note, "needs >= 2 categories"]))
    try:
        res = smf.ols(formula, frame).fit()
        if res.df_resid < 1:
            return [base | failed], "; ".join(filter(None, [note, "no residual degrees of freedom"]))
        table = anova_lm(res, typ=2)
    except (np.linalg.LinAlgError, ValueError) as why:
        return [base | failed], "; ".join(filter(None, [note, f"block ANOVA failed: {type(why).__name__}: {why}"]))
    terms = _category_terms(levels)
    rows = [{"kind": "omnibus", "term": "all categories", "contrast": "every category equal", "stat_name": "F",
             "stat": float(table.loc["C(category)", "F"]), "df": float(table.loc["C(category)", "df"]),
             "p": float(table.loc["C(category)", "PR(>F)"])}]
    rows += _coef_rows(res.params, res.bse, res.tvalues, res.pvalues, res.conf_int(alpha=1 - CONFIDENCE), terms, ref,
                       "t", float(res.df_resid))
    return [base | r for r in rows], note


def design_tests(runs: pd.DataFrame, metrics: list[str], dims: tuple[str, ...], reference: str | None = None) -> pd.DataFrame:
    """Per (group, metric): the mixed model, or the labelled block-ANOVA fallback with the reason in `note`."""
    grouped = _with_group(runs, dims)
    out = []
    for group in pd.unique(grouped["group"]):
        runs_g = grouped[grouped["group"] == group]
        for m in metrics:
            if f"mean_D_{m}" not in runs_g.columns:
                continue
            frame, ref, ref_note = run_frame(runs_g, m, reference)
            try:
                rows, note = fit_mixed(frame, dims, ref)
            except FitFailed as why:
                rows, block_note = fit_block_anova(frame, dims, ref)
                note = "; ".join(filter(None, [str(why), block_note]))
            note = "; ".join(filter(None, [ref_note, note]))
            info = {"group": group, "metric": m, "n_obs": len(frame), "n_seeds": _seeds_per_cell(frame),
                    "reference": ref, "note": note}
            out += [info | r for r in rows]
    return pd.DataFrame(out, columns=MODEL_COLUMNS).reindex(columns=MODEL_COLUMNS)


# ----------------------------------------------------------------------------- entry point and markdown


def across(layers: pd.DataFrame, runs: pd.DataFrame, metrics: list[str], dims=("data",),
           reference: str | None = None) -> AcrossResult:
    """The published pooled analysis and the design-respecting model for one choice of pooled dims.

    `layers`: the report's layer table after double differences (D_<metric> columns); `runs`: one
    row per run with mean_D_<metric>. `reference`: the treatment-coding reference category of the
    model (default: the first in report order, dropout when present).
    """
    dims = normalise_dims(dims)
    pooled = pooled_layers(layers, metrics, dims)
    tests, pairwise = published_tests(pooled, metrics)
    model_tests = design_tests(runs, metrics, dims, reference)
    return AcrossResult(layers=pooled, tests=tests, pairwise=pairwise, model_tests=model_tests, dims=dims)


def _plain_table(table: pd.DataFrame) -> str:
    """Minimal markdown table, used when the caller passes no formatter."""
    if table.empty:
        return "_(none)_\n"
    text = table.astype(object).map(lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(s.replace("|", "\\|") for s in row) + " |" for row in text.to_numpy().tolist()]
    return "\n".join(lines) + "\n"


def across_markdown(result: AcrossResult, metrics: list[str],
                    markdown_table: Callable[[pd.DataFrame], str] | None = None) -> str:
    """A summary.md section that says which test is which and shows the key numbers of both."""
    table = markdown_table or _plain_table
    dims = result.dims
    tag = ",".join(dims)
    unit = {("data",): "model", ("model",): "dataset", ("data", "model"): "all cells together"}[dims]
    block = {("data",): "dataset", ("model",): "model", ("data", "model"): "model (dataset nested in it)"}[dims]
    pooled = {("data",): "averaged over the datasets of each model (layers matched by name)",
              ("model",): "pooled over models as separate samples (layer names differ between architectures)",
              ("data", "model"): "averaged over the datasets of each model, then the models' layers pooled"}[dims]
    tests = result.tests[result.tests["metric"].isin(metrics)]
    pairs = result.pairwise[result.pairwise["metric"].isin(metrics)]
    model = result.model_tests[result.model_tests["metric"].isin(metrics)]
    lines = [
        f"## Across {' and '.join(dims)} (--across {tag}; groups: {unit})",
        "",
        "This section pools study cells, which every other section keeps apart. Two analyses, side by side:",
        "",
        f"- **Published (layers as samples)**: per cell, each layer's D averaged over seeds and then over the "
        f"category's configurations; {pooled}; one sample per layer; one-way ANOVA (f_oneway) and Student t-tests, "
        "Holm p / BH q within (group, metric). Layers of one network are not independent, so these p-values are "
        "optimistic.",
        f"- **Mixed model (respects the design)**: run-level layer-mean D ~ category (treatment coding against "
        f"the reference category, whose row is its mean D against 0 = baseline), random intercept for the {block}, "
        "seeds nested in their cell when there are >= 2. Where MixedLM cannot fit, a two-way ANOVA with the pooled "
        "dimension as block is shown instead, labelled as the fallback, with the reason in `note`.",
        "",
        f"Tables: across_{tag.replace(',', '_')}_layers.csv, _tests.csv, _pairwise.csv, _model.csv.",
        "",
        "### Published scheme: one-way ANOVA on per-layer samples",
        "",
        table(tests[["group", "metric", "n", "means", "F", "p", "note"]]),
        "### Published scheme: pairwise Student t-tests",
        "",
        table(pairs[["group", "metric", "category_a", "category_b", "mean_a", "mean_b", "p", "p_holm", "q_bh"]]),
        "### Design-respecting model: all category effects at once",
        "",
    ]
    omnibus = model[model["kind"] == "omnibus"]
    lines += [table(omnibus[["group", "metric", "method", "stat_name", "stat", "df", "p", "n_obs", "note"]])]
    coefs = model[model["kind"] == "coefficient"]
    lines += ["### Design-respecting model: category effects (95 % CI)", "",
              table(coefs[["group", "metric", "method", "contrast", "coef", "se", "p", "ci_low", "ci_high"]])]
    return "\n".join(lines)
