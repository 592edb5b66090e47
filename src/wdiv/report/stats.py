"""The statistics of the report, on plain arrays: intervals, tests and their corrections.

Seeds are the samples wdiv trusts (independent trainings). The published layers-as-samples
scheme is computed beside them, labelled as such, because layers of one network are not
independent draws. Families of tests are corrected with Holm (family-wise) and
Benjamini-Hochberg (false discovery rate); significance is read from the adjusted values.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway

CONFIDENCE = 0.95
SEED_SAMPLES = "seeds"
LAYER_SAMPLES = "layers (published)"
ONE_WAY = "one-way ANOVA"
WELCH = "Welch ANOVA"
WELCH_T = "Welch t"
STUDENT_T = "Student t"


def clean(values) -> np.ndarray:
    """Finite floats only (NaN from failed fits or missing layers drop out)."""
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    return x[np.isfinite(x)]


def t_interval(values) -> dict:
    """Mean, sd, n and the two-sided 95 % Student-t interval; n < 2 gives NaN bounds."""
    x = clean(values)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "sd": math.nan, "n": n, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def one_sample_p(values) -> float:
    """Two-sided one-sample t-test of mean 0; NaN when n < 2 or there is no spread."""
    x = clean(values)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def adjust(p) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p and BH q for one family; NaN p-values stay NaN and are not in the family."""
    p = np.asarray(p, dtype=float)
    holm, bh = np.full(p.shape, math.nan), np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        holm[ok] = _holm(p[ok])
        bh[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return holm, bh


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment, as statsmodels' multipletests(method="holm") computes it.

    Written out because statsmodels runs gc.collect() on every Holm call: 90 calls were 6 of the
    report's 22 s on a 60-run study. tests/test_report_units.py checks it against multipletests.
    """
    order = np.argsort(p)
    steps = p[order] * np.arange(len(p), 0, -1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def adjust_within(table: pd.DataFrame, family: list[str], p: str = "p", mask: pd.Series | None = None) -> pd.DataFrame:
    """Add p_holm and q_bh to `table`, corrected within each `family` group (rows in `mask` only)."""
    out = table.copy()
    out["p_holm"], out["q_bh"] = math.nan, math.nan
    rows = out if mask is None else out[mask]
    for _, grp in rows.groupby(family, sort=False, dropna=False):
        holm, bh = adjust(grp[p].to_numpy(dtype=float))
        out.loc[grp.index, "p_holm"] = holm
        out.loc[grp.index, "q_bh"] = bh
    return out


def _testable(groups: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    usable = {k: v for k, v in groups.items() if len(v) >= 2}
    note = ""
    if len(usable) < 2 or all(np.ptp(v) == 0 for v in usable.values()):
        note = "needs >= 2 categories with n >= 2 and some spread"
    if len(usable) < len(groups):
        note = (note + "; " if note else "") + "categories with n < 2 left out"
    return usable, note


def anova(groups: dict[str, np.ndarray], welch: bool = False) -> dict:
    """One-way ANOVA (scipy f_oneway) or Welch's ANOVA (statsmodels, unequal variances)."""
    usable, note = _testable(groups)
    row = {"test": WELCH if welch else ONE_WAY, "F": math.nan, "df_num": math.nan, "df_den": math.nan, "p": math.nan,
           "k": len(usable), "n": ", ".join(f"{k}={len(v)}" for k, v in groups.items()), "note": note}
    if note.startswith("needs"):
        return row
    if welch:
        if any(np.ptp(v) == 0 for v in usable.values()):
            return row | {"note": "Welch's ANOVA needs spread within every category"}
        res = anova_oneway(list(usable.values()), use_var="unequal")
        return row | {"F": float(res.statistic), "df_num": float(res.df_num), "df_den": float(res.df_denom), "p": float(res.pvalue)}
    res = stats.f_oneway(*usable.values())
    n = sum(len(v) for v in usable.values())
    return row | {"F": float(res.statistic), "df_num": float(len(usable) - 1), "df_den": float(n - len(usable)), "p": float(res.pvalue)}


def pairwise(groups: dict[str, np.ndarray], equal_var: bool) -> list[dict]:
    """Two-sample t-tests for every pair: Student (equal variances) or Welch."""
    rows = []
    for a, b in combinations(groups, 2):
        xa, xb = groups[a], groups[b]
        row = {"test": STUDENT_T if equal_var else WELCH_T, "category_a": a, "category_b": b,
               "mean_a": float(np.mean(xa)) if len(xa) else math.nan, "mean_b": float(np.mean(xb)) if len(xb) else math.nan,
               "n_a": len(xa), "n_b": len(xb), "t": math.nan, "df": math.nan, "p": math.nan, "note": ""}
        if len(xa) >= 2 and len(xb) >= 2 and (np.ptp(xa) > 0 or np.ptp(xb) > 0):
            res = stats.ttest_ind(xa, xb, equal_var=equal_var)
            row |= {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}
        else:
            row["note"] = "needs n >= 2 in both categories and some spread"
        rows.append(row)
    return rows


def correlate(x, y, fn) -> tuple[float, float, int, str]:
    """(statistic, p, n, note) of fn (scipy pearsonr / spearmanr) over the rows where both are finite."""
    xs = pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    n = len(xs)
    if n < 3:
        return math.nan, math.nan, n, f"n={n}: too few"
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return math.nan, math.nan, n, "constant input"
    res = fn(xs, ys)
    return float(res.statistic), float(res.pvalue), n, ""


def small_n_note(n: int) -> str:
    if n == 0:
        return "no data"
    if n == 1:
        return "n=1: no CI"
    if n < 3:
        return f"n={n}: wide CI"
    return ""
