"""wdiv.report: analysed run directories -> tables, statistics across seeds, figures.

collect (run dirs -> tables) -> deltas (dM, D) -> tables (within study cells, with stats and
samples) -> render (md / tex / json) and figures; cli is `python -m wdiv.report`.
"""

from wdiv.report.cli import esd_figure, main
from wdiv.report.collect import collect
from wdiv.report.tables import NoRuns, Report, build

__all__ = ["NoRuns", "Report", "build", "collect", "esd_figure", "main"]
