"""Input pipelines: augmentation policies (torchvision v2), the resize to the model's input, and
the model's one normalisation.

A policy is a '+'-joined list of components, e.g. ``autoaugment+noise+flip``. Components that
act on uint8 images run first, then the image becomes float in [0, 1], then additive noise,
then ``Normalize(model mean, std)``: the same normalisation for every arm and every policy.

Where the augmentation acts (``aug.at``): ``native`` (default) augments the image as stored
(32 px for CIFAR and digits, the decoded size for image folders) and resizes the result to the
model's input, so a 4-pixel crop shift, an elastic displacement or a noise std mean the same
whatever the model's input size; ``model`` resizes first and augments at the model's size (the
former order, kept for comparison). When the stored size is the model's, both are the same.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from wdiv.errors import ConfigError

# The augment arm's diversity levels, roughly from least to most diverse (paper's list + flip/crop).
LEVELS = [
    "flip+crop",
    "autoaugment",
    "randaugment",
    "augmix",
    "trivialaugment",
    "noise0.01",
    "noise0.03",
    "noise0.05",
    "autoaugment+noise",
    "autoaugment+noise+flip",
    "autoaugment+noise+flip+elastic",
]


class SmoothElastic(torch.nn.Module):
    """Elastic warp by a smooth random field: uniform noise on a coarse ``grid`` x ``grid`` lattice,
    upsampled bicubically, at most ~``alpha`` pixels. Same kind of field as torchvision's
    ElasticTransform (Gaussian-blurred per-pixel noise) at a tenth of its cost on small images."""

    def __init__(self, alpha: float, grid: int = 5):
        super().__init__()
        self.alpha, self.grid = alpha, grid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        h, w = image.shape[-2:]
        coarse = torch.rand(1, 2, self.grid, self.grid) * 2 - 1
        field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        field = field * (2 * self.alpha / torch.tensor([w, h], dtype=field.dtype).view(1, 2, 1, 1))  # pixels -> grid units
        return TF.elastic(image, displacement=field.permute(0, 2, 3, 1))


class PadCrop(v2.RandomCrop):
    """Reflect-pad by ``padding`` pixels, then crop a random window of the image's own size.

    The same draws as ``RandomCrop(size, padding)`` on an image of that size, for images of any
    size (image folders decode each image at its stored size).
    """

    def __init__(self, padding: int):
        super().__init__(1, padding=padding, padding_mode="reflect")

    def forward(self, *inputs):
        self.size = tuple(int(d) for d in inputs[0].shape[-2:])
        return super().forward(*inputs)


AT = ("native", "model")


def augment_at(aug_cfg) -> str:
    """``aug.at``: native (augment the stored image, then resize) or model (resize, then augment)."""
    at = str(aug_cfg.get("at", "native") if hasattr(aug_cfg, "get") else "native")
    if at not in AT:
        raise ConfigError(f"aug.at: {at!r} is not one of {', '.join(AT)}")
    return at


def _uint8_component(name: str, aug_cfg):
    """The uint8-stage transform for one component, or None when it acts on floats."""
    table = {
        "flip": lambda: v2.RandomHorizontalFlip(),
        "crop": lambda: PadCrop(int(aug_cfg.crop_padding)),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
        "randaugment": lambda: v2.RandAugment(num_ops=int(aug_cfg.randaugment_num_ops), magnitude=int(aug_cfg.randaugment_magnitude)),
        "augmix": lambda: v2.AugMix(),
        "trivialaugment": lambda: v2.TrivialAugmentWide(),
        "elastic": lambda: SmoothElastic(float(aug_cfg.elastic_alpha), int(aug_cfg.elastic_grid)),
    }
    return table[name]() if name in table else None


def _noise_std(name: str, aug_cfg) -> float | None:
    if name == "noise":
        return float(aug_cfg.noise_std)
    if name.startswith("noise"):
        try:
            return float(name[len("noise") :])
        except ValueError:
            return None
    return None


def parse_policy(policy: str) -> list[str]:
    """Split a policy into components; raises ConfigError naming ``aug.policy`` if one is unknown."""
    policy = str(policy)
    if policy in ("none", ""):
        return []
    parts = policy.split("+")
    known = {"flip", "crop", "autoaugment", "randaugment", "augmix", "trivialaugment", "elastic", "noise"}
    for part in parts:
        if part not in known and _noise_std(part, {"noise_std": 0.0}) is None:
            raise ConfigError(f"aug.policy: unknown component {part!r} in {policy!r} (known: {', '.join(sorted(known))}, noiseSTD)")
    return parts


class Finish:
    """uint8 or [0,1] float images (any leading dims) -> float normalised by (mean, std).

    Applied per image inside ``build_transform``, or once per batch by the training loop (same
    elementwise ops, bitwise the same numbers, a fraction of the per-image Python overhead).
    ``mean=None`` (a text model's token batches) is the identity.
    """

    def __init__(self, mean, std):
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if self.mean is None:
            return images
        if images.dtype == torch.uint8:
            images = TF.to_dtype(images, torch.float32, scale=True)
        return TF.normalize(images, self.mean, self.std)


def build_pipeline(aug_cfg, *, mean, std, size: int, raw_size: int | None, train: bool):
    """(per-image transform or None, batch ``Finish``): augmentation and the resize to ``size`` per
    image, normalisation per batch.

    ``raw_size`` is the stored images' side (None: sizes vary, every image is resized). The
    per-image part keeps uint8 unless a float-stage component (noise) needs [0,1] floats; with
    ``aug.at=native`` such images are resized as floats, after the noise. A model without a pixel
    normalisation (``mean=None``: text) has no image pipeline at all; its ``aug.policy`` is EDA,
    applied by the text dataset (wdiv.training.text.eda).
    """
    if mean is None:
        return None, Finish(None, None)
    at = augment_at(aug_cfg)
    resize = [v2.Resize([size, size], antialias=True)] if raw_size != size else []
    uint8_stage, float_stage = [], []
    if train:
        for part in parse_policy(aug_cfg.policy):
            std_noise = _noise_std(part, aug_cfg)
            if std_noise is not None:
                float_stage.append(v2.GaussianNoise(mean=0.0, sigma=std_noise, clip=True))
            else:
                uint8_stage.append(_uint8_component(part, aug_cfg))
    augment = [*uint8_stage, *([v2.ToDtype(torch.float32, scale=True), *float_stage] if float_stage else [])]
    steps = [*resize, *augment] if at == "model" else [*augment, *resize]
    return (v2.Compose(steps) if steps else None), Finish(mean, std)


def build_transform(aug_cfg, *, mean, std, size: int, raw_size: int | None, train: bool):
    """uint8 [C,H,W] -> normalised float tensor; augmentation only when ``train``."""
    per_image, finish = build_pipeline(aug_cfg, mean=mean, std=std, size=size, raw_size=raw_size, train=train)
    return finish if per_image is None else v2.Compose([per_image, finish])
