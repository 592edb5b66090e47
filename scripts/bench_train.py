"""Training throughput of wdiv's loop relative to a bare PyTorch loop, same model and data, one run.

    python scripts/bench_train.py [--model vit_small32] [--rounds 4] [--threads 1]

wdiv's side is the real pipeline (digits target split (uint8) -> DataLoader -> per-batch
normalisation -> train_epoch with lr schedule, metrics and tqdm). The bare side pre-builds the
normalised tensor and runs forward/backward/step over shuffled slices. Epochs of the two
alternate (and swap order each round), so load from other processes hits both alike. Prints images/s and the ratio
(target >= 0.9).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small32", help="a configs/model/*.yaml name")
    parser.add_argument("--rounds", type=int, default=4, help="epochs of each loop (alternating)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="default: trainer.batch_size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hydra import compose, initialize_config_dir

    from wdiv.train import CONFIG_DIR
    from wdiv.training import models
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits, transformed
    from wdiv.training.loop import Runtime, make_loader, train_epoch
    from wdiv.training.optim import build_optimizer

    with initialize_config_dir(config_dir=str(Path(CONFIG_DIR)), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    args.batch_size = args.batch_size or int(cfg.trainer.batch_size)
    rt = Runtime(device=torch.device("cpu"), progress=True)
    splits = build_splits(cfg.data, cfg.paths, task="target")
    torch.manual_seed(0)
    model = models.create(cfg.model, splits.num_classes)
    mean, std = models.normalisation(model, cfg.model)
    per_image, finish = build_pipeline(cfg.aug, mean=mean, std=std, size=int(cfg.model.img_size), raw_size=splits.image_size, train=True)
    train = transformed(splits.train, per_image)
    optimizer = build_optimizer(model, cfg.optim)

    # bare loop inputs: the same images, normalised once up front
    x_all = finish(torch.stack([train[i][0] for i in range(len(train))]))
    y_all = torch.tensor([train[i][1] for i in range(len(train))])
    bare_model = models.create(cfg.model, splits.num_classes)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=float(cfg.optim.lr))

    def bare_epoch(seed: int) -> None:
        bare_model.train()
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order), args.batch_size):
            idx = order[start : start + args.batch_size]
            loss = F.cross_entropy(bare_model(x_all[idx]), y_all[idx])
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    def wdiv_epoch(seed: int) -> None:
        loader = make_loader(train, args.batch_size, rt, shuffle=True, seed=seed)
        train_epoch(model, loader, optimizer, rt, lr_at=lambda s: 1.0, step=0, desc="wdiv", finish=finish)

    wdiv_epoch(-1)  # warm-up both
    bare_epoch(-1)
    t_wdiv = t_bare = 0.0
    for r in range(args.rounds):  # alternate which loop goes first, to cancel order effects
        for name in (("wdiv", "bare") if r % 2 == 0 else ("bare", "wdiv")):
            t0 = time.perf_counter()
            (wdiv_epoch if name == "wdiv" else bare_epoch)(r)
            dt = time.perf_counter() - t0
            if name == "wdiv":
                t_wdiv += dt
            else:
                t_bare += dt
    n = len(train) * args.rounds
    wdiv_ips, bare_ips = n / t_wdiv, n / t_bare
    print(f"model {args.model}, {len(train)} images x {args.rounds} epochs, batch {args.batch_size}, {args.threads} thread(s)")
    print(f"wdiv loop: {wdiv_ips:.0f} img/s   bare PyTorch loop: {bare_ips:.0f} img/s")
    print(f"ratio wdiv/bare: {wdiv_ips / bare_ips:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
