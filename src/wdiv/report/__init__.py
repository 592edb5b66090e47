"""wdiv.report: analysed run directories -> tables, statistics across seeds, figures.

collect (run dirs -> tables) -> stats (dM, D, tests) -> tables (the Report) -> render (md/tex/json)
and figures; cli is `python -m wdiv.report`.
"""

from wdiv.report.cli import build, main

__all__ = ["build", "main"]
