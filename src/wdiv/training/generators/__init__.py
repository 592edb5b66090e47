"""Synthetic-image generators behind one interface (see :class:`Generator`).

* ``pca_gmm``: offline, CPU, seconds: class-conditional Gaussian mixtures in PCA pixel space,
  fitted on the real training split (the embedded default's generator);
* ``folder``: pre-generated images in an ImageFolder layout (``<root>/<class>/*.png``);
* ``stable_diffusion``: diffusers text-to-image with one prompt per class (extra ``gen``, GPU).
"""

from wdiv.training.generators.base import Generator
from wdiv.training.generators.cache import cached_generate
from wdiv.training.generators.folder import FolderGenerator, write_image_folder
from wdiv.training.generators.offline import PcaGmmGenerator
from wdiv.training.generators.registry import GENERATORS, make_generator
from wdiv.training.generators.stable_diffusion import StableDiffusionGenerator

__all__ = [
    "Generator",
    "GENERATORS",
    "make_generator",
    "cached_generate",
    "FolderGenerator",
    "write_image_folder",
    "PcaGmmGenerator",
    "StableDiffusionGenerator",
]
