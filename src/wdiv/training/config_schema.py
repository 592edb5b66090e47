"""Hydra structured-config schemas for the keys that take one of a few names.

Each schema is a dataclass registered in Hydra's ConfigStore as ``<group>/_schema`` and listed
first in the defaults of that group's YAML files, so ``optim.name=bogus`` (or a typo in a YAML
file) fails while Hydra composes the config, naming the key and the allowed values, before any
run starts. Only the enum-valued keys are declared: the schemas extend ``Dict[str, Any]``, so a
group's other keys (which differ between, say, image and text models) stay as the YAML files
say and no key is added to the resolved config (recipe hashes are unchanged). Checks across
keys and against the filesystem live in :mod:`wdiv.training.validate`.

The enums are ``str`` enums whose ``str()`` is the value: code that compares, formats, hashes
or writes these keys sees the same strings as before.

``trainer.device`` is not an enum (``cuda:N`` names any GPU); validate.py checks its form.

:func:`register` stores the schemas and the resolver the YAML files name
(``wdiv_synth_variant``, configs/exp/synthetic.yaml). ``python -m wdiv.train`` calls it, and so
does importing the config package ``wdiv.configs``, which Hydra does when a notebook composes
the packaged configs::

    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="wdiv.configs", version_base=None):
        cfg = compose("train", overrides=["+exp=dropout"])

With ``initialize_config_dir`` (a path, no import) call
``wdiv.training.config_schema.register()`` first, or ``import wdiv.configs``.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Any, Dict


class Choice(str, enum.Enum):
    """A named value of a config key: compares, hashes and prints as its string."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__


OptimName = Choice("OptimName", {v: v for v in ("adam", "adamw", "sgd")})  # wdiv.training.optim.OPTIMIZERS
LrSchedule = Choice("LrSchedule", {v: v for v in ("cosine", "constant")})  # optim.lr_factor
DropoutAt = Choice("DropoutAt", {v: v for v in ("head", "blocks", "both")})
Precision = Choice("Precision", {v: v for v in ("auto", "bf16", "fp32")})
SynthMode = Choice("SynthMode", {v: v for v in ("none", "replace", "add", "filtered")})  # filtered: add + filter (alias)


# Dict[str, Any] bases: the group's other keys are allowed (and stay untyped). OmegaConf marks
# this form deprecated (omegaconf#663) but 2.3, the version hydra-core 1.3 uses, supports it.
@dataclass
class OptimSchema(Dict[str, Any]):
    name: OptimName = OptimName.adam
    schedule: LrSchedule = LrSchedule.cosine


@dataclass
class ModelSchema(Dict[str, Any]):
    dropout_at: DropoutAt = DropoutAt.head


@dataclass
class TrainerSchema(Dict[str, Any]):
    precision: Precision = Precision.auto


@dataclass
class SynthSchema(Dict[str, Any]):
    mode: SynthMode = SynthMode.none


SCHEMAS = {"optim": OptimSchema, "model": ModelSchema, "trainer": TrainerSchema, "synth": SynthSchema}
NAME = "_schema"  # in each group's defaults list: ``- _schema``


def register() -> None:
    """Store the schemas in Hydra's ConfigStore and register the YAML files' resolver (idempotent).

    Called by ``python -m wdiv.train`` and by ``import wdiv.configs``.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from wdiv.variants import variant

    store = ConfigStore.instance()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*subclasses `Dict`.*", category=UserWarning)
        for group, schema in SCHEMAS.items():
            store.store(group=group, name=NAME, node=schema)
    # configs/exp/synthetic.yaml names its run directories by the variant (aliases spelled out)
    OmegaConf.register_new_resolver("wdiv_synth_variant", variant, replace=True)
