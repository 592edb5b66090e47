"""wdiv.ingest: WeightWatcher details CSVs + a META table -> run directories wdiv.report reads like its own."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fake_study import make_study
from wdiv import report
from wdiv.ingest import main as ingest_main
from wdiv.report import ingest as ing

# WeightWatcher 0.7.7 `details` columns in its order: analyze() and analyze(mp_fit=True)
# (test_real_weightwatcher_details checks these against frames WeightWatcher computes).
WW_PLAIN_COLUMNS = [
    "layer_id", "name", "D", "M", "N", "Q", "alpha", "alpha_weighted", "entropy", "has_esd", "lambda_max",
    "layer_type", "log_alpha_norm", "log_norm", "log_spectral_norm", "longname", "matrix_rank", "norm", "num_evals",
    "num_pl_spikes", "rank_loss", "rf", "sigma", "spectral_norm", "stable_rank", "status", "sv_max", "sv_min",
    "warning", "weak_rank_loss", "xmax", "xmin",
]
WW_MP_COLUMNS = [
    "layer_id", "name", "D", "M", "N", "Q", "W_scale", "alpha", "alpha_weighted", "bulk_max", "bulk_min", "entropy",
    "has_esd", "lambda_max", "layer_type", "log_alpha_norm", "log_norm", "log_spectral_norm", "longname",
    "matrix_rank", "mp_softrank", "norm", "num_evals", "num_pl_spikes", "num_spikes", "rank_loss", "rf", "sigma",
    "sigma_mp", "spectral_norm", "stable_rank", "status", "sv_max", "sv_min", "warning", "weak_rank_loss", "xmax",
    "xmin",
]
TABLES = ("categories", "anova", "pairwise", "level_trend", "accuracy", "runs", "layers")
# Columns that name where a run's files are, not what it measured: never compared.
NOT_COMPARED = {"pretrained_path", "pretrained_sha256", "pretrained_kind"}
PATH_LIKE = re.compile(r"(^|_)(path|dir|sha256|kind|options|source)($|_)")


def ww_layout(spectra: pd.DataFrame, longname: bool = True) -> pd.DataFrame:
    """A wdiv spectra table as WeightWatcher's details frame: its columns in its order, wdiv-only ones dropped."""
    ww = spectra.copy()
    lam = ww["lambda_max"].to_numpy(dtype=float)
    ww["has_esd"] = True
    ww["layer_type"] = "dense"
    ww["spectral_norm"] = lam
    ww["sv_max"] = np.sqrt(lam)
    ww["sv_min"] = np.sqrt(ww["bulk_min"].to_numpy(dtype=float))
    ww["rank_loss"] = 0
    ww["weak_rank_loss"] = 0
    ww["W_scale"] = 1.0
    cols = [c for c in WW_MP_COLUMNS if longname or c != "longname"]
    return ww[cols]


def value_text(value) -> str:
    return "" if value is None else str(value)


def export_study(study: Path, dest: Path, longname: bool = True) -> Path:
    """Every run of study -> dest/ww/<run>_{before,after}.csv (WeightWatcher layout) and dest/META.csv."""
    rows = []
    for run_file in sorted(study.rglob("run.json")):
        run_dir = run_file.parent
        run = run_dir.relative_to(study).as_posix()
        rec = json.loads(run_file.read_text())
        paths = {}
        for which, name in (("before", "spectra_base.csv"), ("after", "spectra.csv")):
            path = dest / "ww" / f"{run.replace('/', '_')}_{which}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            ww_layout(pd.read_csv(run_dir / name), longname).to_csv(path)  # with the index, as details.to_csv() saves
            paths[which] = path.relative_to(dest).as_posix()
        m = rec["metrics"]
        row = {"run": run, **paths, **{k: rec.get(k) for k in ("exp", "arm", "variant", "level", "level_index", "seed",
                                                              "model", "data", "wall_time_s")},
               **{k: m[k] for k in ("test_acc", "test_ece", "test_loss", "ood_acc")},
               **{f"ood_{k}": v for k, v in m["ood"].items()}}
        div = rec.get("diversity") or {}
        row.update({k: div[k] for k in ("vendi_pixel", "vendi_embed", "rho", "weighted_vs") if k in div})
        row.update({f"diversity_{k}": v for k, v in div.items() if k not in ("vendi_pixel", "vendi_embed", "rho", "weighted_vs")})
        rows.append(row)
    meta = dest / "META.csv"
    with open(meta, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: value_text(v) for k, v in r.items()} for r in rows)
    return meta


def read_table(report_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(report_dir / f"{name}.csv")


def assert_same_tables(original: Path, ingested: Path, tables=TABLES, drop: dict | None = None) -> None:
    """Every column both reports have (ids and path-like columns excepted) is equal after sorting."""
    drop = drop or {}
    for name in tables:
        a, b = read_table(original, name), read_table(ingested, name)
        skip = {c for c in set(a.columns) | set(b.columns) if c in NOT_COMPARED or PATH_LIKE.search(c)}
        skip |= set(drop.get(name, ()))
        lost = set(a.columns) - set(b.columns) - skip
        assert not lost, f"{name}.csv of the ingested study lacks {sorted(lost)}"
        cols = [c for c in a.columns if c in b.columns and c not in skip]
        assert len(a) == len(b), f"{name}.csv: {len(a)} rows vs {len(b)}"
        a = a[cols].sort_values(cols, kind="stable").reset_index(drop=True)
        b = b[cols].sort_values(cols, kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=0, obj=f"{name}.csv")


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = make_study(tmp_path_factory.mktemp("original"), extras=False, diversity=True)
    assert report.main([str(root), "--no-figures"]) == 0
    return root


@pytest.mark.parametrize("longname", [True, False], ids=["by-longname", "by-layer_id"])
def test_round_trip_gives_the_same_report(original, tmp_path, longname):
    meta = export_study(original, tmp_path / "tables", longname=longname)
    runs = tmp_path / "runs"
    assert ingest_main([str(meta), "--out", str(runs)]) == 0
    assert report.main([str(runs), "--no-figures"]) == 0
    assert read_table(runs / "report", "skipped").empty
    # without longname, layers are named layer<id>.<name>: compare everything but the names
    drop = {} if longname else {"layers": ["longname"]}
    assert_same_tables(original / "report", runs / "report", drop=drop)

    rec = json.loads((runs / "weight_decay/level0.001/seed1/run.json").read_text())
    before = (tmp_path / "tables/ww/weight_decay_level0.001_seed1_before.csv").resolve()
    assert rec["status"] == "complete" and rec["arm"] == "weight_decay" and rec["level"] == 0.001
    assert rec["level_index"] == 2 and rec["seed"] == 1 and rec["variant"] is None and rec["recipe"] == "unrecorded"
    assert rec["pretrained"] == {"path": str(before), "sha256": ing.sha256_file(before), "kind": "weightwatcher"}
    assert rec["metrics"]["ood"] == {"gaussian_noise": pytest.approx(0.63), "blur": pytest.approx(0.73)}
    assert rec["diversity"]["weighted_vs"] == pytest.approx(0.9 * 3.5) and rec["diversity"]["n"] == 100
    assert rec["source"]["kind"] == "weightwatcher" and rec["source"]["meta"] == str(meta.resolve())
    summary = json.loads((runs / "weight_decay/level0.001/seed1/spectra_summary.json").read_text())
    assert summary["wdiv"]["options"] == {"source": "weightwatcher-details"}
    spectra = pd.read_csv(runs / "weight_decay/level0.001/seed1/spectra.csv")
    base = pd.read_csv(runs / "weight_decay/level0.001/seed1/spectra_base.csv")
    assert list(spectra.columns[:3]) == ["layer_id", "name", "longname"] and "has_esd" in spectra.columns
    assert list(spectra["longname"]) == list(base["longname"])
    if not longname:
        assert spectra["longname"].iloc[0] == "layer0.Linear"


def test_real_weightwatcher_details(tmp_path):
    """Frames WeightWatcher computes on a tiny torch model -> ingest -> report: dM = after - before."""
    ww = pytest.importorskip("weightwatcher")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(48, 96), torch.nn.Linear(96, 48)

    model = torch.nn.Module()
    model.stem = torch.nn.Conv2d(3, 16, 3)
    model.blocks = torch.nn.Sequential(Block(), Block())
    model.head = torch.nn.Linear(48, 10)

    def details(mp_fit=True):
        return ww.WeightWatcher(model=model).analyze(mp_fit=mp_fit)

    frames = {"before": details()}
    plain = details(mp_fit=False)
    assert list(frames["before"].columns) == WW_MP_COLUMNS and list(plain.columns) == WW_PLAIN_COLUMNS
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.blocks[0].fc1.weight.mul_(1.5)
        frames["after_a"] = details()
        model.load_state_dict(state)
        model.blocks[1].fc2.weight.add_(0.05 * torch.randn_like(model.blocks[1].fc2.weight))
        frames["after_b"] = details()
    tables = tmp_path / "tables"
    tables.mkdir()
    for name, frame in frames.items():
        frame.to_csv(tables / f"{name}.csv")  # as researchers save them: with the index
    plain.to_csv(tables / "plain.csv")
    (tables / "META.csv").write_text(
        "run,before,after,arm,level,seed,model,data,test_acc\n"
        "base,before.csv,after_a.csv,baseline,,0,tiny,rand,0.9\n"
        "drop,before.csv,after_b.csv,dropout,0.1,0,tiny,rand,0.91\n")
    runs = tmp_path / "runs"
    assert ingest_main([str(tables / "META.csv"), "--out", str(runs)]) == 0
    assert report.main([str(runs), "--no-figures"]) == 0
    layers = read_table(runs / "report", "layers")
    before = frames["before"].set_index("longname")
    for run, after in (("base", frames["after_a"]), ("drop", frames["after_b"])):
        got = layers[layers["run_id"] == run].set_index("longname")
        expected = (after.set_index("longname")["log_norm"] - before["log_norm"]).loc[got.index]
        np.testing.assert_allclose(got["dM_log_norm"], expected, rtol=1e-12, atol=0)
    # the two perturbed layers are kept (the ones no run changed are left out by the report)
    assert {"blocks.0.fc1", "blocks.1.fc2"} <= set(layers["longname"])
    changed = layers.set_index(["run_id", "longname"])["dM_log_norm"]
    assert changed["base", "blocks.0.fc1"] == pytest.approx(np.log10(1.5 ** 2))
    assert changed["drop", "blocks.0.fc1"] == 0.0
    # without mp_fit the MP columns are not invented
    layout = ing.to_wdiv_layout(ing.read_details(tables / "plain.csv"), tables / "plain.csv")
    assert "mp_softrank" not in layout.columns and "Unnamed: 0" not in layout.columns
    assert list(layout.columns[:4]) == ["layer_id", "name", "longname", "N"]


def fake_pair(tmp_path: Path, longname: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    study = make_study(tmp_path / "study", seeds=(0,), arms={}, extras=False)
    run = study / "baseline/baseline/seed0"
    return ww_layout(pd.read_csv(run / "spectra_base.csv"), longname), ww_layout(pd.read_csv(run / "spectra.csv"), longname)


def test_failed_fits_become_empty_with_status_failed(tmp_path):
    before, after = fake_pair(tmp_path)
    after.loc[0, ["alpha", "xmin", "D", "sigma", "num_pl_spikes"]] = -1
    after.loc[0, "alpha_weighted"] = -np.log10(after.loc[0, "lambda_max"])
    after.loc[0, "status"] = "failed"
    after.loc[1, "alpha"] = -1  # an old frame without a failed status still fails
    after.loc[2, ["num_spikes", "sigma_mp", "bulk_max", "bulk_min", "mp_softrank", "W_scale"]] = -1
    after["log_norm"] = after["log_norm"].astype(object)
    after.loc[3, "log_norm"] = "oops"
    table = ing.to_wdiv_layout(after, Path("after.csv"))
    for row in (0, 1):
        assert table.loc[row, "status"] == "failed" and "alpha=-1" in table.loc[row, "warning"]
        assert table.loc[row, ["alpha", "xmin", "D", "sigma", "alpha_weighted", "log_alpha_norm"]].isna().all()
        assert table.loc[row, "log_norm"] == after.loc[row, "log_norm"]  # the norm metrics stay
    assert table.loc[2, "status"] == "success" and table.loc[2, ["mp_softrank", "bulk_max", "W_scale"]].isna().all()
    assert "MP fit failed" in table.loc[2, "warning"] and table.loc[2, "alpha"] == after.loc[2, "alpha"]
    assert np.isnan(table.loc[3, "log_norm"]) and table["log_norm"].dtype == float
    assert list(table.columns[:3]) == ["layer_id", "name", "longname"]
    i = list(table.columns).index("status")
    assert table.columns[i - 1] == "warning"  # wdiv's columns in wdiv's order, then WeightWatcher's own
    assert list(table.columns[i + 1:]) == ["W_scale", "has_esd", "layer_type", "rank_loss", "spectral_norm",
                                           "sv_max", "sv_min", "weak_rank_loss"]
    # the summary leaves failed fits out of its means
    tables = tmp_path / "t"
    tables.mkdir()
    before.to_csv(tables / "b.csv", index=False)
    after.to_csv(tables / "a.csv", index=False)
    (tables / "META.csv").write_text("run,before,after,arm,seed\nr,b.csv,a.csv,baseline,0\n")
    assert ingest_main([str(tables / "META.csv"), "--out", str(tmp_path / "runs")]) == 0
    summary = json.loads((tmp_path / "runs/r/spectra_summary.json").read_text())
    ok = table[table["status"] != "failed"]
    assert summary["alpha"] == pytest.approx(ok["alpha"].mean()) and summary["wdiv"]["n_failed"] == 2
    written = pd.read_csv(tmp_path / "runs/r/spectra.csv")
    assert written.loc[0, "status"] == "failed" and np.isnan(written.loc[0, "alpha"])


def write_meta(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_bad_rows_give_one_error_line_each_and_the_rest_is_ingested(tmp_path, capsys):
    tables = tmp_path / "t"
    tables.mkdir()
    before, after = fake_pair(tmp_path)
    before.to_csv(tables / "before.csv")
    after.to_csv(tables / "after.csv")
    b_id, a_id = fake_pair(tmp_path / "x", longname=False)
    b_id.to_csv(tables / "before_id.csv")
    a_id.iloc[:-1].to_csv(tables / "after_id_short.csv")
    (tables / "junk.csv").write_text("foo,bar\n1,2\n")
    meta = write_meta(
        tables / "META.csv", "run,before,after,arm,level,seed,test_acc",
        "good/base,before.csv,after.csv,baseline,,0,0.9",          # line 2
        "good/wd,before.csv,after.csv,weight_decay,1e-4,0,0.8",     # 3
        "nofile,before.csv,missing.csv,dropout,0.1,0,0.9",          # 4
        "junk,before.csv,junk.csv,dropout,0.1,0,0.9",               # 5
        "noarm,before.csv,after.csv,,0.1,0,0.9",                    # 6
        "noseed,before.csv,after.csv,dropout,0.1,,0.9",             # 7
        "dup,before.csv,after.csv,dropout,0.1,0,0.9",               # 8
        "dup,before.csv,after.csv,dropout,0.5,0,0.9",               # 9
        "short,before_id.csv,after_id_short.csv,dropout,0.1,0,0.9", # 10
        "badacc,before.csv,after.csv,dropout,0.1,0,high",           # 11
        "../escape,before.csv,after.csv,dropout,0.1,0,0.9",         # 12
    )
    no_seed_col = write_meta(tmp_path / "META2.csv", "run,before,after,arm", "x,a.csv,b.csv,dropout")
    runs = tmp_path / "runs"
    # a META that does not exist is a bad command line: exit 2, one line, nothing read or written
    assert ingest_main([str(meta), str(tmp_path / "nosuch.csv"), "--out", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wdiv.ingest: error: META {tmp_path / 'nosuch.csv'} does not exist"] and not runs.exists()
    rc = ingest_main([str(meta), str(no_seed_col), "--out", str(runs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert all(line.startswith("error: ") for line in err)
    expected = [
        f"{no_seed_col}: META lacks column(s) seed",
        f"{meta}:4: run 'nofile': {(tables / 'missing.csv').resolve()} does not exist",
        f"{meta}:5: run 'junk': {(tables / 'junk.csv').resolve()} is not a WeightWatcher details table",
        f"{meta}:6: run 'noarm': no arm",
        f"{meta}:7: run 'noseed': no seed",
        f"{meta}:8, {meta}:9: duplicate run name 'dup'",
        f"{meta}:10: run 'short': {(tables / 'after_id_short.csv').resolve()} has 7 layers, ",
        f"{meta}:11: run 'badacc': test_acc 'high' is not a number",
        f"{meta}:12: run '../escape': run name '../escape' is not a plain relative folder path",
    ]
    assert len(err) == len(expected), err
    for want in expected:
        assert sum(want in line for line in err) == 1, (want, err)
    assert sorted(p.parent.relative_to(runs).as_posix() for p in runs.rglob("run.json")) == ["good/base", "good/wd"]
    assert not (tmp_path / "escape").exists()
    assert not list(runs.rglob("*.tmp"))


def test_layer_id_alignment_names_layers_identically(tmp_path):
    before, after = fake_pair(tmp_path, longname=False)
    after = after.iloc[::-1].reset_index(drop=True)  # row order does not matter, layer_id does
    b, a = ing.align(ing.to_wdiv_layout(before, Path("b.csv")), ing.to_wdiv_layout(after, Path("a.csv")),
                     Path("b.csv"), Path("a.csv"))
    assert dict(zip(b["layer_id"], b["longname"])) == dict(zip(a["layer_id"], a["longname"]))
    assert b["longname"].is_unique and b["longname"].iloc[3] == "layer3.Linear"
    renamed = after.copy()
    renamed.loc[renamed["layer_id"] == 3, "name"] = "Conv2d"
    with pytest.raises(ing.InputError, match=r"a.csv: layer_id 3 is 'Conv2d' there and 'Linear' in b.csv"):
        ing.align(ing.to_wdiv_layout(before, Path("b.csv")), ing.to_wdiv_layout(renamed, Path("a.csv")),
                  Path("b.csv"), Path("a.csv"))
    # longname in only one file: both pair by layer_id
    with_name, _ = fake_pair(tmp_path / "y", longname=True)
    b, a = ing.align(with_name, after, Path("b.csv"), Path("a.csv"))
    assert set(b["longname"]) == set(a["longname"]) and "head" not in set(b["longname"])


def snapshot(runs: Path) -> dict:
    return {p.relative_to(runs).as_posix(): p.stat().st_mtime_ns for p in sorted(runs.rglob("*")) if p.is_file()}


def test_rerun_is_idempotent_updates_ingested_runs_and_refuses_foreign_ones(tmp_path, monkeypatch):
    tables = tmp_path / "t"
    tables.mkdir()
    before, after = fake_pair(tmp_path)
    before.to_csv(tables / "before.csv")
    after.to_csv(tables / "after.csv")
    header = "run,before,after,arm,seed,test_acc"
    meta = write_meta(tables / "META.csv", header, "a,before.csv,after.csv,baseline,0,0.9",
                      "b,before.csv,after.csv,dropout,0,0.8")
    runs = tmp_path / "runs"
    res = subprocess.run([sys.executable, "-m", "wdiv.ingest", str(meta), "--out", str(runs)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr
    assert "2 written, 0 updated, 0 unchanged, 0 error(s)" in res.stdout
    first = snapshot(runs)
    result = ing.ingest([meta], runs)
    assert [o.action for o in result.outcomes] == ["unchanged", "unchanged"] and not result.errors
    assert snapshot(runs) == first

    write_meta(meta, header, "a,before.csv,after.csv,baseline,0,0.95", "b,before.csv,after.csv,dropout,0,0.8",
               "new,before.csv,after.csv,dropout,1,0.8")
    # a kill in the middle of a write leaves run.json at status=running: the report skips it, ingest redoes it
    real = ing.write_text

    def failing(path, text):
        if Path(path).name == "spectra.csv":
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(ing, "write_text", failing)
    result = ing.ingest([meta], runs)
    assert len(result.errors) == 2 and all("disk full" in e for e in result.errors)
    for run in ("a", "new"):
        assert json.loads((runs / run / "run.json").read_text())["status"] == "running"
    monkeypatch.setattr(ing, "write_text", real)
    result = ing.ingest([meta], runs)
    assert [o.action for o in result.outcomes] == ["updated", "unchanged", "updated"] and not result.errors
    assert json.loads((runs / "new/run.json").read_text())["status"] == "complete"
    rec = json.loads((runs / "a/run.json").read_text())
    assert rec["status"] == "complete" and rec["metrics"]["test_acc"] == 0.95

    foreign = runs / "c"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"status": "complete", "arm": "dropout", "seed": 0}))
    (foreign / "model.safetensors").write_bytes(b"weights")
    write_meta(meta, header, "c,before.csv,after.csv,dropout,1,0.8")
    result = ing.ingest([meta], runs)
    assert len(result.errors) == 1 and "was not written by wdiv.ingest" in result.errors[0]
    assert json.loads((foreign / "run.json").read_text()).get("source") is None
    result = ing.ingest([meta], runs, force=True)
    assert [o.action for o in result.outcomes] == ["updated"] and not result.errors
    assert json.loads((foreign / "run.json").read_text())["source"]["kind"] == "weightwatcher"
    assert (foreign / "model.safetensors").read_bytes() == b"weights"
    assert not list(runs.rglob("*.tmp"))
