"""Labelled texts from a Hugging Face ``datasets`` dataset (``data=hf_text``) -> (texts, labels).

``data.dataset`` is a local directory (one written by ``save_to_disk``, or a folder of data files
that ``load_dataset`` reads) or a hub name; a hub name is fetched only with ``data.download=true``,
so an offline machine never tries the network behind the user's back. Splits are named by
``data.train_split``, ``data.val_split``, ``data.test_split`` (null: a stratified slice of the
training split, for sets such as RAFT whose test split has no labels) and
``data.ood_splits.NAME=SPLIT``. A ClassLabel column gives its names, in the dataset's order.
"""

from __future__ import annotations

from pathlib import Path

from wdiv.errors import ConfigError
from wdiv.training.text.files import label_text


def check_source(data_cfg) -> None:
    """What can be told of ``data.dataset`` without loading it: named, and local unless downloads are allowed."""
    name = data_cfg.get("dataset")
    if name in (None, "", "???"):
        raise ConfigError("data.dataset: required for data=hf_text (a hub name or a local directory)")
    if not Path(str(name)).expanduser().is_dir() and not bool(data_cfg.get("download", False)):
        raise ConfigError(f"data.dataset: {name} is not a local directory; set data.download=true to fetch it "
                          "from the Hugging Face hub")


def _load(data_cfg, cache_dir: Path | None):
    """The DatasetDict (or Dataset) behind ``data.dataset``."""
    check_source(data_cfg)
    name = data_cfg.dataset
    subset = data_cfg.get("subset") or None
    local = Path(str(name)).expanduser()
    try:
        import datasets
    except ImportError:
        raise ConfigError("data=hf_text needs the datasets library: pip install -e '.[text]'") from None
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
            return datasets.load_from_disk(str(local))
        if local.is_dir():
            return datasets.load_dataset(str(local), subset)
        return datasets.load_dataset(str(name), subset, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as err:  # noqa: BLE001 - datasets raises many types (missing config, bad files, network)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"data.dataset: cannot load {name}" + (f" (subset {subset})" if subset else "")
                          + f": {first}") from None


class HubTables:
    """The splits of one dataset as (texts, labels as strings), loaded once."""

    def __init__(self, data_cfg, cache_dir: Path | None = None):
        self.cfg = data_cfg
        self.data = _load(data_cfg, cache_dir)

    def split(self, split, key: str) -> tuple[list[str], list[str]]:
        data = self.data
        if hasattr(data, "keys"):  # a DatasetDict
            if str(split) not in data:
                raise ConfigError(f"{key}: no split {split!r} in {self.cfg.dataset} (splits: {', '.join(data.keys())})")
            data = data[str(split)]
        elif str(split) != "train":
            raise ConfigError(f"{key}: {self.cfg.dataset} is a single dataset without splits (use train)")
        text_col, label_col = str(self.cfg.text_column), str(self.cfg.label_column)
        for col_key, col in (("data.text_column", text_col), ("data.label_column", label_col)):
            if col not in data.column_names:
                raise ConfigError(f"{col_key}: column {col!r} not in {self.cfg.dataset}[{split}] "
                                  f"(columns: {', '.join(data.column_names)})")
        feature = data.features[label_col]
        labels = data[label_col]
        if None in labels:
            raise ConfigError(f"{key}: {self.cfg.dataset}[{split}] has rows without a label in column {label_col!r}")
        if hasattr(feature, "int2str"):
            labels = [feature.int2str(int(v)) for v in labels]
        texts = ["" if t is None else str(t) for t in data[text_col]]
        return texts, [label_text(v) for v in labels]

    def label_names(self) -> list[str] | None:
        """The ClassLabel names of the label column, in the dataset's order (None: plain values)."""
        data = self.data
        first = data[next(iter(data.keys()))] if hasattr(data, "keys") else data
        feature = first.features.get(str(self.cfg.label_column))
        return [str(n) for n in feature.names] if hasattr(feature, "names") else None
