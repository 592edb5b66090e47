"""run.json recipe (arms matched to baselines), from-scratch initial weights, off-grid level_index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from wdiv.io import sha256_file
from wdiv.train import CONFIG_DIR
from wdiv.training.recipe import ARM_KEYS, CELL_KEYS, EXECUTION_KEYS, recipe
from wdiv.training.runner import describe, level_index

TINY = ["model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false"]
SCRATCH = [*TINY, "model.pretrained=none"]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def recipe_of(*overrides: str) -> str:
    return recipe(OmegaConf.to_container(compose_cfg(*overrides), resolve=True))["recipe"]


# ------------------------------------------------------------------ recipe


def test_every_arm_trained_the_same_way_shares_the_baselines_recipe():
    base = recipe_of("+exp=baseline", *TINY)
    assert len(base) == 16 and int(base, 16) >= 0
    arms = [
        ["+exp=dropout"], ["+exp=dropout", "level=0.7", "model.dropout_at=both"],
        ["+exp=weight_decay", "level=5e-3", "optim.decay_norm_bias=true"],
        ["+exp=augment", "level=autoaugment+noise", "aug.noise_std=0.05"],
        ["+exp=synthetic", "synth.mode=filtered", "level=0.9"], ["+exp=synthetic", "synth=folder", "synth.generator.root=/x"],
        ["+exp=baseline", "seed=7"],
        ["+exp=baseline", "data=cifar10"],  # the data set is its own cell key, not the recipe's
        ["+exp=baseline", "trainer.threads=4", "trainer.device=cpu", "trainer.num_workers=2", "trainer.eval_batch_size=7",
         "trainer.progress=true", "trainer.resume=false", "trainer.stop_after_epoch=1", "paths.runs_dir=/elsewhere",
         "paths.cache_dir=/c", "diversity.compute=true", "diversity.sample_size=9"],
    ]
    for over in arms:
        assert recipe_of(*over, *TINY) == base, over


def test_how_the_model_is_trained_changes_the_recipe():
    base = recipe_of("+exp=baseline", *TINY)
    paper = recipe_of("+exp=baseline", *TINY, "optim=paper", "trainer=paper")
    assert paper != base
    # +exp=paper is the baseline arm of the published recipe: an arm under the same recipe matches it
    assert recipe_of("+exp=paper", *TINY) == paper == recipe_of("+exp=dropout", *TINY, "optim=paper", "trainer=paper")
    for over in (["optim.lr=0.01"], ["trainer.epochs=2"], ["trainer.batch_size=8"], ["optim=adamw"], ["optim.schedule=constant"],
                 ["model.pretrained=none"], ["model=vit_small32"], ["model.pretrain.epochs=4"], ["trainer.precision=fp32"]):
        assert recipe_of("+exp=baseline", *TINY, *over) != base, over


def test_recipe_config_is_what_the_hash_covers_and_names_no_arm_knob():
    resolved = OmegaConf.to_container(compose_cfg("+exp=dropout", *TINY), resolve=True)
    got = recipe(resolved)
    cfg = got["recipe_config"]
    for rule in (ARM_KEYS, CELL_KEYS, EXECUTION_KEYS):
        for key, sub in rule.items():
            if sub is None:
                assert key not in cfg, key
            else:
                assert not set(sub) & set(cfg.get(key, {})), key
    assert {"model", "optim", "trainer"} <= cfg.keys() and cfg["optim"]["lr"] == 1e-3 and cfg["trainer"]["precision"] == "auto"
    import hashlib

    assert got["recipe"] == hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert resolved["model"]["dropout"] == 0.1  # the config itself is left alone


# ------------------------------------------------------------------ level_index


def test_on_grid_levels_keep_their_place_and_off_grid_levels_get_none():
    grid = [1e-5, 5e-5, 1e-4]
    assert [level_index(x, grid) for x in grid] == [0, 1, 2]
    assert level_index("5e-5", grid) == 1 and level_index(5e-5, ["1e-5", "5e-5"]) == 1
    assert level_index(2e-5, grid) is None and level_index(3e-5, grid) is None  # never one shared index
    assert level_index(1.0, grid) is None
    assert level_index("autoaugment", ["flip+crop", "autoaugment"]) == 1
    assert level_index("flip", ["flip+crop", "autoaugment"]) is None
    assert level_index(None, []) == 0


@pytest.mark.parametrize(
    "overrides, index",
    [
        (["+exp=dropout", "level=0.5"], 2),
        (["+exp=dropout", "level=0.2"], None),
        (["+exp=dropout", "level=0.25"], None),
        (["+exp=weight_decay", "level=5e-4"], 3),
        (["+exp=synthetic", "level=1"], 5),
        (["+exp=augment", "level=augmix"], 3),
        (["+exp=augment", "level=flip"], None),
        (["+exp=baseline"], 0),
    ],
)
def test_describe_records_level_index_through_the_composed_config(overrides, index):
    assert describe(compose_cfg(*overrides))["level_index"] == index


# ------------------------------------------------------------------ from-scratch runs


def _run(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run

    return run(compose_cfg(*overrides), out_dir)


def test_from_scratch_run_keeps_its_seeded_initial_weights_as_reference(tmp_path, monkeypatch):
    from wdiv.analyze import attach_bases, discover
    from wdiv.training import models

    over = ["+exp=dropout", *SCRATCH, "seed=3"]
    info = _run(tmp_path, *over)
    assert info["status"] == "complete"
    initial = tmp_path / "initial.safetensors"
    pre = info["pretrained"]
    assert pre == {"path": "initial.safetensors", "sha256": sha256_file(initial), "kind": "initial"}
    assert json.loads((tmp_path / "run.json").read_text())["pretrained"] == pre
    assert info["recipe"] == recipe(OmegaConf.to_container(compose_cfg(*over), resolve=True))["recipe"]

    cfg = compose_cfg(*over)
    torch.manual_seed(3)
    fresh = models.create(cfg.model, 5).state_dict()
    kept = load_file(str(initial))
    assert kept.keys() == fresh.keys()
    assert all(torch.equal(kept[k], fresh[k]) for k in kept)
    assert not torch.equal(kept["head.weight"], load_file(str(tmp_path / "model.safetensors"))["head.weight"])  # trained

    decoy = tmp_path / "elsewhere"
    decoy.mkdir()
    (decoy / "initial.safetensors").write_bytes(b"not this one")
    monkeypatch.chdir(decoy)  # a file of the same name in the working directory is never the reference
    (target,) = discover([str(tmp_path)])  # wdiv.analyze --base finds it beside the run, and only model.safetensors is a target
    attach_bases([target], "auto")
    assert target.error is None and target.weights.name == "model.safetensors"
    assert target.base == initial and target.base_sha == pre["sha256"]


def test_resumed_from_scratch_run_keeps_the_initial_weights_it_started_from(tmp_path):
    over = [*SCRATCH, "trainer.epochs=2", "seed=0"]
    stopped = _run(tmp_path / "resumed", *over, "trainer.stop_after_epoch=1")
    initial = tmp_path / "resumed" / "initial.safetensors"
    sha, mtime = sha256_file(initial), initial.stat().st_mtime_ns
    assert stopped["status"] == "running" and stopped["pretrained"]["sha256"] == sha
    resumed = _run(tmp_path / "resumed", *over)
    assert resumed["status"] == "complete" and resumed["pretrained"]["sha256"] == sha
    assert initial.stat().st_mtime_ns == mtime  # never rewritten
    full = _run(tmp_path / "full", *over)
    assert full["metrics"] == resumed["metrics"] and full["pretrained"]["sha256"] == sha


def test_recorded_initial_weights_win_over_a_different_fresh_init(tmp_path):
    from wdiv.training import models
    from wdiv.training.checkpoint import save_weights
    from wdiv.training.pretrained import record_initial

    cfg = compose_cfg(*SCRATCH)
    torch.manual_seed(0)
    recorded = models.create(cfg.model, 5)
    record_initial(recorded, tmp_path / "initial.safetensors")
    sha = sha256_file(tmp_path / "initial.safetensors")
    torch.manual_seed(1)
    other = models.create(cfg.model, 5)
    assert record_initial(other, tmp_path / "initial.safetensors")["sha256"] == sha
    assert torch.equal(other.state_dict()["head.weight"], recorded.state_dict()["head.weight"])

    save_weights({"w": torch.zeros(2)}, tmp_path / "alien.safetensors")
    from wdiv.errors import ConfigError

    with pytest.raises(ConfigError, match="^model.pretrained:"):
        record_initial(other, tmp_path / "alien.safetensors")


def test_restart_with_resume_false_replaces_the_initial_weights(tmp_path):
    first = _run(tmp_path, *SCRATCH, "seed=0")["pretrained"]["sha256"]
    info = _run(tmp_path, *SCRATCH, "seed=1", "trainer.resume=false")  # starts the directory afresh
    assert info["pretrained"]["sha256"] == sha256_file(tmp_path / "initial.safetensors") != first


def test_complete_run_from_before_the_recipe_gets_it_recorded_on_rerun(tmp_path):
    first = _run(tmp_path, *SCRATCH, "+exp=weight_decay")
    old = {k: v for k, v in first.items() if k not in ("recipe", "recipe_config")}
    (tmp_path / "run.json").write_text(json.dumps(old))
    again = _run(tmp_path, *SCRATCH, "+exp=weight_decay", "trainer.threads=2")  # complete: nothing retrained
    assert again["recipe"] == first["recipe"] == json.loads((tmp_path / "run.json").read_text())["recipe"]
    assert again["metrics"] == first["metrics"]


# ------------------------------------------------------------------ the model's own recipe


def _resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_cfg(*overrides), resolve=True)


@pytest.mark.parametrize("model", ["clip_vit_b32", "clip_rn50", "resnet18", "bert_base"])
def test_hub_models_fine_tune_with_the_published_recipe(model):
    r = _resolved(f"model={model}")
    assert (r["optim"]["lr"], r["optim"]["schedule"], r["optim"]["warmup_epochs"]) == (1e-5, "constant", 0.0)
    assert (r["trainer"]["epochs"], r["trainer"]["batch_size"]) == (5, 32)
    # the model's recipe is the published one: the same cell as forcing it with optim=paper trainer=paper
    assert recipe(r)["recipe"] == recipe(_resolved(f"model={model}", "optim=paper", "trainer=paper"))["recipe"]
    assert "finetune" not in recipe(r)["recipe_config"]["model"]


@pytest.mark.parametrize("model", ["vit_small32", "vit_micro", "cnn_small"])
def test_builtin_models_keep_the_fast_recipe(model):
    r = _resolved(f"model={model}")
    assert (r["optim"]["lr"], r["optim"]["schedule"], r["trainer"]["epochs"], r["trainer"]["batch_size"]) == (1e-3, "cosine", 12, 16)
    assert recipe(r)["recipe"] != recipe(_resolved(f"model={model}", "optim=paper", "trainer=paper"))["recipe"]


def test_overrides_beat_the_model_recipe_and_a_far_larger_lr_is_named(caplog):
    from wdiv.training.validate import validate

    r = _resolved("model=clip_vit_b32", "optim.lr=1e-3", "trainer.epochs=2")
    assert (r["optim"]["lr"], r["trainer"]["epochs"], r["trainer"]["batch_size"]) == (1e-3, 2, 32)
    with caplog.at_level("WARNING", logger="wdiv.training.validate"):
        validate(compose_cfg("model=clip_vit_b32", "optim.lr=1e-3"))
    assert [r.getMessage() for r in caplog.records if "optim.lr" in r.getMessage()] == [
        "optim.lr=0.001 is 100x the clip_vit_b32 recipe's lr 1e-05 (model.finetune.lr): full fine-tuning at that rate "
        "can wreck the pretrained features"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="wdiv.training.validate"):
        validate(compose_cfg("model=clip_vit_b32", "optim.lr=1e-4"))  # 10x: still within reason
        validate(compose_cfg())
    assert not [r for r in caplog.records if "optim.lr" in r.getMessage()]
