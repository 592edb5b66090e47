"""aug.at=native: a policy changes a CIFAR image the same way whether the model takes 32 or 224
pixels (augment as stored, then resize); aug.at=model (resize, then augment) does not."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.functional import avg_pool2d
from torchvision.transforms import v2

from wdiv.errors import ConfigError
from wdiv.training.augment import LEVELS, PadCrop, augment_at, build_pipeline

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def aug(policy: str, at: str = "native"):
    return OmegaConf.create({"policy": policy, "at": at, "crop_padding": 4, "randaugment_num_ops": 2, "randaugment_magnitude": 9,
                             "noise_std": 0.03, "elastic_alpha": 2.0, "elastic_grid": 5})


def cifar_image(seed: int = 0) -> torch.Tensor:
    """A 32 px image with structure at every scale (gradients plus texture), uint8 [3, 32, 32]."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(40, 200, 32)
    base = (ramp[None, :, None] + ramp[None, None, :]) / 2
    return (base + torch.randint(-30, 30, (3, 32, 32), generator=gen)).clamp(0, 255).to(torch.uint8)


def draw(transform, image, seed: int):
    torch.manual_seed(seed)
    return transform(image)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255 if x.dtype == torch.uint8 else x


@pytest.mark.parametrize("policy", LEVELS)
def test_native_augmentation_at_224_is_the_32_px_augmentation_resized(policy):
    image = cifar_image()
    at_224, _ = build_pipeline(aug(policy), mean=MEAN, std=STD, size=224, raw_size=32, train=True)
    at_32, _ = build_pipeline(aug(policy), mean=MEAN, std=STD, size=32, raw_size=32, train=True)
    resize = v2.Resize([224, 224], antialias=True)
    for seed in range(3):
        big, small = draw(at_224, image, seed), draw(at_32, image, seed)
        assert tuple(big.shape) == (3, 224, 224)
        assert torch.equal(big, resize(small)), seed  # the same draws, on the stored pixels


def ramps() -> torch.Tensor:
    """A 32 px image whose red channel rises by 7 per column and green by 7 per row: resized to 224
    px it rises by exactly 1 per pixel, so a pixel's value tells how far the crop moved it."""
    x = torch.arange(32) * 7 + 10
    return torch.stack([x[None, :].expand(32, 32), x[:, None].expand(32, 32), torch.full((32, 32), 100)]).to(torch.uint8)


def test_crop_at_model_resolution_shifts_by_a_seventh_of_the_native_shift():
    """A 4-pixel crop shift is 4/32 of a CIFAR image at native resolution, 4/224 at the model's."""
    image = ramps()
    clean = v2.Resize([224, 224], antialias=True)(image).int()[:2, 112, 112]
    shifts = {}
    for at in ("native", "model"):
        per_image, _ = build_pipeline(aug("crop", at), mean=MEAN, std=STD, size=224, raw_size=32, train=True)
        shifts[at] = {d for s in range(40) for d in (draw(per_image, image, s).int()[:2, 112, 112] - clean).tolist()}
    assert shifts["native"] == {7 * k for k in range(-4, 5)}  # whole stored pixels: up to 4 x 7 = 28 model pixels
    assert shifts["model"] == set(range(-4, 5))  # up to 4 model pixels


@pytest.mark.parametrize("level", ["noise0.01", "noise0.03", "noise0.05"])
def test_noise_level_is_set_per_stored_pixel_at_any_model_size(level):
    """Seen at the image's own resolution (the 224 px input averaged over 7 x 7 blocks), noise of std
    s added per stored pixel stays of order s; added per 224 px pixel (aug.at=model) it averages
    down to s / 7, so the same level would be a seven times weaker regulariser at 224 px."""
    sigma = float(level[len("noise"):])
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    clean = to_unit(image)
    seen = {}
    for at in ("native", "model"):
        per_image, _ = build_pipeline(aug(level, at), mean=MEAN, std=STD, size=224, raw_size=32, train=True)
        seen[at] = float(torch.stack([avg_pool2d(to_unit(draw(per_image, image, s))[None], 7)[0] - clean for s in range(4)]).std())
    at_32, _ = build_pipeline(aug(level), mean=MEAN, std=STD, size=32, raw_size=32, train=True)
    assert float(torch.stack([to_unit(draw(at_32, image, s)) - clean for s in range(4)]).std()) == pytest.approx(sigma, rel=0.1)
    assert seen["model"] == pytest.approx(sigma / 7, rel=0.1)
    assert 0.5 * sigma < seen["native"] <= sigma  # the 32 px noise, smoothed a little by the bilinear resize


def test_native_and_model_are_one_pipeline_when_the_stored_size_is_the_models():
    image = cifar_image(1)
    for policy in ("flip+crop", "autoaugment+noise+flip+elastic"):
        a, _ = build_pipeline(aug(policy), mean=MEAN, std=STD, size=32, raw_size=32, train=True)
        b, _ = build_pipeline(aug(policy, "model"), mean=MEAN, std=STD, size=32, raw_size=32, train=True)
        for seed in range(3):
            assert torch.equal(draw(a, image, seed), draw(b, image, seed))


def test_pad_crop_draws_as_random_crop_and_keeps_any_image_size():
    image = cifar_image(2)
    for seed in range(5):
        assert torch.equal(draw(PadCrop(4), image, seed), draw(v2.RandomCrop(32, padding=4, padding_mode="reflect"), image, seed))
    wide = torch.randint(0, 255, (3, 21, 37), dtype=torch.uint8)
    assert tuple(PadCrop(4)(wide).shape) == (3, 21, 37)


def test_images_of_any_stored_size_come_out_at_the_model_size_augmented_first():
    sizes = [(3, 20, 24), (3, 33, 17)]
    for at in ("native", "model"):
        train_tf, _ = build_pipeline(aug("flip+crop+noise", at), mean=MEAN, std=STD, size=48, raw_size=None, train=True)
        eval_tf, _ = build_pipeline(aug("flip+crop+noise", at), mean=MEAN, std=STD, size=48, raw_size=None, train=False)
        for shape in sizes:
            image = torch.randint(0, 255, shape, dtype=torch.uint8)
            assert tuple(train_tf(image).shape) == (3, 48, 48)
            out = eval_tf(image)  # evaluation: the resize only, still uint8 (normalised per batch)
            assert out.dtype == torch.uint8 and torch.equal(out, v2.Resize([48, 48], antialias=True)(image))


def test_unknown_aug_at_names_the_key():
    with pytest.raises(ConfigError, match=r"^aug\.at: 'input' is not one of native, model"):
        augment_at(aug("flip", "input"))
    with pytest.raises(ConfigError, match=r"^aug\.at: "):
        build_pipeline(aug("flip", "input"), mean=MEAN, std=STD, size=224, raw_size=32, train=True)
