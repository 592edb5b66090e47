"""Build the raw train/val/test splits (+ OOD sets) of the configured dataset.

Dispatches to the dataset builders, mixes synthetic data into the training split before any
augmentation, and adds the OOD corruption suite (CIFAR-10-C / CIFAR-100-C from
``data.cifar_c_root`` when set, else the built-in suite of ``data.corruptions``); the shared
types live in :mod:`wdiv.training.splits`.
"""

from __future__ import annotations

from wdiv.errors import ConfigError
from wdiv.training.cifar_c import cifar_c_suite
from wdiv.training.corruptions import corrupt_suite
from wdiv.training.datasets import cifar_splits, digits_splits, task_classes
from wdiv.training.image_folders import domain_splits, imagefolder_splits
from wdiv.training.splits import Splits, cache_root, transformed
from wdiv.training.stanford_cars import stanford_cars_splits
from wdiv.training.synthetic import build_synthetic_train
from wdiv.training.text.data import text_splits

MULTI_DOMAIN = ("domainnet", "office_home")  # <root>/<domain>/<class>/<image>, one shared reader

__all__ = ["build_splits", "transformed"]  # transformed: the runner applies augmentation to the splits built here


def build_splits(data_cfg, paths_cfg, *, task: str = "target", synth_cfg=None, seed: int = 0) -> Splits:
    """Build the raw splits of ``data_cfg`` for ``task`` ("source": pretraining, "target": fine-tuning).

    When ``synth_cfg.mode != "none"`` the training split is handed to the synthetic-data
    module, which returns the mixed real + synthetic training set.
    """
    name = data_cfg.name
    if str(data_cfg.get("modality", "image")) == "text":  # tokenized texts; mixes its own synthetic texts
        return text_splits(data_cfg, paths_cfg, task=task, synth_cfg=synth_cfg, seed=seed)
    if name == "digits":
        splits = digits_splits(data_cfg, paths_cfg, task=task)
    elif name in ("cifar10", "cifar100"):
        splits = cifar_splits(data_cfg, paths_cfg, task=task)
    elif name == "imagefolder":
        splits = imagefolder_splits(data_cfg, task=task)
    elif name in MULTI_DOMAIN:
        splits = domain_splits(data_cfg, task=task)
    elif name == "stanford_cars":
        splits = stanford_cars_splits(data_cfg, task=task)
    else:
        raise ConfigError(f"data.name: unknown dataset {name!r} (digits, cifar10, cifar100, stanford_cars, domainnet, office_home, imagefolder, text_csv, hf_text)")
    if task == "target" and synth_cfg is not None and synth_cfg.get("mode", "none") != "none":
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
    if task == "target" and data_cfg.get("cifar_c_root"):
        splits.ood.update(cifar_c_suite(data_cfg, selected=task_classes(data_cfg, task), classes=splits.classes))
    elif task == "target" and data_cfg.get("corruptions"):
        splits.ood.update(corrupt_suite(splits.test, data_cfg.corruptions, seed=int(data_cfg.get("split_seed", 0))))
    return splits
