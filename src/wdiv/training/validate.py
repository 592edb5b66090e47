"""Early config checks, so a bad value fails in a second with one line naming its key.

Keys that take one of a few names (optim.name, optim.schedule, model.dropout_at, trainer.precision,
synth.mode) are checked earlier still, while Hydra composes the config, by the schemas of
:mod:`wdiv.training.config_schema`; this module holds every other check: numbers and ranges,
keys that must agree with each other, paths that must exist.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from wdiv.errors import ConfigError

log = logging.getLogger(__name__)
LR_WARN_RATIO = 10.0  # an lr this many times the model's recipe is very likely a mistake

ARMS = ("baseline", "dropout", "weight_decay", "augment", "synthetic")
NUMERIC_ARMS = ("dropout", "weight_decay", "synthetic")

# Each arm's knob: the key its exp file sets from ``level`` (``knob: ${level}``). A command-line
# override of the knob replaces that interpolation, so the run would train one value and be
# labelled (level, run dir, run.json, log) with another: such a run is refused, see check_label.
KNOBS = {"dropout": "model.dropout", "weight_decay": "optim.weight_decay", "augment": "aug.policy", "synthetic": "synth.p"}
# What every arm's regulariser is when it is off (the baseline recipe); an arm may only turn on its own.
OFF = {"model.dropout": ("dropout", 0.0), "optim.weight_decay": ("weight_decay", 0.0), "aug.policy": ("augment", "none"), "synth.mode": ("synthetic", "none")}


def _number(key: str, value, low=None, high=None, *, high_open=False, integer=False):
    try:
        x = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a number") from None
    if integer and float(value) != x:
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if low is not None and x < low:
        raise ConfigError(f"{key}: {value!r} is below {low}")
    if high is not None and (x >= high if high_open else x > high):
        raise ConfigError(f"{key}: {value!r} is outside [{low}, {high}{')' if high_open else ']'}")
    return x


def _warn_lr(cfg) -> None:
    """A learning rate far above the model's recipe (model.finetune.lr) is logged, naming the key."""
    finetune = cfg.model.get("finetune") if hasattr(cfg.model, "get") else None
    recipe_lr = finetune.get("lr") if finetune is not None else None
    if recipe_lr is None or float(recipe_lr) <= 0:
        return
    lr = float(cfg.optim.lr)
    if lr > LR_WARN_RATIO * float(recipe_lr):
        log.warning("optim.lr=%g is %.0fx the %s recipe's lr %g (model.finetune.lr): full fine-tuning at that rate "
                    "can wreck the pretrained features", lr, lr / float(recipe_lr), cfg.model.id, float(recipe_lr))


def validate(cfg) -> None:
    from wdiv.training.augment import augment_at, parse_policy
    from wdiv.training.text import is_text
    from wdiv.training.text.checks import check_text

    if cfg.arm not in ARMS:
        raise ConfigError(f"arm: unknown arm {cfg.arm!r} (known: {', '.join(ARMS)})")
    if cfg.arm in NUMERIC_ARMS:
        _number("level", cfg.level, 0)
    _number("seed", cfg.seed, 0, integer=True)
    _number("model.dropout", cfg.model.dropout, 0.0, 1.0, high_open=True)
    _number("optim.weight_decay", cfg.optim.weight_decay, 0.0)
    _number("optim.lr", cfg.optim.lr, 0.0)
    _warn_lr(cfg)
    _number("trainer.epochs", cfg.trainer.epochs, 1, integer=True)
    _number("trainer.batch_size", cfg.trainer.batch_size, 1, integer=True)
    _number("trainer.threads", cfg.trainer.threads, 0, integer=True)
    _check_device(cfg.trainer.device)
    if is_text(cfg):  # text model and data: their own checks (aug.policy is EDA there)
        check_text(cfg)
    else:
        parse_policy(cfg.aug.policy)
        augment_at(cfg.aug)
        _check_data(cfg.data)
        _check_model(cfg.model)
    if str(cfg.model.pretrained) == "builtin" and not cfg.data.get("source_classes"):
        raise ConfigError(f"model.pretrained: builtin needs a source task (data.source_classes) and {cfg.data.name} has none; use hub, none or a weights file")
    check_label(cfg)


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return float(a) == float(b)  # "5e-5" on the command line and 5.0e-5 in the grid
    except (TypeError, ValueError):
        return str(a) == str(b)


def _show(v) -> str:
    return "null" if v is None else str(v)


def check_label(cfg) -> None:
    """A run is labelled by what it trains: the arm's knob equals ``level``, every other arm is off.

    ``+exp=dropout model.dropout=0.5`` trains dropout 0.5 while level (and so the run dir
    p0.1, run.json and the log) would say 0.1: refused, naming the ``level=`` that says it.
    ``+exp=baseline aug.policy=flip`` would be a baseline with augmentation: refused too.
    """
    arm = str(cfg.arm)
    level = cfg.get("level")
    knob = KNOBS.get(arm)
    if knob is not None:
        value = _get(cfg, knob)
        if not _same(value, level):
            raise ConfigError(f"{knob}={_show(value)} disagrees with level={_show(level)}: set level={_show(value)} instead (the {arm} arm's level sets {knob})")
    if arm == "synthetic" and str(_get(cfg, "synth.mode")) == "none":
        raise ConfigError("synth.mode=none: the synthetic arm mixes in synthetic data (replace or add, synth.filter true or false; synth=offline or synth=folder)")
    for key, (owner, off) in OFF.items():
        if owner == arm:
            continue
        value = _get(cfg, key)
        if value is not None and not _same(value, off):
            raise ConfigError(f"{key}={_show(value)} is the {owner} arm's knob, but this run is labelled arm={arm}" + ("" if level is None else f" level={level}") + f": use +exp={owner} level={_show(value)}, or leave {key} at {off}")


def _check_data(data) -> None:
    if data.name in ("cifar10", "cifar100") and not data.download:
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist (set data.download=true to fetch {data.name})")
    if data.name in ("domainnet", "office_home", "stanford_cars"):
        root = Path(str(data.root)).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root: {root} does not exist ({data.name} is read from local files)")
        if data.name != "stanford_cars" and not (root / str(data.train_domain)).is_dir():
            domains = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ConfigError(f"data.train_domain: {data.train_domain!r} is not a domain folder of {root} (found: {', '.join(domains) or 'none'})")
    if data.get("cifar_c_root") and not Path(str(data.cifar_c_root)).expanduser().is_dir():
        raise ConfigError(f"data.cifar_c_root: directory {data.cifar_c_root} does not exist")
    if data.name == "imagefolder":
        for key in ("train_root", "test_root"):
            value = data.get(key)
            if value is None or not Path(str(value)).expanduser().is_dir():
                raise ConfigError(f"data.{key}: directory {value} does not exist")
        for name, root in (data.get("ood_roots") or {}).items():
            if not Path(str(root)).expanduser().is_dir():
                raise ConfigError(f"data.ood_roots.{name}: directory {root} does not exist")


def _check_model(model) -> None:
    import timm

    if not timm.is_model(str(model.name)):
        raise ConfigError(f"model.name: unknown timm model {model.name!r}")
    spec = str(model.pretrained)
    if spec not in ("builtin", "hub", "none") and not Path(spec).expanduser().is_file():
        raise ConfigError(f"model.pretrained: {spec!r} is neither builtin, hub, none nor an existing weights file")


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(device) -> None:
    """trainer.device: auto, cpu, cuda or cuda:N (an open set of names, so no schema enum)."""
    if not DEVICE.match(str(device)):
        raise ConfigError(f"trainer.device: {device!r} is not auto, cpu, cuda or cuda:N")
