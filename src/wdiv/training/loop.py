"""The training loop shared by fine-tuning and by building the builtin pretrained checkpoints.

Randomness is drawn per epoch from (seed, epoch): the shuffling generator and the global torch
RNG (dropout masks, augmentation) are reseeded at the start of every epoch, so a run resumed
after epoch k replays epochs k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wdiv.training import interrupts
from wdiv.training.evaluate import scores
from wdiv.training.optim import lr_factor

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    num_workers: int = 0
    bf16: bool = False
    progress: bool = True

    def autocast(self):
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class Schedule:
    """Epoch count, batch size and lr schedule of one training phase."""

    epochs: int
    batch_size: int
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    stop_after_epoch: int | None = None  # test hook: checkpoint, then stop as if killed


@dataclass
class Progress:
    """What has been done so far (restored from a checkpoint on resume)."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)


class StopRequested(Exception):
    """Raised after the checkpoint of ``stop_after_epoch`` (simulates an interruption)."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch + 1) % (2**63 - 1)


def make_loader(dataset, batch_size: int, rt: Runtime, *, shuffle: bool, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=rt.num_workers,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )


def _identity(x):
    return x


def train_epoch(model, loader, optimizer, rt: Runtime, *, lr_at: Callable[[int], float], step: int, desc: str = "train", finish: Callable = _identity):
    """One pass over ``loader``; ``finish`` normalises each batch; returns (stats dict, next step)."""
    model.train()
    base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
    total_loss = torch.zeros((), dtype=torch.float64)
    correct, seen = 0, 0
    start = time.perf_counter()
    batches = iter(loader)
    if rt.progress:  # wrap the iterator, not the loader: tqdm(loader) draws from its generator
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(loader), desc=desc, leave=False, dynamic_ncols=True)
    for images, labels in batches:
        interrupts.check()  # SIGINT/SIGTERM: stop here; the last epoch's checkpoint is the resume point
        images = finish(images.to(rt.device, non_blocking=True))
        labels = labels.to(rt.device, non_blocking=True)
        factor = lr_at(step)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        with rt.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = labels.shape[0]
        total_loss += loss.detach().double().cpu() * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        step += 1
    seconds = time.perf_counter() - start
    stats = {"train_loss": float(total_loss) / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": base_lrs[0] * lr_at(step - 1), "epoch_time_s": seconds, "images_per_s": seen / max(seconds, 1e-9)}
    return stats, step


@torch.no_grad()
def predict(model, loader, rt: Runtime, finish: Callable = _identity) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, cpu) and labels of ``loader``."""
    model.eval()
    outs, labels = [], []
    for images, target in loader:
        interrupts.check()
        with rt.autocast():
            logits = model(finish(images.to(rt.device, non_blocking=True)))
        outs.append(logits.float().cpu())
        labels.append(target)
    return torch.cat(outs), torch.cat(labels)


def fit(model, optimizer, train_set, val_set, sched: Schedule, rt: Runtime, *, seed: int, progress: Progress | None = None, on_epoch_end: Callable[[Progress], None] | None = None, desc: str = "", finish: Callable = _identity) -> Progress:
    """Train for ``sched.epochs`` epochs, continuing from ``progress``; ``on_epoch_end`` checkpoints."""
    progress = progress or Progress()
    steps_per_epoch = -(-len(train_set) // sched.batch_size)
    total = steps_per_epoch * sched.epochs
    warmup = int(round(sched.warmup_epochs * steps_per_epoch))
    lr_at = lambda s: lr_factor(s, total, sched.lr_schedule, warmup)  # noqa: E731
    val_loader = make_loader(val_set, 256, rt, shuffle=False) if val_set is not None and len(val_set) else None
    for epoch in range(progress.epoch, sched.epochs):
        torch.manual_seed(epoch_seed(seed, epoch))
        loader = make_loader(train_set, sched.batch_size, rt, shuffle=True, seed=epoch_seed(seed, epoch))
        stats, progress.step = train_epoch(model, loader, optimizer, rt, lr_at=lr_at, step=progress.step, desc=f"{desc}epoch {epoch + 1}/{sched.epochs}", finish=finish)
        row = {"epoch": epoch + 1, **stats}
        if val_loader is not None:
            logits, labels = predict(model, val_loader, rt, finish)
            val = scores(logits, labels)
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        progress.history.append(row)
        progress.epoch = epoch + 1
        log.info("%sepoch %d/%d  train_loss %.4f  train_acc %.3f  val_acc %s  (%.1fs, %.0f img/s)", desc, epoch + 1, sched.epochs, row["train_loss"], row["train_acc"], f"{row['val_acc']:.3f}" if "val_acc" in row else "-", row["epoch_time_s"], row["images_per_s"])
        if on_epoch_end is not None:
            on_epoch_end(progress)
        if sched.stop_after_epoch is not None and progress.epoch >= sched.stop_after_epoch and progress.epoch < sched.epochs:
            raise StopRequested(f"stopped after epoch {progress.epoch} (trainer.stop_after_epoch)")
    return progress


def evaluate(model, datasets: dict, rt, *, batch_size: int = 256, finish=None) -> dict[str, dict[str, float]]:
    """{name: scores} for each dataset (``finish`` normalises each batch); ECE on every set."""
    results = {}
    for name, dataset in datasets.items():
        logits, labels = predict(model, make_loader(dataset, batch_size, rt, shuffle=False), rt, finish or _identity)
        results[name] = scores(logits, labels, with_ece=True)
    return results
