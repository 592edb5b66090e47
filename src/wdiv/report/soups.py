"""Model soups in the report: each soup against its own members (soups.csv, a summary.md section).

A soup (run.json arm ``soup``, written by ``wdiv.soup``) is already a run of its members' cell in
every other table (categories ``soup:uniform`` and ``soup:greedy``, level = its group). Here it
meets its pool - the runs it was made from, as its run.json ``soup.pool`` lists them with their
validation accuracy (computed by wdiv.soup on the members' validation split) and metrics:

* best member: the pool's highest validation accuracy (ties: first run id), the model one would
  pick without a soup; mean member: the mean over the pool;
* outcomes: test accuracy, ECE and OOD accuracy of the soup, its best and its mean member, and
  the soup minus each;
* spectra: the layer-mean D of the soup, of its best member and the mean over its members that
  are in this report (``n_members_in_report``; a member left out, e.g. unanalysed, is not guessed).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from wdiv import records
from wdiv.report.tables import CELL, OUTCOMES, Report

log = logging.getLogger(__name__)

ARM = "soup"


def _mean(values) -> float:
    found = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(found) / len(found) if found else math.nan


def _value(value) -> float:
    return math.nan if value is None else float(value)


def _member_ids(soup_dir: Path, pool: list[dict], by_path: dict[Path, str]) -> list[str | None]:
    """Report run_id of each pool entry (its path is relative to the soup's folder), None when not in the report."""
    return [by_path.get((soup_dir / str(p.get("path", ""))).resolve()) for p in pool]


def soup_row(run: pd.Series, run_dir: Path, record: dict, runs: pd.DataFrame, by_path: dict[Path, str], metrics: list[str]) -> dict:
    """One soups.csv row: the soup, its best and its mean member."""
    soup = record.get("soup") or {}
    pool = list(soup.get("pool") or [])
    ids = _member_ids(run_dir.resolve(), pool, by_path)
    ranked = sorted(range(len(pool)), key=lambda i: (-_value(pool[i].get("val_acc")), str(pool[i].get("run"))))
    best = ranked[0] if ranked else None
    row = {**{k: run[k] for k in CELL}, "run_id": run["run_id"], "kind": run["variant"], "group": run["level"],
           "seed": run["seed"], "n_pool": len(pool), "n_members": len(record.get("members") or []),
           "best_member": pool[best].get("run") if best is not None else None,
           "n_members_in_report": sum(i is not None for i in ids)}
    row["soup_val_acc"] = _value((record.get("metrics") or {}).get("val_acc"))
    row["best_member_val_acc"] = _value(pool[best].get("val_acc")) if best is not None else math.nan
    row["mean_member_val_acc"] = _mean(p.get("val_acc") for p in pool)
    for col in OUTCOMES:
        member_values = [(p.get("metrics") or {}).get(col) for p in pool]
        soup_value = _value(run.get(col))
        best_value = _value(member_values[best]) if best is not None else math.nan
        mean_value = _mean(member_values)
        row |= {f"soup_{col}": soup_value, f"best_member_{col}": best_value, f"mean_member_{col}": mean_value,
                f"{col}_vs_best": soup_value - best_value, f"{col}_vs_mean": soup_value - mean_value}
    indexed = runs.set_index("run_id")
    for m in metrics:
        col = f"mean_D_{m}"
        present = [i for i in ids if i is not None and i in indexed.index]
        row[f"soup_D_{m}"] = _value(run.get(col))
        best_id = ids[best] if best is not None else None
        row[f"best_member_D_{m}"] = _value(indexed.at[best_id, col]) if best_id in indexed.index else math.nan
        row[f"mean_member_D_{m}"] = _mean(indexed.at[i, col] for i in present)
    return row


def build(report: Report) -> pd.DataFrame | None:
    """soups.csv: one row per soup in the report; None when the report has no soup."""
    runs = report.runs
    soups = runs[runs["arm"] == ARM]
    if soups.empty:
        return None
    by_path = {Path(d).resolve(): run_id for run_id, d in report.run_dirs.items()}
    rows = []
    for _, run in soups.iterrows():
        run_dir = Path(report.run_dirs[run["run_id"]])
        try:
            record = records.read_json(run_dir / "run.json")
        except ValueError as err:  # it was read a moment ago by collect: changed since
            log.warning("soup left out of soups.csv: %s", err)
            continue
        rows.append(soup_row(run, run_dir, record, runs, by_path, report.metrics))
    table = pd.DataFrame(rows)
    if table.empty:
        return None
    return table.sort_values(["cell", "group", "kind", "run_id"], kind="stable").reset_index(drop=True)
