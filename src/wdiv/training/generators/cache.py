"""Generated sets cached on disk, keyed by generator config, seed, counts and the real data."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from wdiv.training.generators.base import Generator
from wdiv.training.generators.pngs import read_generated

log = logging.getLogger(__name__)


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the real split the generator is fitted on (a changed split misses the cache)."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(generator: Generator, counts: Sequence[int], seed: int, real_fingerprint: str) -> str:
    blob = json.dumps(
        {
            "generator": generator.name,
            "config": generator.cache_config(),
            "seed": int(seed),
            "counts": [int(c) for c in counts],
            "real": real_fingerprint,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_generate(
    generator: Generator,
    images: torch.Tensor,
    labels: torch.Tensor,
    counts: Sequence[int],
    *,
    seed: int,
    cache_dir: str | os.PathLike | None,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``generator``'s images for ``counts``, from ``cache_dir`` when already made (None: no cache).

    On a miss the generator is fitted on the real split and its output saved (tmp + os.replace,
    so a killed run never leaves half a file). A generator with ``generate_to`` (Stable
    Diffusion) streams its images to ``<key>.parts/`` at the real images' size first, so a large
    set never sits in memory at the generation resolution and a killed generation resumes.
    """
    path = None
    if cache_dir is not None and generator.cacheable:
        key = cache_key(generator, counts, seed, fingerprint(images, labels))
        path = Path(cache_dir) / f"{generator.name}-{key[:24]}.safetensors"
        if path.exists():
            log.info("synthetic images from cache %s", path)
            saved = load_file(str(path))
            return saved["images"], saved["labels"]
    generator.fit(images, labels, class_names=class_names, seed=seed)
    if path is not None and generator.streams:
        # streamed to disk at the real images' size (bounded memory), resumable: see generators.pngs
        parts = path.with_name(f"{path.stem}.parts")
        generator.generate_to(parts, counts, seed=seed, size=tuple(images.shape[-2:]))
        out_images, out_labels = read_generated(parts, counts)
    else:
        parts = None
        out_images, out_labels = generator.generate(counts, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        meta = {"generator": generator.name, "config": json.dumps(generator.cache_config(), default=str), "seed": str(seed)}
        save_file({"images": out_images.contiguous(), "labels": out_labels.contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        log.info("synthetic images cached at %s", path)
        if parts is not None:  # the one file now holds them; the per-image files were for resuming
            shutil.rmtree(parts, ignore_errors=True)
    return out_images, out_labels
