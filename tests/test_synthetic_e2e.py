"""The synthetic arm through the real CLI: grid composition, run.json synth + diversity, bad keys."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from wdiv.train import CONFIG_DIR

TINY = ["model=vit_micro", "trainer.epochs=1", "trainer.progress=false"]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "wdiv.train", *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy())


def test_multirun_grid_is_amount_x_mode_x_filter():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        full = compose("train", overrides=["+exp=synthetic"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in full.hydra.sweeper.params.items()}
        assert params == {"synth.mode": ["replace", "add"], "synth.filter": ["false", "true"],
                          "level": ["0.1", "0.3", "0.5", "0.7", "0.9", "1.0"]}
        tags = set()
        for mode, filt, level in itertools.product(*params.values()):
            cfg = compose("train", overrides=["+exp=synthetic", f"synth.mode={mode}", f"synth.filter={filt}", f"level={level}"])
            assert (cfg.arm, cfg.synth.mode, cfg.synth.filter, cfg.synth.p, cfg.synth.generator.name) == (
                "synthetic", mode, filt == "true", float(level), "pca_gmm")
            assert cfg.run_tag == f"{mode}{'+filter' if filt == 'true' else ''}_p{level}"
            tags.add(cfg.run_tag)
        assert len(tags) == 24  # every cell has its own run directory
        # the former third mode is an alias: the same run directory as add + filter
        alias = compose("train", overrides=["+exp=synthetic", "synth.mode=filtered", "level=0.3"])
        assert alias.run_tag == "add+filter_p0.3"
        # another generator replaces the offline one from the command line
        cfg = compose("train", overrides=["+exp=synthetic", "synth=folder", "synth.generator.root=/x"])
        assert cfg.synth.generator.name == "folder" and cfg.synth.p == 0.5


def test_synthetic_run_records_amount_mode_and_diversity(tmp_path):
    """Through the alias synth.mode=filtered: run.json says both knobs, add and filter."""
    proc = _cli("+exp=synthetic", *TINY, "synth.mode=filtered", "level=0.3", f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "synthetic" / "add+filter_p0.3" / "seed0" / "run.json").read_text())
    assert info["status"] == "complete"
    assert (info["arm"], info["level"], info["level_index"], info["variant"]) == ("synthetic", 0.3, 1, "add+filter")
    synth = info["synth"]
    assert (synth["mode"], synth["filter"], synth["p"], synth["generator"]) == ("add", True, 0.3, "pca_gmm")
    assert synth["n_synthetic"] == round(0.3 * synth["n_real"]) and synth["n_real"] > 100
    div = info["diversity"]
    assert set(div) == {"vendi_pixel", "vendi_embed", "rho", "weighted_vs", "n"}
    assert div["n"] == min(500, synth["n_real"] + synth["n_synthetic"])
    assert 1.0 < div["vendi_pixel"] < div["n"] and 1.0 < div["vendi_embed"] < div["n"]
    assert 0.0 < div["rho"] <= 1.0 and math.isclose(div["weighted_vs"], div["vendi_embed"] * div["rho"])


def test_bad_synth_mode_fails_at_compose_time_naming_the_key():
    """synth.mode is typed by its schema (wdiv.training.config_schema): refused before any run starts."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose("train", overrides=["+exp=synthetic", *TINY, "synth.mode=double", "diversity.compute=false"])
    cause = str(err.value.__cause__)
    assert "synth.mode" in cause and "Invalid value 'double', expected one of [none, replace, add, filtered]" in cause


def test_measuring_diversity_leaves_training_unchanged(tmp_path):
    """Measuring (augmented draws, forward passes in eval mode) must not change what the run learns."""
    from safetensors.torch import load_file

    from wdiv.training.runner import run

    def go(name, compute):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["+exp=augment", "level=autoaugment", *TINY, f"diversity.compute={compute}"])
        return run(cfg, tmp_path / name), load_file(str(tmp_path / name / "model.safetensors"))

    with_div, w1 = go("with", True)
    without, w2 = go("without", False)
    assert "diversity" in with_div and "diversity" not in without
    assert with_div["diversity"]["rho"] < 1.0  # augmented rows differ from their originals
    assert with_div["metrics"] == without["metrics"]
    assert all((w1[k] == w2[k]).all() for k in w1)


@pytest.mark.slow
def test_multirun_runs_the_whole_grid(tmp_path):
    proc = _cli("-m", "+exp=synthetic", *TINY, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("run.json"))]
    assert len(infos) == 24 and all(i["status"] == "complete" for i in infos)
    cells = {(i["variant"], i["level"]) for i in infos}
    variants = ("replace", "add", "replace+filter", "add+filter")
    assert cells == {(m, p) for m in variants for p in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)}
    n = {i["synth"]["n_real"] for i in infos if i["variant"] == "add"}  # the real split's size
    assert len(n) == 1
    n = n.pop()
    for i in infos:
        s = i["synth"]
        wanted = round(s["p"] * n)
        assert s["n_real"] == (n - wanted if s["mode"] == "replace" else n)  # replace + filter keeps the real share
        assert s["n_synthetic"] == wanted if not s["filter"] else 0 < s["n_synthetic"] <= wanted
        assert i["diversity"]["rho"] is not None
