"""The data types every dataset builder shares: raw image tensors, transformed views, the splits.

Raw datasets carry no augmentation and no normalisation: :class:`Transformed` applies both
afterwards, so synthetic images (mixed in before augmentation) go through exactly the same
pipeline as real ones. Builders (datasets, corruptions, text) import these types from here, and
:mod:`wdiv.training.data` (which dispatches to the builders) sits above them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, Subset

from wdiv.references import default_cache


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor [N, C, H, W] with int64 labels (and the class
    names, ``classes[label]``, when the dataset has them)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorImages wants a uint8 tensor [N, C, H, W]")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


class LabelledSubset(Subset):
    """A torch ``Subset`` that keeps the class names and image size of the dataset it selects from."""

    @property
    def classes(self):
        return getattr(self.dataset, "classes", None)

    @property
    def image_size(self):
        return getattr(self.dataset, "image_size", None)


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
    image_size: int | None  # the stored images' side; None: each image keeps its decoded size
    ood: dict[str, Dataset] = field(default_factory=dict)
    classes: list[str] | None = None  # class names in label order (SD prompts, synthetic folders)
    synth: dict | None = None
    real_train: Dataset | None = None  # the real training split when synthetic data is mixed in
    run_info: dict = field(default_factory=dict)  # run.json fields the data adds (text: label order, EDA)


def cache_root(paths_cfg) -> Path:
    """``paths.cache_dir``, else the default cache (``$WDIV_CACHE``, else ``~/.cache/wdiv``)."""
    root = paths_cfg.get("cache_dir") if paths_cfg is not None else None
    return Path(root).expanduser() if root else default_cache()


def data_id(data_cfg) -> str:
    """The data's name in run.json and in study cells: ``data.id``, else for a hub or local
    ``datasets`` dataset its name and subset (so two datasets are never one cell), else ``data.name``."""
    if data_cfg.get("id"):
        return str(data_cfg.id)
    if str(data_cfg.name) == "hf_text" and data_cfg.get("dataset") not in (None, "", "???"):
        base = Path(str(data_cfg.dataset).rstrip("/")).name or str(data_cfg.dataset)
        return "-".join(str(p) for p in (base, data_cfg.get("subset")) if p)
    return str(data_cfg.name)
