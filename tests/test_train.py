"""wdiv.train: configs compose, every experiment runs through the real CLI, runs repeat and resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from wdiv.train import CONFIG_DIR
from wdiv.references import resolve_pretrained

TINY = ["model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false"]
# text_* experiments need a text model and data: tests/test_text_cli.py runs them
EXPS = sorted(p.stem for p in (Path(CONFIG_DIR) / "exp").glob("*.yaml") if not p.stem.startswith("text_"))
RUN_JSON_KEYS = {"status", "exp", "arm", "level", "level_index", "variant", "seed", "model", "data", "recipe", "recipe_config", "pretrained", "metrics", "wall_time_s"}


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "wdiv.train", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    if check and proc.returncode != 0:
        raise AssertionError(f"wdiv.train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_inprocess(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run

    return run(compose_cfg(*TINY, *overrides), out_dir)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("exp", EXPS)
def test_every_exp_composes_with_its_grid(exp):
    cfg = compose_cfg(f"+exp={exp}")
    assert cfg.exp_name == exp
    assert cfg.arm in ("baseline", "dropout", "weight_decay", "augment", "synthetic")
    text = (Path(CONFIG_DIR) / "exp" / f"{exp}.yaml").read_text()
    assert text.startswith("# @package _global_")
    if cfg.arm != "baseline":
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            full = compose("train", overrides=[f"+exp={exp}"], return_hydra_config=True)
        grid = full.hydra.sweeper.params
        assert grid, f"{exp}: no hydra.sweeper.params grid"
        if "level" in grid and cfg.levels:
            assert len(str(grid.level).split(",")) == len(cfg.levels)


def test_cli_cfg_job_prints_the_composed_config(tmp_path):
    out = cli("+exp=weight_decay", "--cfg", "job", cwd=tmp_path).stdout
    assert "arm: weight_decay" in out and "weight_decay: ${level}" in out


def test_level_reaches_the_regulariser():
    assert compose_cfg("+exp=dropout", "level=0.5").model.dropout == 0.5
    assert compose_cfg("+exp=weight_decay", "level=5e-4").optim.weight_decay == 5e-4
    assert compose_cfg("+exp=augment", "level=augmix").aug.policy == "augmix"
    paper = compose_cfg("+exp=paper")
    assert (paper.optim.name, paper.optim.lr, paper.trainer.epochs, paper.trainer.batch_size) == ("adam", 1e-5, 5, 32)


@pytest.fixture(scope="module")
def every_exp_run(tmp_path_factory) -> Path:
    """One real CLI multirun over every exp file (each at its default level): one process start."""
    root = tmp_path_factory.mktemp("every_exp")
    cli("-m", f"+exp={','.join(EXPS)}", *TINY, "seed=0", f"paths.runs_dir={root}", cwd=root)
    return root


@pytest.mark.parametrize("exp", EXPS)
def test_every_exp_runs_end_to_end_through_the_cli(exp, every_exp_run):
    (run_dir,) = [p.parent for p in (every_exp_run / exp).rglob("run.json")]
    assert run_dir.name == "seed0"
    info = json.loads((run_dir / "run.json").read_text())
    assert RUN_JSON_KEYS <= info.keys()
    assert info["status"] == "complete" and info["exp"] == exp
    m = info["metrics"]
    assert 0.0 <= m["test_acc"] <= 1.0 and 0.0 <= m["test_ece"] <= 1.0 and m["test_loss"] > 0
    assert set(m["ood"]) == {"gaussian_noise", "gaussian_blur", "contrast", "rotation", "elastic"}
    assert info["pretrained"]["relative_to"] == "cache" and not Path(info["pretrained"]["path"]).is_absolute()
    pre = resolve_pretrained(info["pretrained"], run_dir)  # in $WDIV_CACHE
    assert pre.exists() and len(info["pretrained"]["sha256"]) == 64 and info["pretrained"]["kind"] == "builtin"
    assert weights(run_dir).keys() == load_file(str(pre)).keys()
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_same_seed_is_bitwise_repeatable_and_seeds_differ(tmp_path):
    a = run_inprocess(tmp_path / "a", "+exp=dropout", "trainer.epochs=2", "seed=0")
    b = run_inprocess(tmp_path / "b", "+exp=dropout", "trainer.epochs=2", "seed=0")
    run_inprocess(tmp_path / "c", "+exp=dropout", "trainer.epochs=2", "seed=1")
    assert a["metrics"] == b["metrics"]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not torch.equal(weights(tmp_path / "a")["head.weight"], weights(tmp_path / "c")["head.weight"])


def test_progress_bars_do_not_change_results(tmp_path):
    quiet = run_inprocess(tmp_path / "quiet", "+exp=baseline", "seed=0")
    shown = run_inprocess(tmp_path / "shown", "+exp=baseline", "seed=0", "trainer.progress=true")
    assert quiet["metrics"] == shown["metrics"]
    assert_same_weights(weights(tmp_path / "quiet"), weights(tmp_path / "shown"))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    over = ["+exp=augment", "level=randaugment", "trainer.epochs=3", "seed=0"]
    full = run_inprocess(tmp_path / "full", *over)
    stopped = run_inprocess(tmp_path / "resumed", *over, "trainer.stop_after_epoch=1")
    assert stopped["status"] == "running"
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "running"
    resumed = run_inprocess(tmp_path / "resumed", *over)
    assert resumed["status"] == "complete" and resumed["metrics"] == full["metrics"]
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "resumed"))
    assert (tmp_path / "resumed" / "history.csv").read_text() .count("\n") == 4
    again = run_inprocess(tmp_path / "resumed", *over)  # complete: nothing to do
    assert again["metrics"] == full["metrics"]


def test_changed_config_in_existing_run_dir_is_refused(tmp_path):
    from wdiv.errors import ConfigError

    first = run_inprocess(tmp_path, "+exp=baseline")
    with pytest.raises(ConfigError, match="optim.lr"):
        run_inprocess(tmp_path, "+exp=baseline", "optim.lr=0.1")
    assert json.loads((tmp_path / "run.json").read_text()) == json.loads(json.dumps(first))  # left intact


@pytest.mark.parametrize(
    "overrides, key",
    [(["+exp=dropout", "level=1.0"], "model.dropout")],
)
def test_bad_config_exits_nonzero_with_one_line_naming_the_key(overrides, key, tmp_path):
    proc = cli(*overrides, *TINY, f"paths.runs_dir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"config error: {key}:" in errors[0], proc.stderr[-2000:]
    assert "ERROR" not in proc.stdout  # errors on stderr, results on stdout
    # refused before anything is written: no run.json, and no run dir left behind (issue 12)
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob(".hydra"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data=imagefolder", "data.train_root=/nonexistent/train", "data.test_root=/nonexistent/test"], "data.train_root"),
        (["data=cifar10", "paths.data_dir=/nonexistent"], "data.root"),
        (["model.name=no_such_timm_model"], "model.name"),
        (["model.pretrained=/nonexistent/weights.safetensors"], "model.pretrained"),
        (["aug.policy=autoaugment+sparkle"], "aug.policy"),
        (["+exp=weight_decay", "level=-1"], "level"),
        (["arm=bogus"], "arm"),
        (["data=imagefolder", f"data.train_root={Path(__file__).parent}", f"data.test_root={Path(__file__).parent}"], "model.pretrained"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(overrides, key, tmp_path):
    from wdiv.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{key}:"):
        run_inprocess(tmp_path, *overrides)
    assert not (tmp_path / "run.json").exists()  # refused before anything is written (issue 12)


def test_multirun_sweeps_the_dropout_grid_into_readable_dirs(tmp_path):
    cli("-m", "+exp=dropout", *TINY, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    dirs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("run.json"))
    assert dirs == [f"dropout/p{p}/seed0" for p in ("0.1", "0.3", "0.5", "0.7")]
    levels = [json.loads((tmp_path / d / "run.json").read_text())["level_index"] for d in dirs]
    assert levels == [0, 1, 2, 3]


def test_failing_diversity_measurement_is_recorded_not_fatal(tmp_path, monkeypatch):
    import wdiv.diversity

    def broken(**_kwargs):
        raise ValueError("zero-norm rows")

    monkeypatch.setattr(wdiv.diversity, "measure_training_set", broken)
    info = run_inprocess(tmp_path, "+exp=baseline", "diversity.compute=true")
    assert info["status"] == "complete"
    assert info["diversity"] == {"error": "ValueError: zero-norm rows"}
