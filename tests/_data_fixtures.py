"""Tiny datasets in the real on-disk formats: CIFAR python pickles, CIFAR-C .npy files, a
DomainNet-style tree of domains (with optional split lists) and Stanford Cars' .mat layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_images(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """(uint8 [n, 32, 32, 3] HWC images whose brightness follows the label, labels cycling over the classes)."""
    rng = np.random.default_rng(seed)
    labels = [i % num_classes for i in range(n)]
    base = np.array(labels, dtype=np.int64)[:, None, None, None] * (200 // max(num_classes - 1, 1))
    images = np.clip(base + rng.integers(0, 56, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return images, labels


def _rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> CIFAR's rows of 3072 bytes (the red plane, then green, then blue)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20) -> dict:
    """``root/cifar-10-batches-py`` (5 data batches, test_batch, batches.meta); returns the arrays."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train, train_y = cifar_images(n_train, 0)
    test, test_y = cifar_images(n_test, 1)
    for k, part in enumerate(np.array_split(np.arange(n_train), 5), 1):
        _dump(folder / f"data_batch_{k}", {"batch_label": f"training batch {k} of 5", "labels": [train_y[i] for i in part], "data": _rows(train[part]), "filenames": [f"{i}.png" for i in part]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": _rows(test), "filenames": [f"{i}.png" for i in range(n_test)]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": n_train // 5, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return {"train": train, "train_y": train_y, "test": test, "test_y": test_y, "classes": CIFAR10_NAMES}


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> dict:
    """``root/cifar-100-python`` (train, test, meta with fine and coarse label names)."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class{c:03d}" for c in range(100)]
    train, train_y = cifar_images(n_train, 2, 100)
    test, test_y = cifar_images(n_test, 3, 100)
    for split, x, y in (("train", train, train_y), ("test", test, test_y)):
        _dump(folder / split, {"filenames": [f"{i}.png" for i in range(len(y))], "batch_label": split, "fine_labels": y, "coarse_labels": [v // 5 for v in y], "data": _rows(x)})
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"super{c}" for c in range(20)]})
    return {"train": train, "train_y": train_y, "test": test, "test_y": test_y, "classes": names}


def write_cifar_c(root: Path, labels: list[int], corruptions=("gaussian_noise", "fog")) -> dict[str, np.ndarray]:
    """``root/<corruption>.npy`` (five severities of the test images, in order) and ``root/labels.npy``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    np.save(root / "labels.npy", np.tile(np.asarray(labels, dtype=np.uint8), 5))
    out = {}
    for k, name in enumerate(corruptions):
        rng = np.random.default_rng(10 + k)
        out[name] = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", out[name])
    return out


def write_domains(root: Path, domains=("real", "sketch", "clipart"), classes=("apple", "bus", "cat"), per_class: int = 4, split_lists: bool = False) -> Path:
    """``root/<domain>/<class>/<i>.png`` with images of assorted sizes (brightness by class and
    domain); with ``split_lists`` also DomainNet's ``<domain>_train.txt`` / ``<domain>_test.txt``."""
    root = Path(root)
    rng = np.random.default_rng(5)
    for d, domain in enumerate(domains):
        lines = {"train": [], "test": []}
        for c, cls in enumerate(classes):
            (root / domain / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = 20 + 4 * i, 24 + 3 * c
                img = np.clip(rng.integers(0, 40, (h, w, 3)) + 70 * c + 10 * d, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / domain / cls / f"{domain}_{i}.png")
                lines["test" if i == 0 else "train"].append(f"{domain}/{cls}/{domain}_{i}.png {c}")
        if split_lists:
            for part, rows in lines.items():
                (root / f"{domain}_{part}.txt").write_text("\n".join(rows) + "\n")
    return root


def write_stanford_cars(root: Path, classes=("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TT RS Coupe 2012"), per_class: int = 3) -> Path:
    """torchvision's Stanford Cars layout under ``root/stanford_cars`` (.mat files written by scipy)."""
    from scipy.io import savemat

    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for split, folder, annos in (("train", "cars_train", base / "devkit" / "cars_train_annos.mat"), ("test", "cars_test", base / "cars_test_annos_withlabels.mat")):
        (base / folder).mkdir(exist_ok=True)
        rows = []
        for c in range(len(classes)):
            for i in range(per_class):
                fname = f"{split}_{c}_{i}.jpg"
                img = np.clip(rng.integers(0, 40, (30, 40, 3)) + 80 * c, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(base / folder / fname)
                rows.append((fname, c + 1))  # the .mat files count classes from 1
        table = np.array(rows, dtype=[("fname", object), ("class", object)])
        savemat(str(annos), {"annotations": table})
    savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": np.array(list(classes), dtype=object)})
    return Path(root)
