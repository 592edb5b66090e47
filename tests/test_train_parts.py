"""Pieces of the training pipeline: dropout, weight-decay groups, augmentation, corruptions, image folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from wdiv.errors import ConfigError
from wdiv.training import models
from wdiv.training.augment import LEVELS, build_transform
from wdiv.training.corruptions import corrupt_suite
from wdiv.training.splits import TensorImages

MICRO = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}}
AUG = {"crop_padding": 4, "randaugment_num_ops": 2, "randaugment_magnitude": 9, "noise_std": 0.03, "elastic_alpha": 2.0, "elastic_grid": 5}


def micro(dropout=0.0, where="head", name="vit_tiny_patch16_224"):
    cfg = OmegaConf.create({**MICRO, "name": name, "dropout": dropout, "dropout_at": where})
    torch.manual_seed(0)
    return models.create(cfg, 5)


@pytest.mark.parametrize("where", ["head", "blocks", "both"])
def test_dropout_acts_in_train_mode_only(where):
    x = torch.randn(4, 3, 32, 32)
    model = micro(0.5, where).train()
    assert not torch.equal(model(x), model(x))  # fresh masks each forward
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = micro(0.0, where).train()
    assert torch.equal(plain(x), plain(x))


def test_block_dropout_reaches_a_resnet_and_keeps_state_dict_keys():
    cfg = OmegaConf.create({"name": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}, "dropout": 0.5, "dropout_at": "blocks"})
    model = models.create(cfg, 3)
    ref = models.create(OmegaConf.merge(cfg, {"dropout": 0.0}), 3)
    assert model.state_dict().keys() == ref.state_dict().keys()
    with pytest.raises(ConfigError, match="^model.dropout_at:"):
        models.add_block_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.train()
        # BatchNorm in train mode is deterministic for a fixed batch; only dropout differs
        assert not torch.equal(model(x), model(x))


def test_weight_decay_spares_norms_biases_and_tokens_unless_asked():
    from wdiv.training.optim import build_optimizer

    model = micro()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, OmegaConf.create({"name": "adam", "lr": 1e-3, "weight_decay": 1e-3, "eps": 1e-8}))
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert not any(n.endswith(".bias") or "norm" in n or n in ("pos_embed", "cls_token") for n in decayed)
    assert type(opt) is torch.optim.Adam  # coupled L2, as in the paper
    everything = build_optimizer(model, OmegaConf.create({"name": "adamw", "lr": 1e-3, "weight_decay": 1e-3, "eps": 1e-8, "decay_norm_bias": True}))
    assert type(everything) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in everything.param_groups if g["weight_decay"] > 0) == len(names)


def test_coupled_l2_moves_weights_differently_from_decoupled():
    from wdiv.training.optim import build_optimizer

    results = []
    for name in ("adam", "adamw"):
        model = micro()
        opt = build_optimizer(model, OmegaConf.create({"name": name, "lr": 1e-2, "weight_decay": 0.5, "eps": 1e-8}))
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        opt.step()
        results.append(model.head.weight.detach().clone())
    assert not torch.allclose(results[0], results[1])


@pytest.mark.parametrize("policy", ["none", *LEVELS])
def test_every_augment_level_gives_normalised_float_images(policy):
    aug = OmegaConf.create({**AUG, "policy": policy})
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    train = build_transform(aug, mean=[0.5] * 3, std=[0.25] * 3, size=32, raw_size=32, train=True)
    evaluate = build_transform(aug, mean=[0.5] * 3, std=[0.25] * 3, size=32, raw_size=32, train=False)
    out = train(image)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # [0,1] pixels through the one normalisation
    expected = (image.float() / 255 - 0.5) / 0.25
    assert torch.allclose(evaluate(image), expected, atol=1e-6)  # eval: normalisation only
    if policy != "none":
        torch.manual_seed(0)
        draws = [train(image) for _ in range(4)]
        assert any(not torch.equal(draws[0], d) for d in draws[1:])  # the policy really randomises


def test_smooth_elastic_moves_pixels_by_a_bounded_smooth_field():
    from wdiv.training.augment import SmoothElastic

    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, :, 16] = 255  # a vertical line
    torch.manual_seed(0)
    out = SmoothElastic(2.0, 5)(image)
    assert out.dtype == torch.uint8 and not torch.equal(out, image)
    cols = (out[0].float() > 64).nonzero()[:, 1]
    assert cols.min() >= 16 - 3 and cols.max() <= 16 + 3  # displaced at most ~alpha pixels


def test_noise_level_sets_the_noise_std():
    aug = OmegaConf.create({**AUG, "policy": "noise0.05"})
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    out = build_transform(aug, mean=[0.0] * 3, std=[1.0] * 3, size=32, raw_size=32, train=True)(image)
    assert abs(float((out - 128 / 255).std()) - 0.05) < 0.005


def test_unknown_policy_component_names_the_key():
    with pytest.raises(ConfigError, match="^aug.policy:"):
        build_transform(OmegaConf.create({**AUG, "policy": "flip+nope"}), mean=[0] * 3, std=[1] * 3, size=32, raw_size=32, train=True)


def test_corruption_suite_is_deterministic_and_changes_images():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    test = TensorImages(images, torch.arange(6) % 3)
    severities = {"gaussian_noise": 0.1, "gaussian_blur": 1.0, "contrast": 0.3, "rotation": 20, "elastic": 3.0}
    a, b = corrupt_suite(test, severities), corrupt_suite(test, severities)
    for name in severities:
        assert a[name].images.dtype == torch.uint8 and a[name].images.shape == images.shape
        assert torch.equal(a[name].images, b[name].images), name
        assert not torch.equal(a[name].images, images), name
        assert torch.equal(a[name].labels, test.labels)
    with pytest.raises(ConfigError, match="data.corruptions.fog"):
        corrupt_suite(test, {"fog": 1})


def test_digits_splits_are_fixed_stratified_and_disjoint(tmp_path):
    from wdiv.training.data import build_splits

    data = OmegaConf.load(Path(__file__).parents[1] / "src/wdiv/configs/data/digits.yaml")
    paths = OmegaConf.create({"cache_dir": None})  # the session cache (conftest's WDIV_CACHE)
    target = build_splits(OmegaConf.merge(data, {"corruptions": {}}), paths, task="target")
    again = build_splits(OmegaConf.merge(data, {"corruptions": {}}), paths, task="target")  # from the cache
    assert torch.equal(target.test.images, again.test.images)
    assert target.num_classes == 5 and target.train.images.shape[1:] == (3, 32, 32)
    n = len(target.train) + len(target.val) + len(target.test)
    assert abs(len(target.test) / n - 0.2) < 0.01 and abs(len(target.val) / n - 0.2) < 0.01
    for split in (target.train, target.val, target.test):
        counts = torch.bincount(split.labels, minlength=5).float()
        assert counts.min() / counts.max() > 0.85  # stratified
    rows = lambda s: {tuple(img.flatten().tolist()) for img in s.images}  # noqa: E731
    assert not rows(target.train) & rows(target.test)


def _write_png_tree(root: Path, classes, per_class: int, seed: int) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = torch.randint(0, 60, (3, 20, 24), dtype=torch.uint8, generator=gen) + 60 * c
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")


def test_imagefolder_with_ood_roots_and_local_pretrained_weights(tmp_path):
    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR
    from wdiv.training.checkpoint import save_weights
    from wdiv.training.runner import run

    classes = ["ant", "bee", "cat"]
    _write_png_tree(tmp_path / "train", classes, 8, 0)
    _write_png_tree(tmp_path / "test", classes, 3, 1)
    _write_png_tree(tmp_path / "sketch", classes[:2], 3, 2)
    start = micro().state_dict()  # a checkpoint of the same architecture with a recognisable pos_embed
    start["pos_embed"] = torch.full_like(start["pos_embed"], 0.123)
    save_weights(start, tmp_path / "start.safetensors")
    overrides = [
        "model=vit_micro", "trainer.epochs=1", "trainer.progress=false", "diversity.compute=false", "data=imagefolder",
        f"data.train_root={tmp_path / 'train'}", f"data.test_root={tmp_path / 'test'}",
        f"+data.ood_roots.sketch={tmp_path / 'sketch'}", f"model.pretrained={tmp_path / 'start.safetensors'}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    info = run(cfg, tmp_path / "run")
    assert info["status"] == "complete" and info["data"] == "imagefolder"
    assert list(info["metrics"]["ood"]) == ["sketch"]
    assert info["pretrained"]["path"] == str((tmp_path / "start.safetensors").resolve())
    assert info["pretrained"]["kind"] == "file"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["metrics"]["ood_acc"] == info["metrics"]["ood"]["sketch"]
    # the backbone started from the file: one short epoch moves pos_embed only a little from 0.123
    from safetensors.torch import load_file

    final = load_file(str(tmp_path / "run" / "model.safetensors"))["pos_embed"]
    assert (final - 0.123).abs().max() < 0.05


def test_local_weights_that_do_not_fit_are_a_config_error(tmp_path):
    from wdiv.training.checkpoint import save_weights

    save_weights({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    from wdiv.training.checkpoint import load_weights

    with pytest.raises(ConfigError, match="^model.pretrained:"):
        models.load_backbone(micro(), load_weights(tmp_path / "bad.safetensors"), "bad.safetensors")


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path):
    from wdiv.io import atomic_path, write_json

    target = tmp_path / "run.json"
    write_json(target, {"status": "running"})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"status": "comp')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "clip_rn50", "clip_vit_b32", "cnn_small"])
def test_real_scale_model_configs_build_with_block_dropout(name):
    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "+exp=dropout", "level=0.3", "model.dropout_at=both"])
    net = models.create(cfg.model, 10)  # architecture only: hub weights are never fetched in tests
    size = int(cfg.model.img_size)
    x = torch.randn(2, 3, size, size)
    net.train()
    assert not torch.equal(net(x), net(x))
    mean, std = models.normalisation(net, cfg.model)
    assert len(mean) == len(std) == 3


def test_ece_equals_torchmetrics_bit_for_bit():
    from torchmetrics.functional.classification import multiclass_calibration_error

    from wdiv.training.evaluate import ECE_BINS, calibration_error

    for seed, classes, scale in [(0, 5, 1.0), (1, 10, 4.0), (2, 3, 30.0), (3, 5, 0.01)]:
        gen = torch.Generator().manual_seed(seed)
        probs = (torch.randn(300, classes, generator=gen, dtype=torch.float64) * scale).softmax(1)
        labels = torch.randint(0, classes, (300,), generator=gen)
        ours = calibration_error(probs, labels, ECE_BINS)
        ref = multiclass_calibration_error(probs, labels, num_classes=classes, n_bins=ECE_BINS, norm="l1")
        assert float(ours) == float(ref), seed
