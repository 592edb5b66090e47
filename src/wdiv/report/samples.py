"""What one sample is, under each scheme of the report.

Seeds as samples (primary): a run's sample is its layer-mean D; a category pools its
configurations per seed (mean over that seed's runs), so n is the number of seeds.
Layers as samples (the published scheme, exactly): per layer, D averaged over seeds within each
configuration (level, and variant for an arm pool), then over the category's configurations, so
there is one sample per layer.
"""

from __future__ import annotations

import pandas as pd

from wdiv.report.cells import label
from wdiv.report.deltas import LAYER_KEYS

CONFIG_KEYS = ("variant", "level")


def seed_values(runs: pd.DataFrame, column: str) -> pd.Series:
    """Per seed, the mean of `column` over the given runs (one value per seed, NaN-free)."""
    return runs.groupby("seed")[column].mean().dropna()


def layer_samples(layers: pd.DataFrame, metric: str, config: tuple[str, ...] = CONFIG_KEYS) -> pd.Series:
    """The published per-layer samples of the given rows (one category of one cell, or one level).

    Seeds are averaged within each configuration first, then configurations per layer.
    """
    col = f"D_{metric}"
    keys = [f"_{k}" for k in config]
    frame = layers.assign(**{f"_{k}": layers[k].map(label) for k in config})
    per_config = frame.groupby([*keys, *LAYER_KEYS], sort=False)[col].mean()
    return per_config.groupby(level=list(LAYER_KEYS), sort=False).mean().dropna()
