"""The synthetic arm's two knobs as one name: ``synth.mode`` (replace | add) x ``synth.filter``.

One place says which variant a config trains, so the run directory (the ``wdiv_synth_variant``
resolver in configs/exp/synthetic.yaml), run.json ``variant``, the mixing code and the report
agree. The vision arm's older third mode, ``filtered``, is an alias for add + filter; the report
reads an older run's variant ``filtered`` as ``add+filter``.
"""

from __future__ import annotations

MODES = ("replace", "add")
ALIASES = {"filtered": ("add", True)}  # the vision arm's former third mode


def canonical(mode, filt) -> tuple[str, bool]:
    """(mode, filter) with aliases spelled out; ``filter`` as given for the plain modes."""
    mode = str(mode)
    if mode in ALIASES:
        return ALIASES[mode]
    return mode, filt


def variant(mode, filt) -> str | None:
    """run.json ``variant``: 'replace', 'add', 'replace+filter', 'add+filter'; None for mode none."""
    mode, filt = canonical(mode, filt)
    if mode == "none":
        return None
    return f"{mode}+filter" if filt is True or str(filt).lower() == "true" else mode


def run_variant(name) -> str:
    """A run.json ``variant`` as the report names its category (older aliases spelled out)."""
    text = "" if name is None else str(name)
    return variant(text, False) if text in ALIASES else text
