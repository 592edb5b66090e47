"""Training throughput of wdiv's loop relative to a bare PyTorch loop, same model and data, one run.

    python scripts/bench_train.py [--model vit_small32] [--device cpu|cuda] [--rounds 4] [--threads 1]
    python scripts/bench_train.py --device cuda --model clip_vit_b32      # 224 px, bf16, workers

wdiv's side is the real pipeline (digits target split (uint8) -> the run's one DataLoader with
its workers and pinned memory -> per-batch normalisation on the device -> train_epoch with lr
schedule, device-side metrics and tqdm; bf16 autocast and channels_last as a run on that device
would use). The bare side pre-builds the normalised tensor on the device and runs
forward/backward/step over shuffled slices with the same autocast. Epochs of the two alternate
(and swap order each round), so load from other processes hits both alike. Prints images/s and
the ratio (target >= 0.9). Models are random-init (no download): throughput does not depend on
the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small32", help="a configs/model/*.yaml name")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--rounds", type=int, default=4, help="epochs of each loop (alternating)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, trainer.num_workers=auto on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: trainer.batch_size")
    parser.add_argument("--repeat", type=int, default=1, help="use the training split this many times per epoch (longer epochs)")
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true on wdiv's side")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar on wdiv's side")
    return parser.parse_args(argv)


def compare(args: argparse.Namespace, cpus: int = 1) -> dict:
    """{'wdiv': img/s, 'bare': img/s, 'ratio': ..., 'images': n per epoch, ...} for ``args``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch.utils.data import ConcatDataset

    from wdiv.train import CONFIG_DIR
    from wdiv.training import models
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits, transformed
    from wdiv.training.loop import compile_model, train_epoch, train_loader
    from wdiv.training.optim import build_optimizer
    from wdiv.training.runner import runtime, use_channels_last

    torch.set_num_threads(args.threads)
    overrides = [f"model={args.model}", f"trainer.device={args.device}", f"trainer.threads={args.threads}", f"trainer.progress={str(args.progress).lower()}"]
    if args.workers is not None:
        overrides.append(f"trainer.num_workers={args.workers}")
    with initialize_config_dir(config_dir=str(Path(CONFIG_DIR)), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    batch_size = args.batch_size or int(cfg.trainer.batch_size)
    rt = runtime(cfg.trainer, cpus)
    splits = build_splits(cfg.data, cfg.paths, task="target")
    torch.manual_seed(0)
    model = models.create(cfg.model, splits.num_classes).to(rt.device)
    rt.channels_last = use_channels_last(cfg.trainer, model, rt)
    memory = torch.channels_last if rt.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    mean, std = models.normalisation(model, cfg.model)
    per_image, finish = build_pipeline(cfg.aug, mean=mean, std=std, size=int(cfg.model.img_size), raw_size=splits.image_size, train=True)
    train = transformed(ConcatDataset([splits.train] * args.repeat), per_image)
    optimizer = build_optimizer(model, cfg.optim)
    net = compile_model(model, args.compile)
    loader = train_loader(train, batch_size, rt, seed=0)

    # bare loop inputs: the same images, normalised once up front, on the device
    x_all = finish(torch.stack([train[i][0] for i in range(len(train))]).to(rt.device)).contiguous(memory_format=memory)
    y_all = torch.tensor([train[i][1] for i in range(len(train))], device=rt.device)
    torch.manual_seed(0)
    bare_model = models.create(cfg.model, splits.num_classes).to(rt.device).to(memory_format=memory)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=float(OmegaConf.select(cfg, "optim.lr")))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if rt.bf16 else contextlib.nullcontext

    def sync() -> None:
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)

    def bare_epoch(seed: int) -> None:
        bare_model.train()
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed)).to(rt.device)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            with autocast():
                loss = F.cross_entropy(bare_model(x_all[idx]), y_all[idx])
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    def wdiv_epoch(seed: int) -> None:
        loader.sampler.set_epoch(seed)
        train_epoch(net, loader, optimizer, rt, lr_at=lambda s: 1.0, step=0, desc="wdiv", finish=finish)

    wdiv_epoch(0)  # warm-up both (workers start, kernels compile / autotune)
    bare_epoch(0)
    t_wdiv = t_bare = 0.0
    for r in range(args.rounds):  # alternate which loop goes first, to cancel order effects
        for name in (("wdiv", "bare") if r % 2 == 0 else ("bare", "wdiv")):
            sync()
            t0 = time.perf_counter()
            (wdiv_epoch if name == "wdiv" else bare_epoch)(r + 1)
            sync()
            dt = time.perf_counter() - t0
            if name == "wdiv":
                t_wdiv += dt
            else:
                t_bare += dt
    n = len(train) * args.rounds
    return {"model": args.model, "device": str(rt.device), "images": len(train), "batch_size": batch_size, "workers": rt.num_workers,
            "bf16": rt.bf16, "wdiv": n / t_wdiv, "bare": n / t_bare, "ratio": t_bare / t_wdiv}


def main(argv=None) -> None:
    from wdiv.cpus import available_cpus

    args = parse_args(argv)
    r = compare(args, available_cpus())
    print(f"model {r['model']} on {r['device']}, {r['images']} images x {args.rounds} epochs, batch {r['batch_size']}, "
          f"{r['workers']} worker(s), bf16 {r['bf16']}, {args.threads} thread(s)")
    print(f"wdiv loop: {r['wdiv']:.0f} img/s   bare PyTorch loop: {r['bare']:.0f} img/s")
    print(f"ratio wdiv/bare: {r['ratio']:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
