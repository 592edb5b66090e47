"""timm models with a fresh head, dropout where the config says, and weights from a file.

Dropout placement (``model.dropout_at``):
  head   - timm's ``drop_rate``: dropout on the pooled features right before the linear head
           (the paper's placement);
  blocks - dropout on the output of every residual/transformer block (forward hooks, so the
           state-dict keys stay those of the plain model);
  both   - both of the above.
timm's own in-block rates stay available through the model kwargs, e.g.
``+model.kwargs.proj_drop_rate=0.1`` (or attn_drop_rate, drop_path_rate).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wdiv.errors import ConfigError
from wdiv.training import text
from wdiv.training.text import models as text_models

log = logging.getLogger(__name__)

BLOCK_CLASSES = ("Block", "BasicBlock", "Bottleneck", "BottleneckBlock", "ResidualAttentionBlock")


def create(model_cfg, num_classes: int) -> nn.Module:
    """A randomly initialised timm model (or text classifier, see text.models) for ``num_classes``."""
    if text.is_text_model(model_cfg):
        return text_models.create(model_cfg, num_classes)
    import timm

    name = str(model_cfg.name)
    if not timm.is_model(name):
        raise ConfigError(f"model.name: unknown timm model {name!r}")
    p = float(model_cfg.get("dropout", 0.0))
    where = str(model_cfg.get("dropout_at", "head"))
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"model.dropout: {p} is outside [0, 1)")
    if where not in ("head", "blocks", "both"):
        raise ConfigError(f"model.dropout_at: {where!r} is not one of head, blocks, both")
    kwargs = dict(model_cfg.get("kwargs") or {})
    if where in ("head", "both"):
        kwargs["drop_rate"] = p
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.kwargs: {err}") from None
    if where in ("blocks", "both") and p > 0:
        n = add_block_dropout(model, p)
        log.info("dropout %.2f after each of %d blocks", p, n)
    return model


def add_block_dropout(model: nn.Module, p: float) -> int:
    """Apply dropout(p) to the output of every block (train mode only); returns the count."""

    def hook(module, _inputs, output):
        return F.dropout(output, p, module.training) if isinstance(output, torch.Tensor) else output

    blocks = [m for m in model.modules() if type(m).__name__ in BLOCK_CLASSES]
    if not blocks and any(True for _ in model.parameters()):
        raise ConfigError(f"model.dropout_at: no blocks ({', '.join(BLOCK_CLASSES)}) found in {type(model).__name__} for block dropout")
    for block in blocks:
        block.register_forward_hook(hook)
    return len(blocks)


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classification head (``head``, ``fc``, ...)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return name if isinstance(name, str) else name[0]


def load_backbone(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight but the head; the head keeps its fresh initialisation."""
    head = classifier_prefix(model)
    backbone = {k: v for k, v in weights.items() if not (k == head or k.startswith(head + "."))}
    try:
        missing, _unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"model.pretrained: weights in {source} do not fit the model ({first[-1].strip() if first else err})") from None
    missing = [k for k in missing if not (k == head or k.startswith(head + "."))]
    if missing:
        raise ConfigError(f"model.pretrained: {source} lacks {len(missing)} model weights (e.g. {missing[0]})")


def normalisation(model: nn.Module, model_cfg) -> tuple[list[float], list[float]]:
    """The one (mean, std) of this model: from the config, else from timm's pretrained_cfg.

    (None, None) for a text model: token batches have no pixel normalisation (see augment.Finish).
    """
    if text.is_text_model(model_cfg):
        return None, None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = model_cfg.get("mean") or cfg.get("mean") or (0.5, 0.5, 0.5)
    std = model_cfg.get("std") or cfg.get("std") or (0.5, 0.5, 0.5)
    return [float(m) for m in mean], [float(s) for s in std]


def local_weights_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {spec!r} is neither builtin, hub, none nor an existing weights file")
    return path
