"""Weights during training: ``trainer.snapshot_every=K`` keeps the model after every K epochs.

``snapshots/epoch<E>/model.safetensors`` in the run dir, written atomically before the epoch's
resume state (so a run killed between the two replays that epoch and writes the same bytes).
Epoch 0 is the starting checkpoint: run.json ``snapshots`` refers to ``pretrained`` for it
rather than copying it. Each snapshot folder is a checkpoint ``wdiv.analyze --snapshots``
analyses in place.
"""

from __future__ import annotations

from pathlib import Path

from wdiv import records

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
        if path.is_file():
            entries.append({"epoch": epoch, "path": relative_path(epoch), **records.describe(path)})
    return {"every": int(every), "epochs": entries}


def damaged(out_dir: Path, info: dict) -> str | None:
    """Why a recorded snapshot may not be used (naming the file), or None."""
    for entry in (info.get("snapshots") or {}).get("epochs") or []:
        if "path" not in entry:
            continue
        reason = records.check(Path(out_dir) / entry["path"], entry)
        if reason:
            return f"{Path(out_dir) / entry['path']}: {reason}"
    return None
