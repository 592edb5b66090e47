"""The analysis options, in one typed place shared by the Python API and the CLI.

Defaults are WeightWatcher 0.7.7's, except where the study needs more (mp_fit on: the MP
bulk edge, spikes and soft rank are part of the reported metric set).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field

from wdiv.errors import ConfigError

from .farms import DEFAULT_PRESET, PRESETS, XMIN_RULES, FarmsSettings

FITS = ("ks", "hill", "powerlaw")
FIX_FINGERS = (None, "clip_xmax")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class FarmsOptions:
    """FARMS as its reference computes it (wdiv.spectral.farms): a named experiment setting
    (preset, default "imagecls") and the values given explicitly over it."""

    preset: str | None = None  # a key of farms.PRESETS; None = farms.DEFAULT_PRESET
    window: int | None = None  # m: window rows
    windows_per_dim: int | None = None  # ops: window starts per dimension
    aspect_ratio: float | None = None  # Q: window columns / rows
    xmin: str | None = None  # median | peak | ks (WeightWatcher's KS scan)

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"farms_preset: must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        for name in ("window", "windows_per_dim"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
                raise ConfigError(f"farms_{name}: must be an integer >= 1, got {v!r}")
        r = self.aspect_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0):
            raise ConfigError(f"farms_aspect_ratio: must be a finite number > 0 (window columns / rows), got {r!r}")
        if self.xmin is not None and self.xmin not in XMIN_RULES:
            raise ConfigError(f"farms_xmin: must be one of {', '.join(XMIN_RULES)}, got {self.xmin!r}")
        full = self.settings()
        if int(full.window * full.aspect_ratio) < 1:
            raise ConfigError(f"farms_aspect_ratio: windows of {full.window} rows x {full.aspect_ratio} would have no "
                              "column (floor(m Q) < 1)")

    def resolved(self) -> dict:
        """These options with the preset named and its values filled in (FarmsOptions(**resolved())
        gives the same settings())."""
        full = self.settings()
        return {"preset": self.preset or DEFAULT_PRESET, **{k: getattr(full, k) for k in
                                                           ("window", "windows_per_dim", "aspect_ratio", "xmin")}}

    def settings(self) -> FarmsSettings:
        """The complete procedure: the preset with the explicit values put over it."""
        given = {k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None}
        return dataclasses.replace(PRESETS[self.preset or DEFAULT_PRESET], **given)


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
        """Every value checked here, before any file is read; ConfigError('<field>: why')."""
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise ConfigError(f"{name}: not a valid regular expression ({exc}): {pattern!r}") from None
        for name, low in (("min_evals", 0), ("max_evals", 1), ("max_N", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ConfigError(f"{name}: must be an integer >= {low}, got {v!r}")
        if self.max_evals < self.min_evals:
            raise ConfigError(f"max_evals: {self.max_evals} is below min_evals {self.min_evals}")
        if isinstance(self.xmax, float) and not (math.isfinite(self.xmax) and self.xmax > 0):
            raise ConfigError(f"xmax: a float cut must be a finite eigenvalue > 0, got {self.xmax!r}")
        if isinstance(self.xmax, str) and self.xmax != "force":
            raise ConfigError(f"xmax: must be an integer, a float or 'force', got {self.xmax!r}")
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            raise ConfigError(f"device: must be cpu, cuda or cuda:K, got {self.device!r}")
        if self.fit not in FITS:
            raise ConfigError(f"fit: must be one of {FITS}, got {self.fit!r}")
        if self.fix_fingers not in FIX_FINGERS:
            raise ConfigError(f"fix_fingers: must be one of {FIX_FINGERS}, got {self.fix_fingers!r}")
        if self.fix_fingers == "clip_xmax" and self.fit != "ks":
            raise ConfigError("fix_fingers: 'clip_xmax' needs fit 'ks'")

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
        # FARMS as resolved (the preset named, its values filled in), and only when it is on: the same
        # procedure asked for two ways is one fingerprint, and options that change nothing change none
        d["farms_options"] = self.farms_options.resolved() if self.farms else None
        return d
