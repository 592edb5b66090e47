"""Pre-generated images on disk in an ImageFolder layout: ``<root>/<class>/<image>.png``.

A class directory is named by the class index (``0``, ``1``, ...) or by the class name, or
listed in label order by ``<root>/classes.json`` or ``synth.generator.class_dirs``; the
``folder`` generator reads what ``write_image_folder`` (and ``scripts/generate_synthetic.py``)
writes. Which files of a class are used is a seeded choice, so seeds see different subsets.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wdiv.errors import ConfigError
from wdiv.training.generators.base import Generator
from wdiv.training.generators.pngs import read_rgb

CLASSES_FILE = "classes.json"  # directory names in label order, written by write_image_folder
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


class FolderGenerator(Generator):
    name = "folder"
    cacheable = False  # the images already are files

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if self.cfg.get("root") in (None, "", "???"):
            raise ConfigError("synth.generator.root: the folder generator needs a root directory")
        self.root = Path(os.path.expanduser(str(self.cfg["root"])))
        if not self.root.is_dir():
            raise ConfigError(f"synth.generator.root: no such directory: {self.root}")

    def class_dir(self, c: int) -> Path:
        """Directory of class c: ``class_dirs[c]``, else ``classes.json[c]``, else ``c`` or its name."""
        listed = self.cfg.get("class_dirs") or self._classes_json()
        if listed:
            if c >= len(listed):
                raise ConfigError(f"synth.generator.root: {self.root} lists {len(listed)} classes, class {c} asked for")
            candidates = [str(listed[c])]
        else:
            candidates = [str(c)] + ([str(self.class_names[c])] if self.class_names is not None else [])
        for name in candidates:
            if (self.root / name).is_dir():
                return self.root / name
        raise ConfigError(f"synth.generator.root: no directory for class {c} ({' or '.join(candidates)}) in {self.root}")

    def _classes_json(self) -> list[str] | None:
        path = self.root / CLASSES_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for c, count in enumerate(counts):
            if count == 0:
                continue
            d = self.class_dir(c)
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if len(files) < count:
                raise ConfigError(f"synth.generator.root: {d} has {len(files)} images, {count} needed")
            chosen = np.random.default_rng([seed, c]).permutation(len(files))[:count]
            images += [read_rgb(files[i]) for i in sorted(chosen)]
            labels += [c] * int(count)
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:  # mixed sizes: bring all to the first one's size; callers resize anyway
            h, w = images[0].shape[-2:]
            images = [_resize(im, (h, w)) for im in images]
        stacked = torch.stack(images) if images else torch.empty((0, 3, 1, 1), dtype=torch.uint8)
        return stacked, torch.tensor(labels, dtype=torch.int64)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from torchvision.transforms.v2.functional import resize

    return resize(image, list(size), antialias=True)


def write_image_folder(
    images: torch.Tensor,
    labels: torch.Tensor,
    root: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write uint8 [N, C, H, W] images as ``root/<class name or index>/<nnnnn>.png``.

    ``root/classes.json`` lists the class directories in label order, so the ``folder``
    generator maps them back to labels even when the dataset has no class names.

    The folder appears whole or not at all: it is written beside ``root`` and renamed into place.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite to replace it)")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counters: dict[int, int] = {}
    for image, label in zip(images, labels.tolist()):
        name = str(class_names[label]) if class_names is not None else str(label)
        (tmp / name).mkdir(parents=True, exist_ok=True)
        k = counters.get(label, 0)
        counters[label] = k + 1
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp / name / f"{k:05d}.png")
    tmp.mkdir(parents=True, exist_ok=True)
    n_classes = len(class_names) if class_names is not None else int(labels.max()) + 1 if len(labels) else 0
    dirs = [str(class_names[c]) if class_names is not None else str(c) for c in range(n_classes)]
    (tmp / CLASSES_FILE).write_text(json.dumps(dirs))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
