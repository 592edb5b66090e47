"""Model soups as an arm (issue 16, item 3): uniform and greedy soups of tiny runs, their refusals,
and their way through wdiv.analyze and wdiv.report."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from wdiv import records
from wdiv.io import sha256_file, write_json
from wdiv.train import CONFIG_DIR
from wdiv.training.loop import Runtime
from wdiv.training.rebuild import evaluator, load_config

TINY = ["model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false"]
MEMBERS = ("dropout/p0.1/seed0", "dropout/p0.3/seed0", "dropout/p0.5/seed0")
SOUPS = "soup/vit_micro-digits-{recipe}/by-arm/dropout"


def train(runs: Path) -> None:
    """A baseline and three dropout levels of seed 0 (the soup's members), in-process."""
    from wdiv.training.runner import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for exp, level in (("baseline", None), ("dropout", 0.1), ("dropout", 0.3), ("dropout", 0.5)):
            cfg = compose("train", overrides=[*TINY, f"+exp={exp}", "seed=0", *([f"level={level}"] if level else [])])
            assert run(cfg, runs / exp / str(cfg.run_tag) / "seed0")["status"] == "complete"


def soup(*args: str) -> tuple[int, str, str]:
    """wdiv.soup's main in this process: (exit code, stdout, stderr)."""
    from wdiv.soup import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=os.environ.copy())


def record(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


def runs_only(src: Path, dst: Path) -> Path:
    """A copy of the trained runs, without soups or report."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d) == src and n in ("soup", "report")])
    return dst


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("soups") / "runs"
    train(runs)
    rc, out, err = soup(str(runs), "--group", "arm")
    assert rc == 0, err
    recipe = record(runs / MEMBERS[0])["recipe"][:8]
    folder = runs / SOUPS.format(recipe=recipe)
    analyzed = cli("wdiv.analyze", str(runs), "--base")
    assert analyzed.returncode == 0, analyzed.stderr
    reported = cli("wdiv.report", str(runs), "--no-figures")
    assert reported.returncode == 0, reported.stderr
    return {"runs": runs, "uniform": folder / "uniform", "greedy": folder / "greedy", "out": out}


def test_uniform_soup_is_exactly_the_mean_of_its_members(study):
    info = record(study["uniform"])
    assert [m["run"] for m in info["members"]] == list(MEMBERS)  # every member, in run-id order
    members = [load_file(str(study["runs"] / m / "model.safetensors")) for m in MEMBERS]
    for m, entry in zip(MEMBERS, info["members"]):
        assert entry["sha256"] == sha256_file(study["runs"] / m / "model.safetensors")
        assert (study["uniform"] / entry["path"]).resolve() == (study["runs"] / m).resolve()
    souped = load_file(str(study["uniform"] / "model.safetensors"))
    assert souped.keys() == members[0].keys()
    for key, first in members[0].items():
        total = torch.zeros_like(first, dtype=torch.float64)
        for state in members:
            total = total + state[key].to(torch.float64)
        expected = (total / len(members)).to(first.dtype)
        assert torch.equal(souped[key], expected), key
    assert not torch.equal(souped["head.weight"], members[0]["head.weight"])  # members differ: a real average


def test_greedy_soup_is_never_below_its_best_member_on_validation(study):
    info = record(study["greedy"])
    pool = info["soup"]["pool"]
    assert [p["run"] for p in pool] == list(MEMBERS)
    for p in pool:  # the validation accuracy rebuilt here is the one training recorded
        assert p["val_acc"] == pytest.approx(p["metrics"]["val_acc"], abs=1e-12)
    best = max(pool, key=lambda p: p["val_acc"])
    assert info["metrics"]["val_acc"] >= best["val_acc"]
    assert info["members"][0]["run"] == best["run"]
    steps = info["soup"]["steps"]
    assert [s["run"] for s in steps][0] == best["run"] and len(steps) == len(pool)
    kept = [s["run"] for s in steps if s["kept"]]
    assert kept == [m["run"] for m in info["members"]]
    running = best["val_acc"]
    for s in steps[1:]:  # kept exactly when validation accuracy did not drop
        assert s["kept"] == (s["soup_val_acc"] >= running)
        running = s["soup_val_acc"] if s["kept"] else running
    members = [load_file(str(study["runs"] / r / "model.safetensors")) for r in kept]
    souped = load_file(str(study["greedy"] / "model.safetensors"))
    ev = evaluator(load_config(study["greedy"]), Runtime(device=torch.device("cpu"), progress=False))  # its own config.yaml
    ev.load(souped)
    assert ev.val_acc() == info["metrics"]["val_acc"]
    ev.load(load_file(str(study["runs"] / best["run"] / "model.safetensors")))
    assert ev.val_acc() == best["val_acc"] <= info["metrics"]["val_acc"]
    for key, first in members[0].items():
        expected = torch.stack([m[key] for m in members]).to(torch.float64).mean(0).to(first.dtype)
        assert torch.equal(souped[key], expected), key


def test_soup_run_json_is_a_run_of_its_members_cell(study):
    member = record(study["runs"] / MEMBERS[0])
    for kind in ("uniform", "greedy"):
        info = record(study[kind])
        assert info["status"] == "complete" and info["arm"] == "soup" and info["exp"] == "soup"
        assert info["variant"] == kind and info["level"] == "dropout" and info["seed"] == 0
        assert info["soup"]["seed_rule"] == "shared" and info["soup"]["member_seeds"] == [0]
        for key in ("model", "data", "recipe", "recipe_config", "pretrained"):
            assert info[key] == member[key], key
        assert set(info["metrics"]) >= {"test_acc", "test_ece", "test_loss", "ood_acc", "ood", "val_acc"}
        assert set(info["metrics"]["ood"]) == set(member["metrics"]["ood"])
        assert records.check(study[kind] / "model.safetensors", info["files"]["model.safetensors"]) is None
        assert (study[kind] / "config.yaml").is_file()
    assert "soup:uniform dropout | members 3/3" in study["out"]
    assert "1 group(s) of one run (no soup)" in study["out"]  # the lone baseline


def test_soups_go_through_analyze_and_report(study):
    report = study["runs"] / "report"
    runs = pd.read_csv(report / "runs.csv")
    assert {"soup:uniform", "soup:greedy"} <= set(runs["category"])
    assert runs[runs["arm"] == "soup"]["baseline_run_id"].eq("baseline/default/seed0").all()
    categories = pd.read_csv(report / "categories.csv")
    assert {"soup:uniform", "soup:greedy", "soup"} <= set(categories["category"])
    table = pd.read_csv(report / "soups.csv")
    assert sorted(table["kind"]) == ["greedy", "uniform"]
    by_id = runs.set_index("run_id")
    for row in table.itertuples(index=False):
        info = record(study["runs"] / row.run_id)
        pool = info["soup"]["pool"]
        best = max(pool, key=lambda p: p["val_acc"])
        assert row.best_member == best["run"] and row.n_pool == 3 and row.n_members_in_report == 3
        assert row.soup_test_acc == pytest.approx(info["metrics"]["test_acc"])
        assert row.best_member_test_acc == pytest.approx(best["metrics"]["test_acc"])
        assert row.mean_member_ood_acc == pytest.approx(sum(p["metrics"]["ood_acc"] for p in pool) / 3)
        assert row.test_acc_vs_mean == pytest.approx(row.soup_test_acc - row.mean_member_test_acc)
        assert row.soup_D_log_norm == pytest.approx(by_id.at[row.run_id, "mean_D_log_norm"])
        assert row.mean_member_D_log_norm == pytest.approx(by_id.loc[list(MEMBERS), "mean_D_log_norm"].mean())
        assert row.best_member_D_log_norm == pytest.approx(by_id.at[best["run"], "mean_D_log_norm"])
    summary = (report / "summary.md").read_text()
    assert "## Model soups against their members (soups.csv)" in summary and "soup:greedy dropout" in summary
    assert len(json.loads((report / "summary.json").read_text())["soups"]) == 2


def test_a_rerun_skips_up_to_date_soups_and_redoes_a_damaged_one(study, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(study["runs"], runs, ignore=shutil.ignore_patterns("report"))
    folder = Path(str(study["uniform"]).replace(str(study["runs"]), str(runs))).parent
    before = {k: sha256_file(folder / k / "model.safetensors") for k in ("uniform", "greedy")}
    rc, out, _ = soup(str(runs))
    assert rc == 0 and sum(line.startswith("up to date ") for line in out.splitlines()) == 2 and "0 written" in out
    weights = folder / "uniform" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    rc, out, _ = soup(str(runs))
    assert rc == 0 and "1 written, 1 up to date" in out
    assert {k: sha256_file(folder / k / "model.safetensors") for k in ("uniform", "greedy")} == before


def test_a_soup_across_seeds_takes_its_lowest_seed(study, tmp_path):
    """Same weights under seed 1: a soup of seeds 0 and 1 of one level, D against seed 0's baseline."""
    runs = runs_only(study["runs"], tmp_path / "runs")
    shutil.copytree(runs / MEMBERS[0], runs / "dropout/p0.1/seed1")
    info = record(runs / "dropout/p0.1/seed1")
    write_json(runs / "dropout/p0.1/seed1/run.json", {**info, "seed": 1})
    rc, out, err = soup(str(runs), "--group", "level", "--kind", "uniform")
    assert rc == 0, err
    made = [p.parent for p in (runs / "soup").rglob("run.json")]
    assert len(made) == 1 and made[0].parent.name == "dropout-0.1" and made[0].parent.parent.name == "by-arm-level"
    info = record(made[0])
    assert info["seed"] == 0 and info["soup"]["seed_rule"] == "lowest" and info["soup"]["member_seeds"] == [0, 1]
    same = load_file(str(runs / MEMBERS[0] / "model.safetensors"))
    souped = load_file(str(made[0] / "model.safetensors"))
    assert all(torch.equal(souped[k], v) for k, v in same.items())  # the mean of identical weights is them


def _add_member(runs: Path, name: str) -> Path:
    shutil.copytree(runs / MEMBERS[0], runs / name)
    info = record(runs / name)
    write_json(runs / name / "run.json", {**info, "level": 0.9})
    return runs / name


def test_a_member_of_another_architecture_is_refused_naming_it(study, tmp_path):
    runs = runs_only(study["runs"], tmp_path / "runs")
    odd = _add_member(runs, "dropout/p0.9/seed0")
    state = load_file(str(odd / "model.safetensors"))
    state["head.weight"] = state["head.weight"][:-1].contiguous()
    state["head.bias"] = state["head.bias"][:-1].contiguous()
    save_file(state, str(odd / "model.safetensors"))
    info = record(odd)
    info["files"]["model.safetensors"] = records.describe(odd / "model.safetensors")
    write_json(odd / "run.json", info)
    rc, out, err = soup(str(runs))
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1
    assert "dropout/p0.9/seed0: architecture differs from dropout/p0.1/seed0 (head." in lines[0]
    assert "0 written" in out and "1 refused" in out and not (runs / "soup").exists()


def test_a_member_with_other_data_or_damaged_weights_is_refused(study, tmp_path):
    runs = runs_only(study["runs"], tmp_path / "runs")
    odd = _add_member(runs, "dropout/p0.9/seed0")
    config = (odd / "config.yaml").read_text()
    assert "val_fraction: 0.2" in config
    (odd / "config.yaml").write_text(config.replace("val_fraction: 0.2", "val_fraction: 0.3"))
    rc, _, err = soup(str(runs))
    assert rc == 1 and err.count("\n") == 1 and "dropout/p0.9/seed0: data.val_fraction differs" in err
    (odd / "config.yaml").write_text(config)
    weights = odd / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    rc, _, err = soup(str(runs))
    assert rc == 1 and err.count("\n") == 1 and f"dropout/p0.9/seed0: {weights}: truncated" in err


@pytest.mark.parametrize("args, says", [
    (["--group", "arm,colour"], "--group colour"),
    (["--kind", "uniform,mean"], "--kind mean"),
    (["--device", "tpu"], "--device tpu"),
])
def test_bad_options_are_one_line_and_exit_2(study, args, says):
    rc, out, err = soup(str(study["runs"]), *args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and says in err


def test_a_missing_runs_dir_is_one_line(tmp_path):
    rc, _, err = soup(str(tmp_path / "nowhere"))
    assert rc == 2 and err == f"wdiv.soup: error: RUNS_DIR {tmp_path / 'nowhere'} does not exist\n"
