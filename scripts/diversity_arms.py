"""Print the training-set diversity of several arms on one task, and what measuring it costs.

Builds each arm's training set exactly as ``wdiv.train`` does (same config composition, same
starting model, same call into ``wdiv.diversity.measure_training_set``) but does not train:

    python scripts/diversity_arms.py                      # embedded default (digits, vit_small32)
    python scripts/diversity_arms.py model=vit_micro      # any train.yaml override applies to all arms

Arms measured: baseline, a few augment levels, and the synthetic modes at two amounts.
"""

from __future__ import annotations

import sys
import time

import torch
from hydra import compose, initialize_config_dir

from wdiv.cpus import available_cpus
from wdiv.diversity import measure_training_set, pre_logits_encoder
from wdiv.train import CONFIG_DIR
from wdiv.training import models, pretrained
from wdiv.training.augment import build_pipeline
from wdiv.training.data import build_splits
from wdiv.training.runner import runtime

ARMS = [
    ("baseline", ["+exp=baseline"]),
    ("augment flip+crop", ["+exp=augment", "level=flip+crop"]),
    ("augment autoaugment", ["+exp=augment", "level=autoaugment"]),
    ("augment noise0.05", ["+exp=augment", "level=noise0.05"]),
    ("augment autoaug+noise+flip+elastic", ["+exp=augment", "level=autoaugment+noise+flip+elastic"]),
    ("synthetic replace 0.5", ["+exp=synthetic", "synth.mode=replace", "level=0.5"]),
    ("synthetic replace 1.0", ["+exp=synthetic", "synth.mode=replace", "level=1.0"]),
    ("synthetic add 0.5", ["+exp=synthetic", "synth.mode=add", "level=0.5"]),
    ("synthetic add+filter 0.5", ["+exp=synthetic", "synth.mode=add", "synth.filter=true", "level=0.5"]),
]


def measure(overrides: list[str]) -> tuple[dict, float]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    rt = runtime(cfg.trainer, available_cpus())
    seed = int(cfg.seed)
    splits = build_splits(cfg.data, cfg.paths, task="target", synth_cfg=cfg.get("synth"), seed=seed)
    start = pretrained.resolve(cfg, rt)
    model = models.create(cfg.model, splits.num_classes)
    if start is not None:
        from wdiv.training.checkpoint import load_weights

        models.load_backbone(model, load_weights(start[0]), start[0])
    mean, std = models.normalisation(model, cfg.model)
    size = int(cfg.model.img_size)
    augmented = str(cfg.aug.policy) not in ("none", "")
    per_image, _ = build_pipeline(cfg.aug, mean=mean, std=std, size=size, raw_size=splits.image_size, train=True)
    transform = per_image if augmented else None
    t0 = time.perf_counter()
    out = measure_training_set(
        real=splits.real_train if splits.real_train is not None else splits.train,
        train=splits.train,
        transform=transform,
        encoder=pre_logits_encoder(model, mean, std, size=size),
        cfg=cfg.diversity,
        seed=seed,
    )
    return out, time.perf_counter() - t0


def main(argv: list[str]) -> int:
    print(f"{'arm':38s} {'vendi_pixel':>11s} {'vendi_embed':>11s} {'rho':>6s} {'weighted_vs':>11s} {'n':>5s} {'time_s':>6s}")
    times = []
    for name, overrides in ARMS:
        out, dt = measure([*overrides, *argv])
        times.append(dt)
        print(f"{name:38s} {out['vendi_pixel']:11.3f} {out['vendi_embed']:11.3f} {out['rho']:6.3f} {out['weighted_vs']:11.3f} {out['n']:5d} {dt:6.2f}")
    print(f"measurement time per run: median {sorted(times)[len(times) // 2]:.2f} s, max {max(times):.2f} s (torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
