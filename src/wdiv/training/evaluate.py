"""Scores of a classifier on a labelled set: accuracy, cross-entropy, ECE (15 bins)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


def scores(logits: torch.Tensor, labels: torch.Tensor, *, with_ece: bool = False) -> dict[str, float]:
    out = {
        "acc": float((logits.argmax(1) == labels).float().mean()),
        "loss": float(F.cross_entropy(logits.double(), labels)),
    }
    if with_ece:
        from torchmetrics.functional.classification import multiclass_calibration_error

        probs = logits.double().softmax(1)
        out["ece"] = float(multiclass_calibration_error(probs, labels, num_classes=logits.shape[1], n_bins=ECE_BINS, norm="l1"))
    return out


def evaluate(model, datasets: dict, rt, *, batch_size: int = 256, finish=None) -> dict[str, dict[str, float]]:
    """{name: scores} for each dataset (``finish`` normalises each batch); ECE on every set."""
    from wdiv.training.loop import _identity, make_loader, predict

    results = {}
    for name, dataset in datasets.items():
        logits, labels = predict(model, make_loader(dataset, batch_size, rt, shuffle=False), rt, finish or _identity)
        results[name] = scores(logits, labels, with_ece=True)
    return results
