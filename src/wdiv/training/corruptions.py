"""A deterministic corruption suite of a test split (CIFAR-10-C style OOD sets at fixed severities).

Each corruption maps uint8 images [N, C, H, W] to uint8 images; randomness comes from a fixed
seed, so every run of every arm is scored on the very same corrupted images.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

from wdiv.errors import ConfigError
from wdiv.training.splits import TensorImages


def _to_float(x):
    return x.float() / 255.0


def _to_uint8(x):
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(images, std: float, gen: torch.Generator):
    """Additive N(0, std^2) noise on [0, 1] pixels."""
    x = _to_float(images)
    return _to_uint8(x + std * torch.randn(x.shape, generator=gen))


def gaussian_blur(images, sigma: float, gen=None):
    kernel = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(images, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def contrast(images, factor: float, gen=None):
    """Pull pixels towards the image mean (factor < 1 lowers contrast)."""
    return TF.adjust_contrast(images, factor)


def rotation(images, degrees: float, gen: torch.Generator):
    """Rotate each image by +/- ``degrees`` (sign drawn per image)."""
    signs = torch.randint(0, 2, (len(images),), generator=gen) * 2 - 1
    return torch.stack([TF.rotate(img, float(s) * degrees) for img, s in zip(images, signs.tolist())])


def elastic(images, alpha: float, gen: torch.Generator, sigma: float = 4.0):
    """Elastic warp with a smooth random displacement field of strength ``alpha`` pixels."""
    n, _, h, w = images.shape
    noise = torch.rand((n, 2, h, w), generator=gen) * 2 - 1
    kernel = 2 * math.ceil(3 * sigma) + 1
    field = TF.gaussian_blur(noise, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    field = field * (alpha / torch.tensor([w, h]).view(1, 2, 1, 1))  # pixels -> [-1, 1] grid units
    out = [TF.elastic(img, displacement=f.permute(1, 2, 0)[None]) for img, f in zip(images, field)]
    return torch.stack(out)


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "rotation": rotation,
    "elastic": elastic,
}


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorImages):
        return dataset.images, dataset.labels
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    if len({tuple(im.shape) for im in images}) > 1:
        raise ConfigError("data.corruptions: the built-in suite needs test images of one size; set data.image_size to decode them to one square, or data.corruptions={}")
    return torch.stack(images), torch.tensor(labels)


def corrupt_suite(test, severities, seed: int = 0) -> dict[str, TensorImages]:
    """{name: corrupted copy of ``test``} for each ``name: severity`` in ``severities``."""
    images, labels = _stack(test)
    out = {}
    for k, (name, severity) in enumerate(dict(severities).items()):
        if name not in CORRUPTIONS:
            raise ConfigError(f"data.corruptions.{name}: unknown corruption (known: {', '.join(CORRUPTIONS)})")
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        out[name] = TensorImages(CORRUPTIONS[name](images, float(severity), gen), labels, getattr(test, "classes", None))
    return out
