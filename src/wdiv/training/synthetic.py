"""The synthetic arm: mix generated images into the real training split, before augmentation.

Modes (``synth.mode``), p = ``synth.p``:

* ``replace``: a fraction p of the real images is replaced by generated images of the same
  class (stratified per class), so the set keeps its size; p = 1 is 100 % synthetic;
* ``add``: round(p x |real|) generated images (class proportions of the real set) are appended;
* ``filtered``: as ``add``, from a pool ``filter.oversample`` times larger, after dropping the
  generated images that a classifier fitted on the real split labels wrongly or with confidence
  below ``filter.threshold``.

The returned dataset yields ``(uint8 [C, H, W], int label)`` like the real one, and records
``info`` (run.json ``synth``) plus the row alignment ``wdiv.diversity`` uses for fidelity:
``real_index`` (the real image each row stands for) and ``fidelity_rows``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wdiv.errors import ConfigError
from wdiv.training.generators import cached_generate, make_generator

log = logging.getLogger(__name__)

MODES = ("replace", "add", "filtered")
FILTER_DEFAULTS = {"threshold": 0.5, "oversample": 2.0}


class SyntheticTrainSet(Dataset):
    """In-memory training set of real and generated images (uint8 CHW, int label)."""

    def __init__(self, images, labels, *, is_synthetic, real_index, fidelity_rows, info, classes=None):
        self.images = images
        self.labels = labels
        self.is_synthetic = is_synthetic
        self.real_index = real_index
        self.fidelity_rows = fidelity_rows
        self.info = info  # run.json ``synth``
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


def build_synthetic_train(
    real_train: Dataset,
    synth_cfg: Mapping[str, Any],
    *,
    seed: int,
    cache_dir: Any = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    generator: Any = None,
) -> SyntheticTrainSet:
    """Mix generated images into ``real_train`` as ``synth_cfg`` says (see the module doc).

    ``generator`` overrides the one ``synth_cfg.generator`` names (tests, custom pipelines).
    """
    cfg = _plain(synth_cfg)
    mode, p = cfg.get("mode"), cfg.get("p")
    if mode not in MODES:
        raise ConfigError(f"synth.mode: unknown mode {mode!r} (known: none, {', '.join(MODES)})")
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"synth.p: {p!r} is not a number") from None
    if not 0.0 <= p <= (1.0 if mode == "replace" else math.inf):
        raise ConfigError(f"synth.p: {p!r} out of range for mode {mode} (replace: 0..1, add/filtered: >= 0)")
    filt = {**FILTER_DEFAULTS, **(cfg.get("filter") or {})}
    if not 0.0 <= float(filt["threshold"]) <= 1.0:
        raise ConfigError(f"synth.filter.threshold: {filt['threshold']!r} is outside [0, 1]")
    if not float(filt["oversample"]) >= 1.0:
        raise ConfigError(f"synth.filter.oversample: {filt['oversample']!r} is below 1")
    images, labels = _materialise(real_train)
    k = int(num_classes or int(labels.max()) + 1)
    class_counts = np.bincount(labels.numpy(), minlength=k)
    wanted = _apportion(round(p * len(labels)), class_counts)
    class_names = class_names or getattr(real_train, "classes", None)

    gen = generator if generator is not None else make_generator(cfg.get("generator") or {})
    pool = [math.ceil(w * float(filt["oversample"])) for w in wanted] if mode == "filtered" else wanted
    syn_x, syn_y = cached_generate(gen, images, labels, pool, seed=seed, cache_dir=cache_dir, class_names=class_names)
    syn_x = _match(syn_x, images.shape[1:])
    if mode == "filtered":
        syn_x, syn_y = _filter(images, labels, syn_x, syn_y, wanted, float(filt["threshold"]), seed)

    rng = np.random.default_rng(seed)
    if mode == "replace":
        out = _replace(images, labels, syn_x, syn_y, rng)
    else:
        out = _append(images, labels, syn_x, syn_y, rng)
    n_syn = int(out["is_synthetic"].sum())
    info = {"mode": mode, "p": p, "generator": gen.name, "n_real": len(out["labels"]) - n_syn, "n_synthetic": n_syn}
    log.info("synthetic training set: %s", info)
    return SyntheticTrainSet(**out, info=info, classes=class_names)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _materialise(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError("synth: the real training split is empty")
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    if images.dtype != torch.uint8:
        raise TypeError(f"synth: real images must be uint8 tensors, got {images.dtype}")
    return images, torch.tensor([int(y) for _, y in items], dtype=torch.int64)


def _apportion(total: int, class_counts: np.ndarray) -> list[int]:
    """Split ``total`` over classes in proportion to ``class_counts`` (largest remainder)."""
    n = class_counts.sum()
    exact = total * class_counts / n
    share = np.floor(exact).astype(int)
    order = np.argsort(-(exact - share), kind="stable")
    share[order[: total - share.sum()]] += 1
    return share.tolist()


def _match(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Bring generated images to the real images' channels and size."""
    from torchvision.transforms.v2.functional import resize, rgb_to_grayscale

    c, h, w = shape
    if images.shape[1] != c:
        images = rgb_to_grayscale(images) if c == 1 else images[:, :1].expand(-1, c, -1, -1)
    if tuple(images.shape[-2:]) != (h, w):
        images = resize(images, [h, w], antialias=True)
    return images.contiguous()


def _filter(real_x, real_y, syn_x, syn_y, wanted, threshold, seed):
    """Keep, per class, the first ``wanted[c]`` generated images the real-data classifier accepts."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from wdiv.diversity import pixel_features

    size = min(16, real_x.shape[-1])
    xr = pixel_features(real_x, size).numpy()
    clf = make_pipeline(
        PCA(n_components=min(50, len(xr) - 1, xr.shape[1]), random_state=seed),
        LogisticRegression(max_iter=2000),
    ).fit(xr, real_y.numpy())
    proba = clf.predict_proba(pixel_features(syn_x, size).numpy())
    classes = clf.classes_
    y = syn_y.numpy()
    col = np.searchsorted(classes, y)
    known = (col < len(classes)) & (classes[np.minimum(col, len(classes) - 1)] == y)
    conf = np.where(known, proba[np.arange(len(y)), np.minimum(col, len(classes) - 1)], 0.0)
    ok = known & (classes[proba.argmax(1)] == y) & (conf >= threshold)
    keep = []
    for c, w in enumerate(wanted):
        rows = np.flatnonzero(ok & (y == c))[:w]
        if len(rows) < w:
            log.warning("synth filtered: class %d kept %d of %d wanted generated images", c, len(rows), w)
        keep.append(rows)
    keep = np.concatenate(keep) if keep else np.zeros(0, dtype=int)
    log.info("synth filtered: kept %d of %d generated images (threshold %.2f)", len(keep), len(y), threshold)
    return syn_x[keep], syn_y[keep]


def _replace(real_x, real_y, syn_x, syn_y, rng):
    """Replace, in each class, a seeded choice of real images by that class's generated ones."""
    images, labels = real_x.clone(), real_y.clone()
    is_syn = np.zeros(len(real_y), dtype=bool)
    y, sy = real_y.numpy(), syn_y.numpy()
    for c in np.unique(sy):
        src = np.flatnonzero(sy == c)
        dst = rng.permutation(np.flatnonzero(y == c))[: len(src)]
        images[dst] = syn_x[src]
        is_syn[dst] = True
    n = len(real_y)
    return dict(images=images, labels=labels, is_synthetic=is_syn, real_index=np.arange(n), fidelity_rows=np.ones(n, dtype=bool))


def _append(real_x, real_y, syn_x, syn_y, rng):
    """Append generated images; each stands for a same-class real image (seeded, spread evenly)."""
    y, sy = real_y.numpy(), syn_y.numpy()
    aligned = np.empty(len(sy), dtype=np.int64)
    for c in np.unique(sy):
        rows = np.flatnonzero(sy == c)
        pool = rng.permutation(np.flatnonzero(y == c))
        if len(pool) == 0:
            raise ValueError(f"synth: class {c} has no real images to align generated ones with")
        aligned[rows] = pool[np.arange(len(rows)) % len(pool)]
    n, m = len(y), len(sy)
    return dict(
        images=torch.cat([real_x, syn_x]),
        labels=torch.cat([real_y, syn_y]),
        is_synthetic=np.r_[np.zeros(n, dtype=bool), np.ones(m, dtype=bool)],
        real_index=np.r_[np.arange(n), aligned],
        fidelity_rows=np.r_[np.zeros(n, dtype=bool), np.ones(m, dtype=bool)],
    )
