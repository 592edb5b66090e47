"""The random-matrix instrument: weights in, per-layer spectral metrics out.

Pure numerics: knows nothing of Hydra, timm or training.
"""
