"""Datasets as raw ``(uint8 [C,H,W] tensor, int label)`` pairs, split into train/val/test.

Raw datasets carry no augmentation and no normalisation: :class:`Transformed` applies both
afterwards, so synthetic images (mixed in here, before augmentation) go through exactly the
same pipeline as real ones, and every arm shares the model's single normalisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from wdiv.errors import ConfigError

log = logging.getLogger(__name__)


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor [N, C, H, W] with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorImages wants a uint8 tensor [N, C, H, W]")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


class Transformed(Dataset):
    """Applies ``transform`` (augmentation + normalisation) to the image of a raw dataset."""

    def __init__(self, raw: Dataset, transform: Callable):
        self.raw = raw
        self.transform = transform

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int):
        image, label = self.raw[i]
        return self.transform(image), label


def transformed(raw: Dataset, transform: Callable | None) -> Dataset:
    """``raw`` with ``transform`` applied to its images (``raw`` itself when there is none)."""
    return raw if transform is None else Transformed(raw, transform)


@dataclass
class Splits:
    """The raw splits of one task plus its OOD test sets (name -> raw dataset)."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    ood: dict[str, Dataset] = field(default_factory=dict)
    synth: dict | None = None
    real_train: Dataset | None = None  # the real training split when synthetic data is mixed in
    run_info: dict = field(default_factory=dict)  # run.json fields the data adds (text: label order, EDA)


def build_splits(data_cfg, paths_cfg, *, task: str = "target", synth_cfg=None, seed: int = 0) -> Splits:
    """Build the raw splits of ``data_cfg`` for ``task`` ("source": pretraining, "target": fine-tuning).

    When ``synth_cfg.mode != "none"`` the training split is handed to the synthetic-data
    module (imported lazily), which returns the mixed real + synthetic training set.
    """
    name = data_cfg.name
    if str(data_cfg.get("modality", "image")) == "text":  # tokenized texts; mixes its own synthetic texts
        from wdiv.training.text.data import text_splits

        return text_splits(data_cfg, paths_cfg, task=task, synth_cfg=synth_cfg, seed=seed)
    if name == "digits":
        from wdiv.training.datasets import digits_splits

        splits = digits_splits(data_cfg, paths_cfg, task=task)
    elif name in ("cifar10", "cifar100"):
        from wdiv.training.datasets import cifar_splits

        splits = cifar_splits(data_cfg, paths_cfg, task=task)
    elif name == "imagefolder":
        from wdiv.training.datasets import imagefolder_splits

        splits = imagefolder_splits(data_cfg, task=task)
    else:
        raise ConfigError(f"data.name: unknown dataset {name!r} (digits, cifar10, cifar100, imagefolder, text_csv)")
    if task == "target" and synth_cfg is not None and synth_cfg.get("mode", "none") != "none":
        from wdiv.training.synthetic import build_synthetic_train

        real_train = splits.train
        splits.train = build_synthetic_train(
            real_train,
            synth_cfg,
            seed=seed,
            cache_dir=cache_root(paths_cfg) / "synthetic",
            num_classes=splits.num_classes,
        )
        splits.synth = getattr(splits.train, "info", None)
        splits.real_train = real_train
    if task == "target" and data_cfg.get("corruptions"):
        from wdiv.training.corruptions import corrupt_suite

        splits.ood.update(corrupt_suite(splits.test, data_cfg.corruptions, seed=int(data_cfg.get("split_seed", 0))))
    return splits


def cache_root(paths_cfg) -> Path:
    """``paths.cache_dir``, else ``$WDIV_CACHE``, else ``~/.cache/wdiv``."""
    import os

    root = paths_cfg.get("cache_dir") if paths_cfg is not None else None
    root = root or os.environ.get("WDIV_CACHE") or "~/.cache/wdiv"
    return Path(root).expanduser()
