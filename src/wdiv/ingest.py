"""python -m wdiv.ingest META.csv [META.csv ...] --out RUNS_DIR: WeightWatcher tables -> run directories.

META has one row per fine-tuning run: run (folder name under RUNS_DIR, '/' allowed), before and
after (saved WeightWatcher `details` CSVs, relative to META's folder), arm, seed, and optionally
exp, variant, level, level_index, model, data, recipe, test_acc, test_ece, test_loss, ood_acc,
ood_<set>, vendi_pixel, vendi_embed, rho, weighted_vs, diversity_<key>, wall_time_s. The run
directories are then read by `python -m wdiv.report RUNS_DIR` like wdiv's own.

Options are checked before any file is read or written (every META an existing file, --out not
a file nor a report folder): one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


class OptionError(ValueError):
    """A bad command line: one line for stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line too, not usage + error
        raise OptionError(message)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m wdiv.ingest", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Bad rows print one 'error:' line each and make the exit code 1; the others are still written. "
               "A rerun skips identical run directories and updates those ingest wrote.")
    parser.add_argument("meta", nargs="+", type=Path, metavar="META", help="META CSV file(s), one row per run")
    parser.add_argument("--out", type=Path, required=True, metavar="RUNS_DIR", help="where the run directories go")
    parser.add_argument("--force", action="store_true",
                        help="overwrite run.json/spectra files in run directories that wdiv.ingest did not write")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each run written, updated or unchanged")
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """Every option, before any file is read or written; OptionError (one line) otherwise."""
    for meta in args.meta:
        if not meta.exists():
            raise OptionError(f"META {meta} does not exist")
        if not meta.is_file():
            raise OptionError(f"META {meta} is not a file")
    out = args.out
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file, not a folder")
    if out.name == "report" and (out / "summary.md").is_file():
        raise OptionError(f"--out {out} is a wdiv report folder, not a RUNS_DIR")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        check_options(args)
    except OptionError as err:
        print(f"wdiv.ingest: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from wdiv.report.ingest import ingest

    result = ingest(args.meta, args.out, force=args.force)
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    counts = {a: sum(o.action == a for o in result.outcomes) for a in ("written", "updated", "unchanged")}
    done = ", ".join(f"{n} {a}" for a, n in counts.items())
    print(f"wdiv.ingest: {done}, {len(result.errors)} error(s) -> {args.out}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
