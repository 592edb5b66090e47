"""Text runs through the real CLI on the tiny BERT: every arm, every EDA operation, each synthetic variant, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

from test_train import assert_same_weights, cli, compose_cfg, weights  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "text"
TEXT = [
    "model=tiny_bert", "data=text_csv", f"data.train_file={FIX / 'train.csv'}", f"data.test_file={FIX / 'test.csv'}",
    f"+data.ood_files.shuffled={FIX / 'ood_shuffled.jsonl'}", "trainer.epochs=3", "optim.lr=3e-3", "trainer.progress=false",
]
EDA_LEVELS = ["rd-0.3-0.5", "ri-0.3-0.5", "rs-0.3-0.5", "sr-0.3-0.5", "rd+ri+rs+sr-0.3-0.5"]


def run_text(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run

    return run(compose_cfg(*TEXT, *overrides), out_dir)


def runs(root: Path) -> dict[str, dict]:
    return {p.parent.relative_to(root).as_posix(): json.loads(p.read_text()) for p in root.rglob("run.json")}


@pytest.fixture(scope="module")
def arms(tmp_path_factory) -> Path:
    """One real CLI multirun over every arm a text run has (each exp at its default level)."""
    root = tmp_path_factory.mktemp("text_arms")
    cli("-m", "+exp=baseline,dropout,weight_decay,text_augment,text_synthetic", *TEXT, f"paths.runs_dir={root}", cwd=root)
    return root


@pytest.fixture(scope="module")
def augment(tmp_path_factory) -> Path:
    """Every EDA operation (in-process: the runner the CLI calls, without another interpreter start)."""
    root = tmp_path_factory.mktemp("text_augment")
    for level in EDA_LEVELS:
        run_text(root / level, "+exp=text_augment", f"level={level}")
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """mode x filter with the offline generator and with a file of generated texts."""
    root = tmp_path_factory.mktemp("text_synthetic")
    for synth in ("text_offline", "text_file"):
        for mode in ("replace", "add"):
            for filt in ("false", "true"):
                extra = [f"synth.generator.path={FIX / 'generated.csv'}"] if synth == "text_file" else []
                run_text(root / synth / f"{mode}_{filt}", "+exp=text_synthetic", f"synth={synth}", *extra, f"synth.mode={mode}", f"synth.filter={filt}", "level=0.2", "synth.oversample=1.5")
    return root


def test_baseline_dropout_and_weight_decay_complete_with_the_run_contract(arms):
    found = runs(arms)
    assert sorted(found) == ["baseline/default/seed0", "dropout/p0.1/seed0", "text_augment/rd-0.1-1.0/seed0", "text_synthetic/ngram_replace_filter-False_p0.5/seed0", "weight_decay/wd1e-05/seed0"]
    for name, info in found.items():
        run_dir = arms / name
        assert info["status"] == "complete" and info["model"] == "tiny_bert" and info["data"] == "text_csv"
        m = info["metrics"]
        assert m["test_acc"] > 0.75, (name, m)  # the fixture is learnable in 3 epochs
        assert 0.0 <= m["test_ece"] <= 1.0 and m["test_loss"] > 0 and set(m["ood"]) == {"shuffled"} and m["ood_acc"] == m["ood"]["shuffled"]
        assert info["text"]["labels"] == ["complaint", "no complaint"] and info["text"]["tokenizer"] == "words"
        d = info["diversity"]
        assert {"vendi_ngram", "vendi_embed", "rho", "weighted_vs", "n"} <= d.keys() and d["n"] == 144
        assert (d["rho"] == pytest.approx(1.0)) == (info["arm"] in ("baseline", "dropout", "weight_decay"))
        assert info["pretrained"]["kind"] == "initial"
        assert weights(run_dir).keys() == load_file(str(run_dir / "initial.safetensors")).keys()
        with open(run_dir / "history.csv") as fh:
            assert len(list(csv.DictReader(fh))) == 3
    assert found["text_synthetic/ngram_replace_filter-False_p0.5/seed0"]["synth"]["n_synthetic"] == 72
    assert found["text_synthetic/ngram_replace_filter-False_p0.5/seed0"]["variant"] == "replace"
    recipes = {info["recipe"] for info in found.values()}
    assert len(recipes) == 1  # the arms share the baseline's recipe: the report matches them
    base, wd = weights(arms / "baseline/default/seed0"), weights(arms / "weight_decay/wd1e-05/seed0")
    assert not torch.equal(base["encoder.encoder.layer.0.attention.self.query.weight"], wd["encoder.encoder.layer.0.attention.self.query.weight"])


def test_every_eda_operation_runs_and_changes_the_training_set(augment, arms):
    found = runs(augment)
    assert sorted(found) == sorted(EDA_LEVELS)
    base = runs(arms)["baseline/default/seed0"]["diversity"]
    for level in EDA_LEVELS:
        info = found[level]
        assert info["status"] == "complete" and info["arm"] == "augment" and info["level"] == level
        assert info["level_index"] is not None
        assert info["text"]["eda"]["policy"] == level and info["text"]["eda"]["synonyms"] in ("wordnet", "corpus")
        assert info["diversity"]["rho"] < 1.0
        # a swap keeps every word count; the other operations change the 1-gram diversity
        assert (info["diversity"]["vendi_ngram"] == pytest.approx(base["vendi_ngram"])) == (level == "rs-0.3-0.5")
        assert info["metrics"]["test_acc"] > 0.5


def test_each_synthetic_variant_with_offline_and_file_generators(synthetic):
    found = runs(synthetic)
    assert len(found) == 8
    seen = set()
    for name, info in found.items():
        assert info["status"] == "complete" and info["arm"] == "synthetic" and info["level"] == 0.2, name
        s = info["synth"]
        seen.add((s["generator"], info["variant"]))
        assert info["variant"] == s["mode"] + ("+filter" if s["filter"] else "")
        assert 0 < s["n_synthetic"] <= 29 and (s["filter"] or s["n_synthetic"] == 29)
        if s["mode"] == "replace":
            assert s["n_real"] == 144 - 29
        else:
            assert s["n_real"] == 144
        assert 0.0 < info["diversity"]["rho"] < 1.0
    assert seen == {(g, v) for g in ("ngram", "text_file") for v in ("replace", "add", "replace+filter", "add+filter")}


def test_same_seed_repeats_bitwise_and_a_killed_run_resumes_to_identical_weights(tmp_path):
    over = ["+exp=text_augment", "level=rd+ri+rs+sr-0.3-0.5", "trainer.epochs=3", "diversity.compute=false"]
    full = run_text(tmp_path / "full", *over)
    again = run_text(tmp_path / "again", *over)
    run_text(tmp_path / "other", *over, "seed=1")
    assert full["metrics"] == again["metrics"]
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "again"))
    assert not torch.equal(weights(tmp_path / "full")["head.weight"], weights(tmp_path / "other")["head.weight"])
    stopped = run_text(tmp_path / "resumed", *over, "trainer.stop_after_epoch=1")
    assert stopped["status"] == "running"
    resumed = run_text(tmp_path / "resumed", *over)
    assert resumed["status"] == "complete" and resumed["metrics"] == full["metrics"]
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "resumed"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model=vit_micro"], "model"),
        (["aug.policy=autoaugment"], "aug.policy"),
        (["data.train_file=/nonexistent.csv"], "data.train_file"),
        (["data.label_column=target"], "data.label_column"),
        (["+exp=text_synthetic", "synth.mode=filtered"], "synth.mode"),
    ],
)
def test_bad_text_config_raises_config_error_naming_the_key(overrides, key, tmp_path):
    from wdiv.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^{key}:"):
        run_text(tmp_path, *overrides, "diversity.compute=false")


def test_bad_dropout_place_fails_at_compose_time_naming_the_key(tmp_path):
    """model.dropout_at is typed by its schema (wdiv.training.config_schema), text models too."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        run_text(tmp_path, "model.dropout_at=everywhere", "diversity.compute=false")
    assert "model.dropout_at" in str(err.value.__cause__) and "expected one of [head, blocks, both]" in str(err.value.__cause__)
    assert not (tmp_path / "run.json").exists()


def test_text_model_on_image_data_is_refused(tmp_path):
    from wdiv.errors import ConfigError
    from wdiv.training.runner import run

    with pytest.raises(ConfigError, match="^data:"):
        run(compose_cfg("model=tiny_bert", "data=digits", "diversity.compute=false"), tmp_path)
