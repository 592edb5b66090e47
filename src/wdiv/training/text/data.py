"""Labelled text files -> tokenized splits the shared loop trains on (``data=text_csv``).

Files are CSV, TSV or JSONL (``data.format=auto`` goes by the suffix: .csv, .tsv/.tab,
.jsonl/.json/.ndjson) with ``data.text_column`` and ``data.label_column``. Labels may be strings:
the label order is ``data.labels`` when given, else the sorted distinct training labels (numeric
order when all are integers); run.json ``text.labels`` records it. ``data.val_file`` is optional
(else a stratified ``data.val_fraction`` of the training file, fixed by ``data.split_seed``);
``data.ood_files.NAME=PATH`` are scored like the vision OOD sets.

A :class:`TextSet` yields ``(int64 [2, max_length] ids + attention mask, label)``; the training
set rewrites a ``share`` of its rows per epoch with EDA (:mod:`.eda`) when ``aug.policy`` asks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wdiv.errors import ConfigError
from wdiv.training.splits import Splits, cache_root, data_id
from wdiv.training.datasets import stratified_split
from wdiv.training.text import eda as eda_mod
from wdiv.training.text.files import label_text, read_table
from wdiv.training.text.hub import HubTables
from wdiv.training.text.synthetic import build_text_synthetic
from wdiv.training.text.tokenizers import build_tokenizer, words

log = logging.getLogger(__name__)



class TextSet(Dataset):
    """Texts with int labels, pre-tokenized; optional per-epoch EDA on a share of the rows."""

    modality = "text"

    def __init__(self, texts: Sequence[str], labels, tokenizer, max_length: int, *, eda=None, classes=None, real_index=None, is_synthetic=None, fidelity_rows=None, info=None):
        self.texts = [str(t) for t in texts]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self.tokens = tokenizer(self.texts, self.max_length) if self.texts else torch.zeros((0, 2, self.max_length), dtype=torch.int64)
        self.eda = eda
        self.classes = list(classes) if classes is not None else None
        n = len(self.texts)
        self.real_index = np.arange(n) if real_index is None else np.asarray(real_index)
        self.is_synthetic = np.zeros(n, dtype=bool) if is_synthetic is None else np.asarray(is_synthetic, dtype=bool)
        self.fidelity_rows = np.ones(n, dtype=bool) if fidelity_rows is None else np.asarray(fidelity_rows, dtype=bool)
        self.info = info

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        if self.eda is not None:
            # two draws from the global torch RNG (reseeded per epoch by the loop) whatever happens
            u, seed = torch.randint(0, 2**62, (2,)).tolist()
            if u < self.eda.policy.share * 2**62:
                text = self.eda(self.texts[i], random.Random(seed))
                return self.encode([text])[0], int(self.labels[i])
        return self.tokens[i], int(self.labels[i])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), self.max_length)

    def draw(self, i: int, seed: int) -> str:
        """Row ``i`` as one training epoch might show it (EDA draw fixed by ``seed``)."""
        if self.eda is None:
            return self.texts[i]
        rng = random.Random(seed * 1_000_003 + i)
        return self.eda(self.texts[i], rng) if rng.random() < self.eda.policy.share else self.texts[i]

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


def label_order(train_labels: Sequence[str], given) -> list[str]:
    if given:
        order = [label_text(v) for v in given]
        missing = sorted(set(train_labels) - set(order))
        if missing:
            raise ConfigError(f"data.labels: training labels {missing[:5]} are not listed")
        return order
    distinct = set(train_labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def _indices(labels: Sequence[str], order: list[str], key: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(order)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ConfigError(f"{key}: labels {unknown[:5]} are not among the training labels {order[:10]}")
    return torch.tensor([index[v] for v in labels], dtype=torch.int64)


def _tables(data_cfg, paths_cfg) -> dict:
    """Each split as (texts, labels as strings): train, val and test (None: a stratified slice of
    train), ood {name: table}, and the label order the source itself gives (None: sorted)."""
    if str(data_cfg.name) == "hf_text":
        hub = HubTables(data_cfg, cache_root(paths_cfg) / "hf_datasets")
        named = {part: data_cfg.get(f"{part}_split") for part in ("train", "val", "test")}
        tables = {part: hub.split(split, f"data.{part}_split") if split else None for part, split in named.items()}
        sources, read, order = data_cfg.get("ood_splits"), hub.split, hub.label_names()
    else:
        named = {part: data_cfg.get(f"{part}_file") for part in ("train", "val", "test")}
        # train and test files are required (read_table names a missing one); val is optional
        tables = {part: read_table(path, data_cfg, f"data.{part}_file") if path or part != "val" else None
                  for part, path in named.items()}
        sources, order = data_cfg.get("ood_files"), None
        read = lambda path, key: read_table(path, data_cfg, key)  # noqa: E731
    kind = "split" if str(data_cfg.name) == "hf_text" else "file"
    tables["ood"] = {str(n): read(src, f"data.ood_{kind}s.{n}") for n, src in (sources or {}).items()}
    tables["order"] = order
    return tables


def _split_off(texts, labels, fraction: float, seed: int):
    """(held-out texts, labels), (kept texts, labels): a stratified slice of ``fraction`` (checked by text.checks)."""
    out_idx, keep_idx = stratified_split(labels, [fraction], seed)
    return ([texts[i] for i in out_idx.tolist()], labels[out_idx]), ([texts[i] for i in keep_idx.tolist()], labels[keep_idx])


def text_splits(data_cfg, paths_cfg, *, task: str, synth_cfg=None, seed: int = 0) -> Splits:
    """The tokenized splits of ``data=text_csv`` or ``data=hf_text`` (synthetic texts mixed in
    when ``synth`` asks)."""
    if task == "source":
        raise ConfigError("model.pretrained: text data has no source task for a builtin model (use hub or none)")
    max_length = int(data_cfg.max_length)
    if max_length < 2:
        raise ConfigError(f"data.max_length: {max_length} leaves no room for a token")
    tables = _tables(data_cfg, paths_cfg)
    kind = "split" if str(data_cfg.name) == "hf_text" else "file"
    train_key, val_key, test_key = (f"data.{part}_{kind}" for part in ("train", "val", "test"))
    texts, raw_labels = tables["train"] or ([], [])
    if not texts:
        raise ConfigError(f"{train_key}: no rows")
    given = data_cfg.get("labels")
    if not given and tables["order"]:  # a ClassLabel's order, without the names the training split never uses
        given = [c for c in tables["order"] if c in set(raw_labels)]
    classes = label_order(raw_labels, given)
    labels = _indices(raw_labels, classes, train_key)
    split_seed = int(data_cfg.split_seed)
    if tables["test"] is None:  # no labelled test split: a stratified slice of the training split
        (test_texts, test_labels), (texts, labels) = _split_off(texts, labels, float(data_cfg.get("test_fraction", 0.2)),
                                                                split_seed + 1)
    else:
        test_texts, test_labels = tables["test"][0], _indices(tables["test"][1], classes, test_key)
    if tables["val"] is not None:
        val_texts, val_labels = tables["val"][0], _indices(tables["val"][1], classes, val_key)
        train_texts, train_labels = texts, labels
    else:
        (val_texts, val_labels), (train_texts, train_labels) = _split_off(texts, labels, float(data_cfg.val_fraction),
                                                                          split_seed)
    tokenizer = build_tokenizer(data_cfg.get("tokenizer"), train_texts)
    eda_cfg = data_cfg.get("eda") or {}
    vocabulary = sorted({w for t in train_texts for w in words(t)})
    eda = eda_mod.build(eda_cfg.get("policy", "none"), eda_cfg, vocabulary)

    def textset(t, y, **kw) -> TextSet:
        return TextSet(t, y, tokenizer, max_length, classes=classes, **kw)

    ood = {name: textset(t, _indices(y, classes, f"data.ood_{kind}s.{name}")) for name, (t, y) in tables["ood"].items()}
    real_train = textset(train_texts, train_labels, eda=eda)
    train, synth_info = real_train, None
    if synth_cfg is not None and str(synth_cfg.get("mode", "none")) != "none":
        train = build_text_synthetic(real_train, synth_cfg, seed=seed, cache_dir=cache_root(paths_cfg) / "synthetic_text", make_set=textset, eda=eda)
        synth_info = train.info
    record = {"labels": classes, "tokenizer": str(data_cfg.tokenizer.kind), "vocab_size": len(tokenizer), "max_length": max_length, "n_train": len(real_train), "eda": eda.record() if eda is not None else None}
    log.info("text data: %d train / %d val / %d test rows, labels %s, %s tokenizer (%d tokens)", len(real_train), len(val_texts), len(test_texts), classes, record["tokenizer"], record["vocab_size"])
    return Splits(
        name=data_id(data_cfg),
        train=train,
        val=textset(val_texts, val_labels),
        test=textset(test_texts, test_labels),
        num_classes=len(classes),
        image_size=0,
        ood=ood,
        synth=synth_info,
        real_train=real_train if train is not real_train else None,
        run_info={"text": record},
    )
