"""The random-matrix instrument: weights in, per-layer spectral metrics out.

Pure numerics: knows nothing of Hydra or timm.
"""

from .api import analyze

__all__ = ["analyze"]
