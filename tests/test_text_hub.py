"""data=hf_text: a `datasets` dataset (save_to_disk directory or a folder of data files) trains as the same files do."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("transformers")

from test_train import assert_same_weights, compose_cfg, weights  # noqa: E402
from wdiv.errors import ConfigError  # noqa: E402

FIX = Path(__file__).parent / "fixtures" / "text"
COMMON = ["model=tiny_bert", "trainer.epochs=2", "optim.lr=3e-3", "trainer.progress=false", "diversity.compute=false"]
CSV = ["data=text_csv", f"data.train_file={FIX / 'train.csv'}", f"data.test_file={FIX / 'test.csv'}",
       f"+data.ood_files.shuffled={FIX / 'ood_shuffled.jsonl'}"]
# ClassLabel order differs from text_csv's sorted order on purpose: the dataset's order must win
NAMES = ["no complaint", "complaint"]


def run(out_dir: Path, *overrides: str) -> dict:
    from wdiv.training.runner import run as run_cfg

    return run_cfg(compose_cfg(*COMMON, *overrides), out_dir)


def _split(frame: pd.DataFrame, class_label: bool):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=NAMES) if class_label else datasets.Value("string")})
    rows = {"text": frame["text"].tolist(),
            "label": [NAMES.index(v) for v in frame["label"]] if class_label else frame["label"].tolist()}
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The fixture files as a DatasetDict written by save_to_disk, with a ClassLabel column."""
    root = tmp_path_factory.mktemp("hf") / "complaints"
    tables = {"train": pd.read_csv(FIX / "train.csv"), "test": pd.read_csv(FIX / "test.csv"),
              "shuffled": pd.read_json(FIX / "ood_shuffled.jsonl", lines=True)}
    datasets.DatasetDict({k: _split(v, True) for k, v in tables.items()}).save_to_disk(str(root))
    return root


def test_a_saved_dataset_trains_exactly_as_the_same_files(saved, tmp_path):
    hub = run(tmp_path / "hub", "data=hf_text", f"data.dataset={saved}", "+data.ood_splits.shuffled=shuffled",
              "data.labels=[complaint,no complaint]")  # text_csv's sorted order, so both runs see the same indices
    files = run(tmp_path / "csv", *CSV)
    assert hub["status"] == files["status"] == "complete"
    assert hub["data"] == "complaints" and files["data"] == "text_csv"
    assert hub["metrics"] == files["metrics"]
    assert set(hub["metrics"]) >= {"test_acc", "ood_acc"}
    assert_same_weights(weights(tmp_path / "hub"), weights(tmp_path / "csv"))


def test_the_class_label_order_is_the_label_order(saved, tmp_path):
    out = run(tmp_path / "hub", "data=hf_text", f"data.dataset={saved}")
    assert out["text"]["labels"] == NAMES  # the dataset's order, not sorted
    recorded = json.loads((tmp_path / "hub" / "run.json").read_text())
    assert recorded["text"]["labels"] == NAMES and recorded["data"] == "complaints"


def test_a_folder_of_data_files_and_no_test_split(tmp_path):
    folder = tmp_path / "raft_like"
    folder.mkdir()
    pd.read_csv(FIX / "train.csv").to_json(folder / "train.jsonl", orient="records", lines=True)
    out = run(tmp_path / "run", "data=hf_text", f"data.dataset={folder}", "data.test_split=null",
              "data.test_fraction=0.25", "data.subset=null")
    n_train = len(pd.read_csv(FIX / "train.csv"))
    assert out["status"] == "complete" and out["data"] == "raft_like"
    assert out["text"]["n_train"] < n_train * 0.75 + 2  # test and val both sliced off the one split
    assert out["text"]["labels"] == sorted(NAMES)  # plain string labels: sorted


@pytest.mark.parametrize("overrides, key", [
    (["data.dataset=some-org/not-here"], "data.dataset: some-org/not-here is not a local directory; set data.download=true"),
    (["data.test_split=validation"], "data.test_split: no split 'validation'"),
    (["data.text_column=tweet"], "data.text_column: column 'tweet' not in"),
    (["+data.ood_splits.x=nosuch"], "data.ood_splits.x: no split 'nosuch'"),
])
def test_bad_dataset_keys_are_named(saved, tmp_path, overrides, key):
    from wdiv.training.runner import run as run_cfg

    cfg = compose_cfg(*COMMON, "data=hf_text", f"data.dataset={saved}", *overrides)
    with pytest.raises(ConfigError, match="^" + key.replace("(", r"\(").replace("'", "'")):
        run_cfg(cfg, tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.safetensors").exists()
