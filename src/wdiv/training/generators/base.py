"""The interface every synthetic-image generator implements, and the registry that builds one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch


class Generator(ABC):
    """A class-conditional image source.

    ``fit`` sees the real training split (uint8 [N, C, H, W], labels) once before ``generate``;
    ``generate(counts, seed)`` returns ``counts[c]`` images of each class c, class by class, as
    uint8 [M, C', H', W'] plus int64 labels (the caller matches channels and size to the real
    set). The same config, data and seed must give the same images. ``cacheable`` says whether
    the output is worth caching on disk (not for images that are already files).
    """

    name: str = ""
    cacheable: bool = True
    streams: bool = False  # has generate_to(folder, counts, seed=, size=): writes generators.pngs' layout

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = dict(cfg)
        self.class_names: list[str] | None = None

    def fit(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        class_names: Sequence[str] | None,
        seed: int,
    ) -> None:
        """Learn whatever the generator needs from the real split (default: only class names)."""
        self.class_names = list(class_names) if class_names is not None else None

    @abstractmethod
    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``counts[c]`` images of class c for every c, grouped by class in class order."""

    def cache_config(self) -> dict[str, Any]:
        """What identifies this generator's output (its config, JSON-serialisable)."""
        return {k: v for k, v in sorted(self.cfg.items())}
