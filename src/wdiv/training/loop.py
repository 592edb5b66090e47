"""The training loop shared by fine-tuning and by building the builtin pretrained checkpoints.

Randomness is a function of (seed, epoch, sample), never of how the data was loaded:

* the training order of epoch e is a permutation drawn from ``epoch_seed(seed, e)``;
* every training sample is produced (augmented) with the global torch RNG seeded from
  ``sample_seed(epoch_seed(seed, e), index)`` (:class:`SeededItems`), in whichever process
  loads it, so the weights are the same with 0 or N DataLoader workers;
* the global torch RNG of the training process (dropout masks) is reseeded at the start of
  every epoch.

So a run resumed after epoch k replays epochs k+1.. exactly as an uninterrupted run would, and
the DataLoader (and its worker processes) can be built once per run: :class:`EpochSampler`
is told the epoch (``set_epoch``) and sends (sample seed, index) pairs to the workers.

Throughput: pinned host memory and non-blocking copies on CUDA; the loss and accuracy of an
epoch are summed on the device and read once at its end, so a step never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

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
    channels_last: bool = False  # CNNs on CUDA: NHWC activations for the tensor cores

    def autocast(self):
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Host batch -> device, asynchronously from pinned memory (a no-op copy on CPU)."""
        return batch.to(self.device, non_blocking=True)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images


@dataclass
class Schedule:
    """Epoch count, batch size and lr schedule of one training phase."""

    epochs: int
    batch_size: int
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    stop_after_epoch: int | None = None  # test hook: checkpoint, then stop as if killed
    eval_batch_size: int = 256  # trainer.eval_batch_size: validation batches


@dataclass
class Progress:
    """What has been done so far (restored from a checkpoint on resume)."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)


class StopRequested(Exception):
    """Raised after the checkpoint of ``stop_after_epoch`` (simulates an interruption)."""


MODULUS = 2**63 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + epoch + 1) % MODULUS


def sample_seed(epoch_seed_: int, index: int) -> int:
    """The seed sample ``index`` is drawn with in the epoch of ``epoch_seed_``."""
    return (int(epoch_seed_) * 2_654_435_761 + int(index) + 1) % MODULUS


class EpochSampler(Sampler):
    """Each index once per epoch as ``(sample seed, index)``; shuffled from (seed, epoch).

    ``set_epoch`` before iterating: one sampler (and so one DataLoader with persistent
    workers) serves the whole run.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        es = epoch_seed(self.seed, self.epoch)
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(es)).tolist()
        else:
            order = range(self.n)
        return iter([(sample_seed(es, i), i) for i in order])


class SeededItems(Dataset):
    """``dataset[index]`` computed under the global torch RNG seeded with the sample's seed.

    Augmentation (torchvision, EDA) draws from the global RNG; seeding it per sample makes the
    draw independent of the worker and the order, and restoring it afterwards leaves the
    caller's stream (dropout, in the training process) untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        seed, index = key
        cpu = torch.default_generator  # CPU only: torch.manual_seed also seeds every GPU (~60 us)
        state = cpu.get_state()
        cpu.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            cpu.set_state(state)


def train_loader(dataset, batch_size: int, rt: Runtime, *, seed: int) -> DataLoader:
    """The run's one training DataLoader; ``loader.sampler.set_epoch(e)`` before each epoch."""
    return DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed, shuffle=True),
        num_workers=rt.num_workers,
        pin_memory=rt.pin_memory,
        persistent_workers=rt.num_workers > 0,
        generator=torch.Generator(),  # DataLoader's own seed draw: never from the global RNG
        drop_last=False,
    )


def eval_loader(dataset, batch_size: int, rt: Runtime, *, persistent: bool = False) -> DataLoader:
    """In order, no augmentation; ``persistent`` keeps the workers for a loader used every epoch."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=rt.num_workers,
        pin_memory=rt.pin_memory,
        persistent_workers=persistent and rt.num_workers > 0,
        drop_last=False,
    )


def _identity(x):
    return x


def train_epoch(model, loader, optimizer, rt: Runtime, *, lr_at: Callable[[int], float], step: int, desc: str = "train", finish: Callable = _identity):
    """One pass over ``loader``; ``finish`` normalises each batch; returns (stats dict, next step).

    Loss and correct counts are summed on the device: the host reads them once, at the end.
    """
    model.train()
    base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
    total_loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    seen = 0
    start = time.perf_counter()
    batches = iter(loader)
    if rt.progress:  # wrap the iterator, not the loader: tqdm(loader) would start it again
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(loader), desc=desc, leave=False, dynamic_ncols=True)
    for images, labels in batches:
        interrupts.check()  # SIGINT/SIGTERM: stop here; the last epoch's checkpoint is the resume point
        images = rt.layout(finish(rt.to_device(images)))
        labels = rt.to_device(labels)
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
        total_loss += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += n
        step += 1
    loss_sum, n_correct = float(total_loss), int(correct)  # the epoch's one wait for the device
    seconds = time.perf_counter() - start
    stats = {"train_loss": loss_sum / max(seen, 1), "train_acc": n_correct / max(seen, 1), "lr": base_lrs[0] * lr_at(step - 1), "epoch_time_s": seconds, "images_per_s": seen / max(seconds, 1e-9)}
    return stats, step


@torch.no_grad()
def predict(model, loader, rt: Runtime, finish: Callable = _identity) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, cpu) and labels of ``loader``; one copy back to the host at the end."""
    model.eval()
    outs, labels = [], []
    for images, target in loader:
        interrupts.check()
        with rt.autocast():
            logits = model(rt.layout(finish(rt.to_device(images))))
        outs.append(logits.float())
        labels.append(target)
    return torch.cat(outs).cpu(), torch.cat(labels)


def fit(model, optimizer, train_set, val_set, sched: Schedule, rt: Runtime, *, seed: int, progress: Progress | None = None, on_epoch_end: Callable[[Progress], None] | None = None, desc: str = "", finish: Callable = _identity) -> Progress:
    """Train for ``sched.epochs`` epochs, continuing from ``progress``; ``on_epoch_end`` checkpoints.

    The training and validation loaders are built once (their workers persist across epochs).
    """
    progress = progress or Progress()
    loader = train_loader(train_set, sched.batch_size, rt, seed=seed)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * sched.epochs
    warmup = int(round(sched.warmup_epochs * steps_per_epoch))
    lr_at = lambda s: lr_factor(s, total, sched.lr_schedule, warmup)  # noqa: E731
    val_loader = eval_loader(val_set, sched.eval_batch_size, rt, persistent=True) if val_set is not None and len(val_set) else None
    for epoch in range(progress.epoch, sched.epochs):
        torch.manual_seed(epoch_seed(seed, epoch))
        loader.sampler.set_epoch(epoch)
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
    """{name: scores} for each dataset (``finish`` normalises each batch); ECE on every set.

    All sets go through one loader, so its workers start once however many sets there are
    (CIFAR-C alone is 95); each set's scores come from its own slice of the predictions."""
    names = list(datasets)
    empty = [name for name in names if not len(datasets[name])]
    if empty:
        raise ValueError(f"evaluation set {empty[0]!r} has no examples")
    if not names:
        return {}
    logits, labels = predict(model, eval_loader(ConcatDataset([datasets[n] for n in names]), batch_size, rt), rt,
                             finish or _identity)
    results, start = {}, 0
    for name in names:
        stop = start + len(datasets[name])
        results[name] = scores(logits[start:stop], labels[start:stop], with_ece=True)
        start = stop
    return results


def compile_model(model: torch.nn.Module, enabled: bool, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile`` the forward (trainer.compile); the parameters stay the original module's,
    so the optimizer, checkpoints and state-dict keys are unchanged (save the original)."""
    if not enabled:
        return model
    log.info("torch.compile(backend=%s): the first steps compile", backend)
    return torch.compile(model, backend=backend)
