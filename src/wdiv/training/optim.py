"""Optimizers and learning-rate schedules.

``optim.name``: ``adam`` applies weight decay as coupled L2 (added to the gradient, as in the
paper), ``adamw`` decouples it, ``sgd`` is plain momentum SGD with L2. Norm weights, biases and
position/class tokens get no decay (timm's ``param_groups_weight_decay``) unless
``optim.decay_norm_bias=true``.
"""

from __future__ import annotations

import math

import torch

from wdiv.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_bias: bool):
    if decay_norm_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def build_optimizer(model: torch.nn.Module, optim_cfg) -> torch.optim.Optimizer:
    name = str(optim_cfg.name)
    lr, wd = float(optim_cfg.lr), float(optim_cfg.weight_decay)
    groups = param_groups(model, wd, bool(optim_cfg.get("decay_norm_bias", False)))
    betas = tuple(optim_cfg.get("betas", (0.9, 0.999)))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=float(optim_cfg.eps))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=float(optim_cfg.eps))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg.get("momentum", 0.9)))
    raise ConfigError(f"optim.name: unknown optimizer {name!r} ({', '.join(OPTIMIZERS)})")


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Multiplier of the base lr at ``step`` (a pure function of the step, so resume is exact)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / span)))
    raise ConfigError(f"optim.schedule: unknown schedule {schedule!r} (constant, cosine)")
