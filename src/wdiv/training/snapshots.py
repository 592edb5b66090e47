"""Weights during training: ``trainer.snapshot_every=K`` keeps the model after every K epochs.

``snapshots/epoch<E>/model.safetensors`` in the run dir, written atomically before the epoch's
resume state (so a run killed between the two replays that epoch and writes the same bytes).
Epoch 0 is the starting checkpoint: run.json ``snapshots`` refers to ``pretrained`` for it
rather than copying it. Each snapshot folder is a checkpoint ``wdiv.analyze --snapshots``
analyses in place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from wdiv import records

log = logging.getLogger(__name__)

DIR = "snapshots"
WEIGHTS = "model.safetensors"


def relative_path(epoch: int) -> str:
    """The snapshot's weights, relative to the run dir."""
    return f"{DIR}/epoch{int(epoch)}/{WEIGHTS}"


def due(epoch: int, every: int) -> bool:
    """A snapshot is kept after this (1-based) epoch."""
    return every > 0 and epoch > 0 and epoch % every == 0


def describe(out_dir: Path, every: int, epochs_done: int) -> dict:
    """run.json ``snapshots``: the schedule and one entry per epoch, with the files' records.

    Epoch 0 is ``{"epoch": 0, "weights": "pretrained"}`` (run.json ``pretrained`` says which).
    Only snapshots that exist are listed: a run resumed with another ``snapshot_every`` keeps
    what each part of it wrote.
    """
    entries = [{"epoch": 0, "weights": "pretrained"}]
    for epoch in range(1, epochs_done + 1):
        path = Path(out_dir) / relative_path(epoch)
        if not path.is_file():
            continue
        try:
            entries.append({"epoch": epoch, "path": relative_path(epoch), **records.describe(path)})
        except ValueError as err:  # cut short by a crash outside this run's atomic writes, say
            _drop(path, str(err))
    return {"every": int(every), "epochs": entries}


def repair(out_dir: Path, info: dict) -> bool:
    """Drop the recorded snapshots that fail their record (naming each); True when any did.

    A snapshot cannot be rewritten from the final resume state, and the run's final weights do
    not depend on it, so the run stays complete without that epoch (its trajectory skips it);
    ``trainer.resume=false`` retrains the run to write it again.
    """
    snaps = info.get("snapshots") or {}
    bad = False
    for entry in snaps.get("epochs") or []:
        if "path" not in entry:
            continue
        path = Path(out_dir) / entry["path"]
        reason = records.check(path, entry)
        if reason:
            _drop(path, reason)
            bad = True
    if bad:
        info["snapshots"] = describe(out_dir, int(snaps.get("every") or 0), int(info.get("epochs_done") or 0))
    return bad


def _drop(path: Path, reason: str) -> None:
    log.warning("%s: %s; snapshot removed (trainer.resume=false retrains the run to write it again)", path, reason)
    path.unlink(missing_ok=True)
