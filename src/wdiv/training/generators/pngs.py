"""Generated images as PNG files, one folder a class: the layout a streamed generator writes
(``<folder>/<class:04d>/<index:06d>.png``), resumes from and is read back from.

Each file is written atomically, so a killed generation leaves whole images or none; a file
that does not decode (or is not at the target size) counts as not yet generated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wdiv.io import atomic_write

log = logging.getLogger(__name__)


def image_path(folder: str | Path, c: int, index: int) -> Path:
    """Where image ``index`` of class ``c`` is kept."""
    return Path(folder) / f"{c:04d}" / f"{index:06d}.png"


def write_png(path: Path, image: torch.Tensor) -> None:
    """uint8 [3, H, W] as a PNG, atomically (a kill never leaves half a file under ``path``)."""
    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def read_rgb(path: Path) -> torch.Tensor:
    """Any image file as uint8 RGB [3, H, W] (decoded in full, so a cut file raises)."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def is_finished(path: Path, size: tuple[int, int] | None) -> bool:
    """A finished image: there, decodes, and (with ``size``) at the target size."""
    if not path.is_file():
        return False
    try:
        image = read_rgb(path)
    except (ValueError, OSError):  # PIL: UnidentifiedImageError, truncated data
        log.warning("%s: not a readable PNG; generating its batch again", path)
        return False
    return size is None or tuple(image.shape[-2:]) == tuple(size)


def read_generated(folder: str | Path, counts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``counts[c]`` per class c, class by class (uint8 [N, 3, H, W], int64 labels)."""
    images = [read_rgb(image_path(folder, c, i)) for c, n in enumerate(counts) for i in range(int(n))]
    labels = [c for c, n in enumerate(counts) for _ in range(int(n))]
    if not images:
        return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
