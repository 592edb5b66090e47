"""The generator registry: ``synth.generator.name`` -> the class that makes those images.

It sits above every generator module (each imports only :mod:`.base`), so adding a generator
is one import and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wdiv.errors import ConfigError
from wdiv.training.generators.base import Generator
from wdiv.training.generators.folder import FolderGenerator
from wdiv.training.generators.offline import PcaGmmGenerator
from wdiv.training.generators.stable_diffusion import StableDiffusionGenerator

GENERATORS: dict[str, type[Generator]] = {g.name: g for g in (PcaGmmGenerator, FolderGenerator, StableDiffusionGenerator)}


def make_generator(cfg: Mapping[str, Any], **kwargs: Any) -> Generator:
    """Build the generator named by ``cfg['name']`` (``synth.generator.name``)."""
    name = cfg.get("name")
    if name not in GENERATORS:
        raise ConfigError(f"synth.generator.name: unknown generator {name!r} (known: {', '.join(GENERATORS)})")
    return GENERATORS[name](cfg, **kwargs)
