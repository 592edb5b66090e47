"""The synthetic arm: mix generated images into the real training split, before augmentation.

Two knobs, as for text, p = ``synth.p``:

* ``synth.mode=replace``: a fraction p of the real images (a seeded choice per class) is
  replaced by generated images of the same class, so the set keeps its size; p = 1 is 100 %
  synthetic;
* ``synth.mode=add``: round(p x |real|) generated images (class proportions of the real set)
  are appended;
* ``synth.filter=true``: the generated images come from a pool ``synth.oversample`` times
  larger, after dropping those that a classifier fitted on the real split labels wrongly or
  with confidence below ``synth.threshold``. ``replace`` then keeps (1 - p) of the real images
  plus up to p |real| filtered ones, so the set is smaller when the filtered pool runs short
  (the study's "replace from the filtered pool at real share q" is replace + filter at p = 1 - q).

``synth.mode=filtered`` (the arm's former third mode) is an alias for add + filter.

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
from wdiv.variants import ALIASES, MODES, canonical

log = logging.getLogger(__name__)



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
    mode, filt, p, threshold, oversample = _knobs(cfg)
    images, labels = _materialise(real_train)
    k = int(num_classes or int(labels.max()) + 1)
    class_counts = np.bincount(labels.numpy(), minlength=k)
    wanted = _apportion(round(p * len(labels)), class_counts)
    class_names = class_names or getattr(real_train, "classes", None)

    gen = generator if generator is not None else make_generator(cfg.get("generator") or {})
    pool = [math.ceil(w * oversample) for w in wanted] if filt else wanted
    syn_x, syn_y = cached_generate(gen, images, labels, pool, seed=seed, cache_dir=cache_dir, class_names=class_names)
    syn_x = _match(syn_x, images.shape[1:])
    if filt:
        syn_x, syn_y = _filter(images, labels, syn_x, syn_y, wanted, threshold, seed)

    rng = np.random.default_rng(seed)
    if mode == "replace":
        out = _replace(images, labels, syn_x, syn_y, wanted, rng)
    else:
        out = _append(images, labels, syn_x, syn_y, rng)
    n_syn = int(out["is_synthetic"].sum())
    info = {"mode": mode, "filter": filt, "p": p, "generator": gen.name, "n_real": len(out["labels"]) - n_syn, "n_synthetic": n_syn}
    if filt:
        info |= {"threshold": threshold, "oversample": oversample}
    log.info("synthetic training set: %s", info)
    return SyntheticTrainSet(**out, info=info, classes=class_names)


def _knobs(cfg: dict[str, Any]) -> tuple[str, bool, float, float, float]:
    """(mode, filter, p, threshold, oversample), each checked; one line naming the bad key."""
    given = cfg.get("mode")
    if given not in MODES and given not in ALIASES:
        raise ConfigError(f"synth.mode: unknown mode {given!r} (known: none, replace, add; filtered = add with synth.filter=true)")
    filt = cfg.get("filter", False)
    if isinstance(filt, Mapping):  # the former filter: {threshold, oversample}
        raise ConfigError("synth.filter: true or false; its threshold and oversample are synth.threshold and synth.oversample")
    if not isinstance(filt, bool):
        raise ConfigError(f"synth.filter: {filt!r} is not true or false")
    mode, filt = canonical(given, filt)
    if given in ALIASES:
        log.info("synth.mode=%s is %s with synth.filter=true", given, mode)
    try:
        p = float(cfg.get("p"))
    except (TypeError, ValueError):
        raise ConfigError(f"synth.p: {cfg.get('p')!r} is not a number") from None
    if not 0.0 <= p <= (1.0 if mode == "replace" else math.inf):
        raise ConfigError(f"synth.p: {p!r} out of range for mode {mode} (replace: 0..1, add: >= 0)")
    threshold, oversample = cfg.get("threshold", 0.5), cfg.get("oversample", 2.0)
    try:
        threshold, oversample = float(threshold), float(oversample)
    except (TypeError, ValueError):
        raise ConfigError(f"synth.threshold / synth.oversample: {threshold!r} / {oversample!r} are not numbers") from None
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"synth.threshold: {threshold!r} is outside [0, 1]")
    if not oversample >= 1.0:
        raise ConfigError(f"synth.oversample: {oversample!r} is below 1")
    return mode, filt, p, threshold, oversample


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def _materialise(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError("synth: the real training split is empty")
    sizes = {tuple(torch.as_tensor(x).shape) for x, _ in items}
    if len(sizes) > 1:  # image folders keep each stored size; resizing them here would augment the
        # synthetic arm's real images at another scale than the baseline's (a confound between arms)
        raise ConfigError(f"data.image_size: the synthetic arm mixes real and generated images as one tensor, but the "
                          f"real training images have {len(sizes)} different sizes; set data.image_size=N to decode them at one size")
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
            log.warning("synth filter: class %d kept %d of %d wanted generated images", c, len(rows), w)
        keep.append(rows)
    keep = np.concatenate(keep) if keep else np.zeros(0, dtype=int)
    log.info("synth filter: kept %d of %d generated images (threshold %.2f)", len(keep), len(y), threshold)
    return syn_x[keep], syn_y[keep]


def _replace(real_x, real_y, syn_x, syn_y, wanted, rng):
    """Per class, ``wanted[c]`` seeded real images go; that class's generated ones take their places.

    When the filtered pool ran short, the real images it could not replace are dropped, so the
    real share stays 1 - p.
    """
    images, labels = real_x.clone(), real_y.clone()
    n = len(real_y)
    is_syn, keep = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    y, sy = real_y.numpy(), syn_y.numpy()
    for c in np.flatnonzero(np.asarray(wanted) > 0):
        src = np.flatnonzero(sy == c)
        dst = rng.permutation(np.flatnonzero(y == c))[: wanted[c]]
        images[dst[: len(src)]] = syn_x[src[: len(dst)]]
        is_syn[dst[: len(src)]] = True
        keep[dst[len(src) :]] = False
    rows = np.flatnonzero(keep)
    if len(rows) < n:
        images, labels = images[rows], labels[rows]
    return dict(images=images, labels=labels, is_synthetic=is_syn[rows], real_index=rows, fidelity_rows=np.ones(len(rows), dtype=bool))


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
