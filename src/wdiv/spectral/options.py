"""The analysis options, in one typed place shared by the Python API and the CLI.

Defaults are WeightWatcher 0.7.7's, except where the study needs more (mp_fit on: the MP
bulk edge, spikes and soft rank are part of the reported metric set).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FITS = ("ks", "hill", "powerlaw")
FIX_FINGERS = (None, "clip_xmax")


@dataclass(frozen=True)
class FarmsOptions:
    """Fixed-aspect-ratio submatrix sampling (Hu et al. 2025); defaults as in the paper."""

    window: int | None = None  # submatrix rows; None = the numerics' default (paper's)
    windows_per_dim: int | None = None
    aspect_ratio: float | None = None

    def kwargs(self) -> dict:
        names = {"window": "window", "windows_per_dim": "windows_per_dim", "aspect_ratio": "aspect_ratio"}
        return {names[k]: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class AnalyzeOptions:
    fit: str = "ks"  # power-law estimator: ks (WeightWatcher's), hill (TempBalance), powerlaw (package)
    xmax: int | float | None = None  # fit upper cut: int k drops the k largest evals, float cuts there
    fix_fingers: str | None = None  # None | "clip_xmax"
    mp_fit: bool = True
    randomize: bool = False  # element-permuted W -> rand_distance, ww_softrank
    seed: int = 0  # seeds the permutation (and FARMS windows): reruns agree
    farms: bool = False
    farms_options: FarmsOptions = field(default_factory=FarmsOptions)
    pool: bool = True  # conv slices pooled into one ESD; False: one row per slice
    include: str | None = None  # regex on longname
    exclude: str | None = None
    min_evals: int = 10
    max_evals: int = 15000
    max_N: int = 50000
    device: str = "cpu"
    batch_bytes: int = 64 << 20  # per batch of same-shape layers: float64 Gram or float32 tensor bytes

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}")
        if self.fix_fingers not in FIX_FINGERS:
            raise ValueError(f"fix_fingers must be one of {FIX_FINGERS}, got {self.fix_fingers!r}")
        if self.fix_fingers == "clip_xmax" and self.fit != "ks":
            raise ValueError("fix_fingers='clip_xmax' needs fit='ks'")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "AnalyzeOptions":
        """Build from keyword options; FARMS window options may be given flat (farms_window=...)."""
        farms = {k[len("farms_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("farms_") and k != "farms_options"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown analyze option(s): {', '.join(sorted(unknown))}")
        if farms:
            kwargs["farms_options"] = FarmsOptions(**farms)
        return cls(**kwargs)

    def fingerprint(self) -> dict:
        """The options that change results (for up-to-date checks of outputs)."""
        d = dataclasses.asdict(self)
        for k in ("device", "batch_bytes"):
            d.pop(k)
        return d
