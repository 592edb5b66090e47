"""Stanford Cars (196 classes) from local files, decoded lazily like the image folders.

Two layouts under ``data.root``:

* torchvision's, read by ``torchvision.datasets.StanfordCars`` (needs scipy):
  ``stanford_cars/devkit/{cars_meta.mat, cars_train_annos.mat}``, ``stanford_cars/cars_train/``,
  ``stanford_cars/cars_test/`` and ``stanford_cars/cars_test_annos_withlabels.mat``;
* an image-folder copy (e.g. Kaggle's): ``train/<class>/<image>`` and ``test/<class>/<image>``.

The official test split is the test split; val is a seeded stratified slice of train. Class
names come from ``cars_meta.mat`` (or the folder names).
"""

from __future__ import annotations

from pathlib import Path

from wdiv.errors import ConfigError
from wdiv.training.image_folders import FolderImages, decode_options, folder_splits, val_split
from wdiv.training.splits import Splits


def _path_of(path: str) -> str:
    return path  # the "loader" torchvision calls: keep the path, FolderImages decodes later


def torchvision_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, (path, label) samples) of one split, as torchvision's StanfordCars lists them."""
    from torchvision.datasets import StanfordCars

    try:
        ds = StanfordCars(str(root), split=split, download=False, loader=_path_of)
    except RuntimeError as err:
        raise ConfigError(f"data.root: no Stanford Cars {split} split under {root / 'stanford_cars'} ({err})") from None
    return [str(c) for c in ds.classes], [(str(path), int(label)) for path, label in (ds[i] for i in range(len(ds)))]


def stanford_cars_splits(data_cfg, *, task: str) -> Splits:
    if task == "source":
        raise ConfigError("model.pretrained: builtin needs a dataset with a source task; stanford_cars has none (use hub, none or a weights file)")
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: directory {root} does not exist")
    name = str(data_cfg.get("id") or "stanford_cars")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return folder_splits(data_cfg, name=name, train=("data.root (train/)", root / "train"), test=("data.root (test/)", root / "test"))
    classes, train_samples = torchvision_split(root, "train")
    _, test_samples = torchvision_split(root, "test")
    opts = decode_options(data_cfg)
    train, val = val_split(FolderImages(train_samples, classes, **opts), data_cfg)
    return Splits(
        name=name,
        train=train,
        val=val,
        test=FolderImages(test_samples, classes, **opts),
        num_classes=len(classes),
        image_size=opts["size"],
        classes=classes,
    )
