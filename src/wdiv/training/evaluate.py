"""Scores of a classifier on a labelled set: accuracy, cross-entropy, ECE (15 bins).

Torch only; the loop (wdiv.training.loop.evaluate) predicts and calls these, never the reverse.
"""

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
        out["ece"] = float(calibration_error(logits.double().softmax(1), labels, ECE_BINS))
    return out


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """L1 expected calibration error of the top-1 prediction over ``n_bins`` equal-width bins.

    The same arithmetic as torchmetrics' ``multiclass_calibration_error(norm="l1")`` (float32
    confidences, ``bucketize(right=True)`` bins; tests check they agree bit for bit) without
    importing torchmetrics, which pulls in scipy.signal and transformers: seconds at every start.
    """
    confidences, predictions = probs.max(dim=1)
    confidences = confidences.float()
    accuracies = predictions.eq(labels).float()
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype)
    index = torch.bucketize(confidences, bounds, right=True) - 1
    count = torch.zeros(len(bounds)).scatter_add_(0, index, torch.ones_like(confidences))
    conf_bin = torch.nan_to_num(torch.zeros(len(bounds)).scatter_add_(0, index, confidences) / count)
    acc_bin = torch.nan_to_num(torch.zeros(len(bounds)).scatter_add_(0, index, accuracies) / count)
    return torch.sum(torch.abs(acc_bin - conf_bin) * (count / count.sum()))
