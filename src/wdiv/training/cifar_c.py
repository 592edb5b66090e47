"""CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich) from their local ``.npy`` files as the OOD suite.

``data.cifar_c_root`` holds ``<corruption>.npy`` (uint8 [5 * n, 32, 32, 3]: severities 1..5, n
test images each, in order) and ``labels.npy`` (the n labels repeated five times). The arrays
are memory-mapped and sliced per item, so the 95 OOD sets of the full suite cost no RAM up
front. Each (corruption, severity) is one OOD set named ``<corruption>/<severity>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wdiv.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)


class ArrayImages(Dataset):
    """Rows ``index`` of a (memory-mapped) uint8 [N, H, W, C] array, each as a [C, H, W] tensor."""

    def __init__(self, array: np.ndarray, index: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None):
        self.array, self.index, self.labels = array, index, labels
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.array(self.array[self.index[i]], copy=True)).permute(2, 0, 1).contiguous()
        return image, int(self.labels[i])

    @property
    def image_size(self) -> int:
        return int(self.array.shape[1])


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable .npy array ({err})") from None


def cifar_c_suite(data_cfg, *, selected: Sequence[int] | None = None, classes: Sequence[str] | None = None) -> dict[str, ArrayImages]:
    """{``corruption/severity``: dataset} for ``data.cifar_c_corruptions`` (null: every .npy file but
    labels.npy) at ``data.cifar_c_severities``; ``selected`` keeps those original labels, relabelled
    0..k-1 in that order, as the clean splits do."""
    root = Path(str(data_cfg.cifar_c_root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.cifar_c_root: directory {root} does not exist")
    if not (root / "labels.npy").is_file():
        raise ConfigError(f"data.cifar_c_root: {root / 'labels.npy'} does not exist")
    labels = np.asarray(_load(root / "labels.npy")).astype(np.int64)
    if len(labels) % len(SEVERITIES):
        raise ConfigError(f"{root / 'labels.npy'}: {len(labels)} labels is not 5 severities of equal size")
    n = len(labels) // len(SEVERITIES)
    names = data_cfg.get("cifar_c_corruptions")
    names = [str(c) for c in names] if names else sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")
    if not names:
        raise ConfigError(f"data.cifar_c_root: no <corruption>.npy files in {root}")
    severities = [int(s) for s in (data_cfg.get("cifar_c_severities") or SEVERITIES)]
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ConfigError(f"data.cifar_c_severities: {bad[0]} is not one of 1..5")
    remap = None if selected is None else {int(c): i for i, c in enumerate(selected)}
    out = {}
    for name in names:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise ConfigError(f"data.cifar_c_corruptions: {path} does not exist")
        array = _load(path)
        if array.dtype != np.uint8 or array.ndim != 4 or len(array) != len(labels) or array.shape[-1] != 3:
            raise ConfigError(f"{path}: expected uint8 [{len(labels)}, H, W, 3] (as labels.npy), got {array.dtype} {list(array.shape)}")
        for s in severities:
            rows = np.arange((s - 1) * n, s * n)
            ys = labels[rows]
            if remap is not None:
                keep = np.isin(ys, list(remap))
                rows, ys = rows[keep], np.array([remap[int(y)] for y in ys[keep]], dtype=np.int64)
            out[f"{name}/{s}"] = ArrayImages(array, rows, ys, classes)
    return out
