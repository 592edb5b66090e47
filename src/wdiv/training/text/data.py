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
from wdiv.training.splits import Splits, cache_root
from wdiv.training.datasets import stratified_split
from wdiv.training.text import eda as eda_mod
from wdiv.training.text.files import label_text, read_table
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


def text_splits(data_cfg, paths_cfg, *, task: str, synth_cfg=None, seed: int = 0) -> Splits:
    """The tokenized splits of ``data=text_csv`` (synthetic texts mixed in when ``synth`` asks)."""
    if task == "source":
        raise ConfigError("model.pretrained: text data has no source task for a builtin model (use hub or none)")
    max_length = int(data_cfg.max_length)
    if max_length < 2:
        raise ConfigError(f"data.max_length: {max_length} leaves no room for a token")
    texts, raw_labels = read_table(data_cfg.get("train_file"), data_cfg, "data.train_file")
    if not texts:
        raise ConfigError(f"data.train_file: {data_cfg.train_file} has no rows")
    classes = label_order(raw_labels, data_cfg.get("labels"))
    labels = _indices(raw_labels, classes, "data.train_file")
    if data_cfg.get("val_file"):
        val_texts, val_raw = read_table(data_cfg.val_file, data_cfg, "data.val_file")
        val_labels = _indices(val_raw, classes, "data.val_file")
        train_texts, train_labels = texts, labels
    else:
        val_idx, train_idx = stratified_split(labels, [float(data_cfg.val_fraction)], int(data_cfg.split_seed))
        val_texts, val_labels = [texts[i] for i in val_idx.tolist()], labels[val_idx]
        train_texts, train_labels = [texts[i] for i in train_idx.tolist()], labels[train_idx]
    tokenizer = build_tokenizer(data_cfg.get("tokenizer"), train_texts)
    eda_cfg = data_cfg.get("eda") or {}
    vocabulary = sorted({w for t in train_texts for w in words(t)})
    eda = eda_mod.build(eda_cfg.get("policy", "none"), eda_cfg, vocabulary)

    def textset(t, y, **kw) -> TextSet:
        return TextSet(t, y, tokenizer, max_length, classes=classes, **kw)

    test_texts, test_raw = read_table(data_cfg.get("test_file"), data_cfg, "data.test_file")
    ood = {}
    for name, path in (data_cfg.get("ood_files") or {}).items():
        ood_texts, ood_raw = read_table(path, data_cfg, f"data.ood_files.{name}")
        ood[str(name)] = textset(ood_texts, _indices(ood_raw, classes, f"data.ood_files.{name}"))
    real_train = textset(train_texts, train_labels, eda=eda)
    train, synth_info = real_train, None
    if synth_cfg is not None and str(synth_cfg.get("mode", "none")) != "none":
        train = build_text_synthetic(real_train, synth_cfg, seed=seed, cache_dir=cache_root(paths_cfg) / "synthetic_text", make_set=textset, eda=eda)
        synth_info = train.info
    record = {"labels": classes, "tokenizer": str(data_cfg.tokenizer.kind), "vocab_size": len(tokenizer), "max_length": max_length, "n_train": len(real_train), "eda": eda.record() if eda is not None else None}
    log.info("text data: %d train / %d val / %d test rows, labels %s, %s tokenizer (%d tokens)", len(real_train), len(val_texts), len(test_texts), classes, record["tokenizer"], record["vocab_size"])
    return Splits(
        name=str(data_cfg.get("id") or data_cfg.name),
        train=train,
        val=textset(val_texts, val_labels),
        test=textset(test_texts, _indices(test_raw, classes, "data.test_file")),
        num_classes=len(classes),
        image_size=0,
        ood=ood,
        synth=synth_info,
        real_train=real_train if train is not real_train else None,
        run_info={"text": record},
    )
