"""Faults and bad input on the report side: every file the report reads, damaged every way.

A small fabricated analysed study (baselines and a weight-decay sweep, two seeds) carries the
record analyze writes last (spectra_summary.json's wdiv.files: records.describe entries). For each
file of one run, truncated, emptied, replaced by random bytes, with a column (key, array) dropped
or deleted, the report must name the run, the file and the reason in skipped.csv and leave every
other run's tables exactly as a report without that run has them (or, where the contract is to
go on without the file, exactly as the intact report has them).
"""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fake_study import HEAD_PRE, LAYERS, METRICS, make_study
from wdiv import records, report
from wdiv.report import checks
from wdiv.report.changes import build_changes
from wdiv.report.collect import collect
from wdiv.report.tables import build

RUN = "weight_decay/level0.001/seed0"  # the default ESD-overlay run
FILES = ("run.json", "spectra.csv", "spectra_base.csv", "spectra_summary.json", "esd.npz")
FAULTS = ("truncate", "empty", "random", "drop_column", "delete")
REPORT_TABLES = ("runs", "layers", "categories", "anova", "pairwise", "trend", "correlations", "accuracy", "headlines",
                 "excluded_layers")
ESD_LAYERS = [name for name, *_ in LAYERS] + [HEAD_PRE[0]]


def add_records(root: Path) -> Path:
    """What analyze --base --save-esd writes beside each run: esd files and the record, last."""
    rng = np.random.default_rng(7)
    for run_json in sorted(root.rglob("run.json")):
        run_dir = run_json.parent
        for name in (checks.ESD, checks.ESD_BASE):
            np.savez_compressed(run_dir / name, **{layer: rng.pareto(2.0, 32) + 0.1 for layer in ESD_LAYERS})
        files = {name: records.describe(run_dir / name)
                 for name in (checks.SPECTRA, checks.BASE, checks.ESD, checks.ESD_BASE)}
        summary = {"log_norm": 1.0, "wdiv": {"options": {"fit": "ks"}, "files": files, "errors": []}}
        (run_dir / checks.SUMMARY).write_text(json.dumps(summary, indent=2))
    return root


KEPT_METRICS = ("alpha", "log_norm", "log_spectral_norm", "stable_rank")  # fewer metrics: faster reports


def recorded_study(root: Path, levels) -> Path:
    make_study(root, seeds=(0, 1), arms={"weight_decay": list(levels)}, extras=False)
    dropped = [m for m in METRICS if m not in KEPT_METRICS]
    for path in [*root.rglob("spectra.csv"), *root.rglob("spectra_base.csv")]:
        pd.read_csv(path).drop(columns=dropped).to_csv(path, index=False)
    return add_records(root)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Two baselines and one weight-decay level, two seeds: the smallest study with every table."""
    return recorded_study(tmp_path_factory.mktemp("template") / "runs", [1e-3])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two baselines and a two-level weight-decay sweep, two seeds."""
    return recorded_study(tmp_path_factory.mktemp("sweep") / "runs", [1e-4, 1e-3])


@pytest.fixture(scope="module")
def intact(template):
    return report_tables(template)


@pytest.fixture(scope="module")
def without_run(template, tmp_path_factory):
    root = tmp_path_factory.mktemp("without") / "runs"
    shutil.copytree(template, root)
    shutil.rmtree(root / RUN)
    return report_tables(root)


def copy_study(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(template, root)
    return root


def report_tables(root: Path) -> dict:
    """The report's tables, in memory (what report.main writes as CSV)."""
    col = collect(root)
    changes = build_changes(col)
    rep = build(col)
    out = {name: getattr(rep, name) for name in REPORT_TABLES}
    out |= {"changes": changes.table, "missing": changes.missing, "skipped": rep.skipped, "_report": rep}
    return out


def assert_tables_equal(got: dict, want: dict) -> None:
    for name in (*REPORT_TABLES, "changes", "missing"):
        a, b = got[name].reset_index(drop=True), want[name].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=name)


def damage(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "truncate":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "random":
        path.write_bytes(np.random.default_rng(3).bytes(len(data)))
    elif fault == "delete":
        path.unlink()
    elif path.suffix == ".csv":
        table = pd.read_csv(path)
        table.drop(columns=["alpha"]).to_csv(path, index=False)
    elif path.suffix == ".json":
        obj = json.loads(data)
        obj.pop("seed", None) if "seed" in obj else obj["wdiv"].pop("files")
        path.write_text(json.dumps(obj))
    elif path.suffix == ".npz":
        with np.load(path) as found:
            arrays = {k: found[k] for k in found.files[1:]}
        np.savez_compressed(path, **arrays)
    else:
        raise AssertionError(fault)


# What the report must say for each (file, fault) of RUN; None: the run is used as if intact.
EXPECTED = {
    ("run.json", "truncate"): "unreadable run.json (not JSON)",
    ("run.json", "empty"): "unreadable run.json (empty)",
    ("run.json", "random"): "unreadable run.json (not JSON)",
    ("run.json", "drop_column"): "run.json lacks seed",
    ("run.json", "delete"): "no run.json beside the run's outputs",
    ("spectra_summary.json", "truncate"): "spectra_summary.json: not JSON",
    ("spectra_summary.json", "empty"): "spectra_summary.json: empty",
    ("spectra_summary.json", "random"): "spectra_summary.json: not JSON",
    ("spectra_summary.json", "drop_column"): None,  # no wdiv.files: an older wdiv's outputs, judged by structure
    # no record of the options it was analysed with, unlike its baseline: never compared with it
    ("spectra_summary.json", "delete"): "analysed with other options than its baseline baseline/baseline/seed0: fit=None",
}
for _name in ("spectra.csv", "spectra_base.csv"):
    EXPECTED |= {(_name, "truncate"): f"{_name}: truncated (", (_name, "empty"): f"{_name}: empty",
                 (_name, "random"): f"{_name}: not a CSV", (_name, "drop_column"): f"{_name}: truncated (",
                 (_name, "delete"): f"{_name}: missing"}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", [f for f in FILES if f != "esd.npz"])
def test_a_damaged_file_skips_its_run_by_name_and_leaves_the_other_tables_alone(template, intact, without_run,
                                                                                 tmp_path, name, fault):
    root = copy_study(template, tmp_path)
    damage(root / RUN / name, fault)
    got = report_tables(root)
    expected = EXPECTED[(name, fault)]
    if expected is None:  # the run stays, checked by its structure alone
        assert got["skipped"].empty, got["skipped"].to_dict("records")
        assert_tables_equal(got, intact)
        return
    skipped = got["skipped"].to_dict("records")
    assert skipped == [{"run_id": RUN, "file": f"{RUN}/{name}", "reason": skipped[0]["reason"]}], skipped
    assert skipped[0]["reason"].startswith(expected), skipped[0]["reason"]
    assert RUN not in set(got["layers"]["run_id"]) and RUN not in set(got["runs"]["run_id"])
    assert_tables_equal(got, without_run)


def test_the_intact_study_draws_its_esd_overlay(intact):
    assert report.esd_figure(intact["_report"], None, None) is not None


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_esd_file_drops_only_the_overlay_with_a_warning(template, intact, tmp_path, caplog, fault):
    root = copy_study(template, tmp_path)
    damage(root / RUN / "esd.npz", fault)
    got = report_tables(root)
    assert got["skipped"].empty
    assert_tables_equal(got, intact)
    with caplog.at_level(logging.WARNING, logger="wdiv.report"):
        assert report.esd_figure(got["_report"], None, None) is None
    assert str(root / RUN / "esd.npz") in caplog.text


def test_cli_writes_the_file_column_and_the_summary_names_file_and_reason(template, tmp_path):
    root = copy_study(template, tmp_path)
    spectra = root / RUN / "spectra.csv"
    spectra.write_bytes(spectra.read_bytes()[:-40])  # truncated: the old report averaged the remaining rows in
    other = root / "weight_decay/level0.001/seed1/spectra.csv"
    other.write_bytes((b"\x00\x9f\xff binary \x00" * 500)[: other.stat().st_size])
    assert report.main([str(root), "--no-figures"]) == 0
    skipped = pd.read_csv(root / "report" / "skipped.csv", keep_default_na=False)
    assert list(skipped.columns) == ["run_id", "file", "reason"]
    rows = {r["run_id"]: r for r in skipped.to_dict("records")}
    assert set(rows) == {RUN, "weight_decay/level0.001/seed1"}
    assert rows[RUN]["file"] == f"{RUN}/spectra.csv" and rows[RUN]["reason"].startswith("spectra.csv: truncated (")
    assert rows["weight_decay/level0.001/seed1"]["reason"] == "spectra.csv: not a CSV"
    summary = (root / "report" / "summary.md").read_text()
    assert f"| {RUN} | {RUN}/spectra.csv | spectra.csv: truncated (" in summary
    used = set(pd.read_csv(root / "report" / "runs.csv")["run_id"])
    assert RUN not in used and len(used) == 2


def test_a_same_size_edit_is_a_hash_mismatch_and_fewer_rows_are_named(template, tmp_path):
    root = copy_study(template, tmp_path)
    path = root / RUN / "spectra.csv"
    text = path.read_text()
    path.write_text(text.replace("blocks.0.attn.qkv", "blocks.0.attn.qkX"))
    got = report_tables(root)["skipped"]
    assert got["reason"].tolist() == ["spectra.csv: hash mismatch (changed since it was recorded)"]
    base = root / "weight_decay/level0.001/seed1/spectra_base.csv"
    lines = base.read_text().splitlines(keepends=True)
    base.write_text("".join(lines[:-2]) + "x" * (len("".join(lines[-2:])) + 5) + "\n")  # longer, but rows lost
    reasons = dict(zip(*report_tables(root)["skipped"][["run_id", "reason"]].to_numpy().T))
    assert reasons["weight_decay/level0.001/seed1"].startswith("spectra_base.csv: fewer layers than recorded (")


def test_recorded_reference_that_is_gone_is_named_not_recomputed(template, tmp_path):
    root = copy_study(template, tmp_path)
    (root / RUN / "spectra_base.csv").unlink()
    calls = []
    col = collect(root, analyze=lambda path, options: calls.append(path))
    assert calls == [] and col.skipped["reason"].tolist() == ["spectra_base.csv: missing"]


# ----------------------------------------------------------------------------- layouts that once crashed


def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _rewrite_csv(path: Path, edit) -> None:
    table = pd.read_csv(path)
    edit(table)
    table.to_csv(path, index=False)


def _unrecorded(run_dir: Path) -> Path:
    """Take the file entries out of a run's record (options kept): its tables are judged by structure."""
    path = run_dir / "spectra_summary.json"
    obj = json.loads(path.read_text())
    obj["wdiv"].pop("files")
    path.write_text(json.dumps(obj))
    return run_dir


LAYOUTS = {
    "run.json a list": (lambda r: (r / RUN / "run.json").write_text("[1, 2]"), "run.json not a JSON object (a list)"),
    "run.json a number": (lambda r: (r / RUN / "run.json").write_text("3"), "run.json not a JSON object (int)"),
    "run.json binary": (lambda r: (r / RUN / "run.json").write_bytes(b"\x89PNG\x00\xff" * 20), "unreadable run.json"),
    "run.json fields of the wrong type": (lambda r: _edit_json(r / RUN / "run.json", pretrained=5, metrics="x"),
                                          "run.json pretrained is int"),
    "run.json seed a word": (lambda r: _edit_json(r / RUN / "run.json", seed="zero"), "run.json seed 'zero' is not"),
    "run.json metric a word": (lambda r: _edit_json(r / RUN / "run.json", metrics={"test_acc": "high"}),
                               "run.json metrics.test_acc 'high' is not a number"),
    "spectra.csv header only": (lambda r: (_unrecorded(r / RUN) / "spectra.csv").write_text("longname,alpha,log_norm\n"),
                                "spectra.csv: no layers"),
    "non-numeric metric column": (lambda r: _rewrite_csv(_unrecorded(r / RUN) / "spectra.csv",
                                                         lambda t: t.__setitem__("alpha", "abc")),
                                  "spectra.csv: non-numeric values in column alpha"),
    "rows without a longname": (lambda r: _rewrite_csv(_unrecorded(r / RUN) / "spectra_base.csv",
                                                       lambda t: t.__setitem__("longname", t["longname"].where(t.index != 2))),
                                "spectra_base.csv: rows without a longname"),
    "spectra_summary.json a list": (lambda r: (r / RUN / "spectra_summary.json").write_text("[]"),
                                    "spectra_summary.json: not JSON object"),
    "wdiv.files not entries": (lambda r: _edit_json(r / RUN / "spectra_summary.json", wdiv={"files": [1]}),
                               "spectra_summary.json: wdiv.files is not an object"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bad_layouts_are_skipped_with_a_reason_never_a_traceback(template, without_run, tmp_path, layout):
    root = copy_study(template, tmp_path)
    make, reason = LAYOUTS[layout]
    make(root)
    got = report_tables(root)
    assert got["skipped"]["run_id"].tolist() == [RUN]
    assert got["skipped"]["reason"].iloc[0].startswith(reason), got["skipped"]["reason"].iloc[0]
    assert_tables_equal(got, without_run)


def test_old_outputs_without_a_record_are_checked_by_structure(template, without_run, tmp_path):
    root = copy_study(template, tmp_path)
    for summary in root.rglob("spectra_summary.json"):
        summary.unlink()
    for path in root.rglob("esd*.npz"):
        path.unlink()
    bad = root / RUN / "spectra.csv"
    bad.write_text(pd.read_csv(bad).drop(columns=["longname"]).to_csv(index=False))
    got = report_tables(root)
    assert got["skipped"].to_dict("records") == [{"run_id": RUN, "file": f"{RUN}/spectra.csv",
                                                  "reason": "spectra.csv: missing columns: longname"}]
    assert_tables_equal(got, without_run)


def _older_outputs(root: Path, n_layers: bool) -> None:
    """The outputs an older analyze left: a summary with n_layers but no record of its files."""
    for summary in root.rglob("spectra_summary.json"):
        rows = len(pd.read_csv(summary.parent / "spectra.csv"))
        summary.write_text(json.dumps({"wdiv": {"options": {"fit": "ks"}, **({"n_layers": rows} if n_layers else {})}}))
    for path in root.rglob("esd*.npz"):
        path.unlink()


@pytest.mark.parametrize("n_layers", [True, False], ids=["with-n_layers", "summary-without-n_layers"])
def test_an_older_spectra_csv_cut_mid_row_is_named_truncated(template, without_run, tmp_path, n_layers):
    # the scenario of the issue: a copy killed part-way leaves a header and a stub of the first row, which pandas
    # reads as one row of blanks (the old report averaged it in, or blamed the reference)
    root = copy_study(template, tmp_path)
    _older_outputs(root, n_layers)
    bad = root / RUN / "spectra.csv"
    data = bad.read_bytes()
    bad.write_bytes(data[: data.index(b"\n") + 40])
    got = report_tables(root)
    assert got["skipped"].to_dict("records") == [{"run_id": RUN, "file": f"{RUN}/spectra.csv",
                                                  "reason": "spectra.csv: truncated (its last row is cut short)"}]
    assert_tables_equal(got, without_run)


def test_an_older_spectra_csv_with_fewer_rows_than_its_summary_is_named(template, without_run, tmp_path):
    root = copy_study(template, tmp_path)
    _older_outputs(root, n_layers=True)
    bad = root / RUN / "spectra.csv"
    table = pd.read_csv(bad)
    table.head(1).to_csv(bad, index=False)  # whole rows, but only one of them
    got = report_tables(root)
    assert got["skipped"].to_dict("records") == [{"run_id": RUN, "file": f"{RUN}/spectra.csv",
                                                  "reason": f"spectra.csv: fewer layers than recorded (1 of {len(table)})"}]
    assert_tables_equal(got, without_run)


def test_odd_but_legal_layouts_report(template, tmp_path):
    root = copy_study(template, tmp_path)
    # a level recorded as text where the sweep has numbers: the same strength as 0.001
    _edit_json(root / "weight_decay/level0.001/seed1/run.json", level="1e-3")
    # duplicated longnames (per-slice rows) in both tables of a run pair up in order
    for name in ("spectra.csv", "spectra_base.csv"):
        _rewrite_csv(root / RUN / name, lambda t: t.__setitem__("longname", t["longname"].where(t.index != 1, t.at[0, "longname"])))
    for summary in root.rglob("spectra_summary.json"):  # the tables were edited on purpose: no record to match
        summary.unlink()
    # a run.json inside the report folder is never read as a run
    (root / "report").mkdir()
    (root / "report" / "run.json").write_text("[]")
    assert report.main([str(root), "--no-figures"]) == 0
    cats = pd.read_csv(root / "report" / "categories.csv")
    row = cats[(cats.category == "weight_decay") & (cats.metric == "log_norm") & (cats.level.astype(str) == "0.001")]
    assert row["n_seeds"].tolist() == [2]
    assert pd.read_csv(root / "report" / "skipped.csv").empty
    layers = pd.read_csv(root / "report" / "layers.csv")
    assert (layers[layers.run_id == RUN]["slice_index"] == 1).sum() == 1


def test_empty_runs_dir_and_a_file_as_runs_dir(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty), "--no-figures"]) == 1
    assert "no complete analysed run" in capsys.readouterr().err
    assert "No report" in (empty / "report" / "summary.md").read_text()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert report.main([str(afile)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_analysis_errors_recorded_in_the_summary_are_noted(template, tmp_path):
    root = copy_study(template, tmp_path)
    path = root / RUN / "spectra_summary.json"
    obj = json.loads(path.read_text())
    obj["wdiv"]["errors"] = ["model.safetensors: layer head: eigensolver did not converge"]
    path.write_text(json.dumps(obj))
    assert report.main([str(root), "--no-figures"]) == 0
    assert f"{RUN}: its analysis reported 1 error(s)" in (root / "report" / "summary.md").read_text()


# ----------------------------------------------------------------------------- ingested runs


def test_ingested_runs_carry_the_record_and_are_checked_like_analysed_ones(template, tmp_path):
    from wdiv.ingest import main as ingest_main

    meta = tmp_path / "META.csv"
    rows = ["run,before,after,arm,level,seed"]
    for run in ("baseline/baseline/seed0", RUN):
        rec = json.loads((template / run / "run.json").read_text())
        rows.append(f"{run},{template / run / 'spectra_base.csv'},{template / run / 'spectra.csv'},{rec['arm']},"
                    f"{rec['level'] if rec['level'] is not None else ''},{rec['seed']}")
    meta.write_text("\n".join(rows) + "\n")
    runs = tmp_path / "ingested"
    assert ingest_main([str(meta), "--out", str(runs)]) == 0
    for run in ("baseline/baseline/seed0", RUN):
        files = json.loads((runs / run / "spectra_summary.json").read_text())["wdiv"]["files"]
        assert set(files) == {"spectra.csv", "spectra_base.csv"}
        for name, entry in files.items():
            assert entry == records.describe(runs / run / name)
    assert report_tables(runs)["skipped"].empty
    path = runs / RUN / "spectra.csv"
    path.write_text(path.read_text().replace("blocks.0.attn.qkv", "blocks.0.attn.qkX"))
    skipped = report_tables(runs)["skipped"].to_dict("records")
    assert skipped == [{"run_id": RUN, "file": f"{RUN}/spectra.csv",
                        "reason": "spectra.csv: hash mismatch (changed since it was recorded)"}]


# ----------------------------------------------------------------------------- no baselines


def test_weight_decay_sweep_without_baselines_reports_dm_and_the_missing_baselines(sweep, tmp_path, capsys):
    root = copy_study(sweep, tmp_path)
    shutil.rmtree(root / "baseline")
    assert report.main([str(root), "--no-figures"]) == 0
    out = root / "report"
    changes = pd.read_csv(out / "changes.csv")
    runs = sorted(p.parent for p in root.rglob("run.json"))
    # direct recomputation: per run, mean over the layers of the same shape of (ft - pre), then over seeds
    for level in (1e-4, 1e-3):
        per_seed = []
        for seed in (0, 1):
            run = root / f"weight_decay/level{level}/seed{seed}"
            ft, pre = pd.read_csv(run / "spectra.csv"), pd.read_csv(run / "spectra_base.csv")
            keep = ft["M"] == pre["M"]
            per_seed.append((ft.loc[keep, "log_norm"] - pre.loc[keep, "log_norm"]).mean())
        row = changes[(changes.metric == "log_norm") & np.isclose(changes.level.astype(float), level)]
        assert row["n_seeds"].tolist() == [2] and row["n_with_baseline"].tolist() == [0]
        assert row["mean_dM"].iloc[0] == pytest.approx(np.mean(per_seed), rel=1e-12)
        half = row["mean_dM"].iloc[0] - row["ci_low_dM"].iloc[0]
        from scipy import stats

        assert half == pytest.approx(stats.t.ppf(0.975, 1) * stats.sem(per_seed), rel=1e-9)
    missing = pd.read_csv(out / "missing_baselines.csv")
    assert missing[["recipe", "seed", "n_runs"]].to_dict("records") == [
        {"recipe": "unrecorded", "seed": 0, "n_runs": 2}, {"recipe": "unrecorded", "seed": 1, "n_runs": 2}]
    summary = (out / "summary.md").read_text()
    assert "D (dM minus the dM of the baseline of the same cell and seed) needs baseline runs" in summary
    assert "seed 0" in summary and "seed 1" in summary and "## Missing baselines" in summary
    assert len(pd.read_csv(out / "runs.csv")) == len(runs) == 4
    assert not (out / "categories.csv").exists()
    assert "missing baseline:" in capsys.readouterr().out


def test_one_missing_baseline_keeps_d_and_lists_it(sweep, tmp_path):
    root = copy_study(sweep, tmp_path)
    shutil.rmtree(root / "baseline/baseline/seed1")
    assert report.main([str(root), "--no-figures"]) == 0
    out = root / "report"
    missing = pd.read_csv(out / "missing_baselines.csv")
    assert missing["seed"].tolist() == [1] and missing["why"].tolist() == ["no baseline run with this seed"]
    changes = pd.read_csv(out / "changes.csv")
    wd = changes[(changes.category == "weight_decay") & (changes.metric == "alpha")]
    assert wd["n_seeds"].tolist() == [2, 2] and wd["n_with_baseline"].tolist() == [1, 1]
    cats = pd.read_csv(out / "categories.csv")
    assert (cats.loc[cats.category == "weight_decay", "n_seeds"] == 1).all()
    assert "## Missing baselines" in (out / "summary.md").read_text()


# ----------------------------------------------------------------------------- options


def _bad_option_cases(root: Path, tmp_path: Path) -> dict:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    return {
        "--formats bogus": [str(root), "--formats", "png,bogus"],
        "--figure-metrics unknown": [str(root), "--figure-metrics", "alpha,nosuch"],
        "--figure-metrics empty": [str(root), "--figure-metrics", ""],
        "--figure-metrics absent here": [str(root), "--figure-metrics", "alpha_farms"],
        "--across bogus": [str(root), "--across", "seed"],
        "--across twice": [str(root), "--across", "data,data"],
        "--esd-run escapes": [str(root), "--esd-run", "../elsewhere"],
        "--esd-run absolute": [str(root), "--esd-run", "/abs/run"],
        "--esd-layer empty": [str(root), "--esd-layer", " "],
        "--out a file": [str(root), "--out", str(afile)],
        "--out RUNS_DIR": [str(root), "--out", str(root)],
        "--out above RUNS_DIR": [str(root), "--out", str(root.parent)],
        "--out someone's folder": [str(root), "--out", str(foreign)],
        "--out a run": [str(root), "--out", str(root / RUN)],
        "unknown flag": [str(root), "--bogus"],
        "flag with a value": [str(root), "--keep-unchanged=3"],
        "RUNS_DIR missing": [str(tmp_path / "nope")],
        "RUNS_DIR a file": [str(afile)],
        "no RUNS_DIR": [],
    }


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_options_exit_2_with_one_line_before_anything_is_read_or_written(template, tmp_path, capsys):
    root = copy_study(template, tmp_path)
    before = _snapshot(tmp_path)
    for case, argv in _bad_option_cases(root, tmp_path).items():
        before = _snapshot(tmp_path)
        assert report.main(argv) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("wdiv.report: error: ") and err.strip().count("\n") == 0, (case, err)
        assert _snapshot(tmp_path) == before, case
        assert not (root / "report").exists() and not list(tmp_path.rglob(".report.*")), case


def test_bad_option_through_the_real_cli_is_one_line(template, tmp_path):
    root = copy_study(template, tmp_path)
    res = subprocess.run([sys.executable, "-m", "wdiv.report", str(root), "--formats", "bogus"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--formats bogus" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (root / "report").exists()
    res = subprocess.run([sys.executable, "-m", "wdiv.ingest", str(tmp_path / "nosuch.csv"), "--out", str(root)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "nosuch.csv" in res.stderr, res.stderr


def test_bad_ingest_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    from wdiv.ingest import main as ingest_main

    meta = tmp_path / "META.csv"
    meta.write_text("run,before,after,arm,seed\n")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    report_dir = tmp_path / "runs" / "report"
    report_dir.mkdir(parents=True)
    (report_dir / "summary.md").write_text("# wdiv report\n")
    cases = {
        "META missing": [str(tmp_path / "nosuch.csv"), "--out", str(tmp_path / "out")],
        "META a folder": [str(tmp_path), "--out", str(tmp_path / "out")],
        "--out a file": [str(meta), "--out", str(afile)],
        "--out a report": [str(meta), "--out", str(report_dir)],
        "no --out": [str(meta)],
        "unknown flag": [str(meta), "--out", str(tmp_path / "out"), "--bogus"],
    }
    for case, argv in cases.items():
        before = _snapshot(tmp_path)
        assert ingest_main(argv) == 2, case
        err = capsys.readouterr().err
        assert err.startswith("wdiv.ingest: error: ") and err.strip().count("\n") == 0, (case, err)
        assert _snapshot(tmp_path) == before and not (tmp_path / "out").exists(), case


# ----------------------------------------------------------------------------- never half a report


def test_a_failure_while_writing_leaves_the_previous_report_intact(template, tmp_path, monkeypatch):
    from wdiv.report import render

    root = copy_study(template, tmp_path)
    assert report.main([str(root), "--no-figures"]) == 0
    before = _snapshot(root / "report")
    shutil.rmtree(root / "baseline/baseline/seed1")  # the next report would differ in every table

    def boom(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(render, "summary_markdown", boom)
    with pytest.raises(RuntimeError, match="disk gone"):
        report.main([str(root), "--no-figures"])
    assert _snapshot(root / "report") == before
    assert not [p for p in root.iterdir() if p.name.startswith(".report.")]
    monkeypatch.undo()
    assert report.main([str(root), "--no-figures"]) == 0
    assert _snapshot(root / "report") != before
    assert (root / "report" / "changes.csv").is_file() and not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_rerun_replaces_the_report_whole(template, tmp_path):
    root = copy_study(template, tmp_path)
    assert report.main([str(root), "--no-figures"]) == 0
    (root / "report" / "stale.csv").write_text("from an older report\n")
    assert report.main([str(root), "--no-figures"]) == 0
    assert not (root / "report" / "stale.csv").exists()  # nothing stale from the previous report
    assert sorted(p.name for p in root.iterdir()) == ["baseline", "report", "weight_decay"]
