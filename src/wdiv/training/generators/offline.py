"""Offline class-conditional generator: Gaussian mixtures in PCA pixel space (CPU, seconds).

A stand-in for a generative model that needs no weights and no GPU: PCA compresses the real
training images, one Gaussian mixture per class is fitted to the compressed images, and samples
are decoded back to pixels. Sampling draws each class from its own seeded streams, one sample
after another, so a larger request extends a smaller one (the p=0.3 set contains the p=0.1 set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from wdiv.training.generators.base import Generator

DEFAULTS: dict[str, Any] = {
    "pca_components": 32,  # pixel-space dimensions the mixtures live in
    "mixture_components": 4,  # Gaussians per class (fewer for classes with few images)
    "temperature": 1.0,  # scales each sample's deviation from its component mean
    "reg_covar": 1e-4,
    "max_fit_images": 5000,  # PCA is fitted on at most this many images (big sets)
}


class PcaGmmGenerator(Generator):
    name = "pca_gmm"

    def __init__(self, cfg: Any):
        super().__init__({**DEFAULTS, **dict(cfg)})
        self._pca: PCA | None = None
        self._mixtures: list[GaussianMixture | None] = []
        self._shape: tuple[int, ...] = ()

    def fit(self, images, labels, *, class_names=None, seed: int) -> None:
        super().fit(images, labels, class_names=class_names, seed=seed)
        x = images.flatten(1).numpy().astype(np.float32) / 255.0
        y = labels.numpy()
        rng = np.random.default_rng(seed)
        fit_rows = rng.permutation(len(x))[: int(self.cfg["max_fit_images"])]
        k = max(1, min(int(self.cfg["pca_components"]), len(fit_rows) - 1, x.shape[1]))
        self._pca = PCA(n_components=k, random_state=seed).fit(x[fit_rows])
        z = self._pca.transform(x)
        self._shape = tuple(images.shape[1:])
        self._mixtures = []
        for c in range(int(y.max()) + 1):
            zc = z[y == c]
            if len(zc) == 0:
                self._mixtures.append(None)
                continue
            m = max(1, min(int(self.cfg["mixture_components"]), len(zc) // 5))
            gmm = GaussianMixture(
                n_components=m, covariance_type="full", reg_covar=float(self.cfg["reg_covar"]),
                random_state=seed,
            )
            self._mixtures.append(gmm.fit(zc))

    def generate(self, counts: Sequence[int], *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pca is None:
            raise RuntimeError("pca_gmm: fit() must see the real training split before generate()")
        images, labels = [], []
        for c, count in enumerate(counts):
            if count == 0:
                continue
            if c >= len(self._mixtures) or self._mixtures[c] is None:
                raise ValueError(f"pca_gmm: class {c} has no real training images to fit")
            images.append(self._sample(self._mixtures[c], int(count), seed, c))
            labels.append(np.full(int(count), c, dtype=np.int64))
        if not images:
            return torch.empty((0, *self._shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    def _sample(self, gmm: GaussianMixture, count: int, seed: int, c: int) -> np.ndarray:
        pick = np.random.default_rng([seed, c, 0]).random(count)
        comps = np.minimum(np.searchsorted(np.cumsum(gmm.weights_), pick, side="right"), len(gmm.weights_) - 1)
        noise = np.random.default_rng([seed, c, 1]).standard_normal((count, gmm.means_.shape[1]))
        chol = np.linalg.cholesky(gmm.covariances_)
        z = gmm.means_[comps] + float(self.cfg["temperature"]) * np.einsum("nij,nj->ni", chol[comps], noise)
        x = np.clip(self._pca.inverse_transform(z), 0.0, 1.0)
        return np.round(x * 255).astype(np.uint8).reshape(count, *self._shape)
