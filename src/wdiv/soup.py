"""python -m wdiv.soup RUNS_DIR [--group arm|level|seed ...] [--kind uniform,greedy]: model soups as runs.

Averages the final weights of complete runs that share a starting checkpoint, recipe, model and
data (grouped further by --group), as a uniform and a greedy soup (Wortsman et al. 2022); each
soup is a run directory under RUNS_DIR/soup/ that wdiv.analyze and wdiv.report read like any run
(see wdiv.training.soups). argparse, not Hydra.

Exit status: 0 done (soups written or up to date); 1 some group refused (one line each naming
the run: another architecture or data config, damaged weights), the other groups still souped,
or no complete run found; 2 a bad option (one line, nothing read or written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from wdiv.cpus import available_cpus
from wdiv.training.validate import DEVICE
from wdiv.training.soups import GROUP_KEYS, KINDS, make_soups, summary


class OptionError(ValueError):
    """A bad command line: one line for stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line too, not usage + error
        raise OptionError(message)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="python -m wdiv.soup", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="folder of run directories (searched recursively)")
    parser.add_argument("--group", nargs="+", default=["arm"], metavar="KEY",
                        help="what members share besides start, recipe, model and data: arm (arm + variant), "
                             "level (arm + level), seed; several or comma-separated (default: arm)")
    parser.add_argument("--kind", default=",".join(KINDS), help="uniform, greedy or both, comma-separated (default: both)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:K")
    parser.add_argument("--force", action="store_true", help="rebuild soups that are up to date")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each run left out and each group too small")
    return parser.parse_args(argv)


def _items(values) -> list[str]:
    return [t.strip() for v in values for t in str(v).split(",") if t.strip()]


def check_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(group keys, kinds), every option checked before any file is read; OptionError otherwise."""
    if not args.runs_dir.exists():
        raise OptionError(f"RUNS_DIR {args.runs_dir} does not exist")
    if not args.runs_dir.is_dir():
        raise OptionError(f"RUNS_DIR {args.runs_dir} is not a directory")
    keys = _items(args.group)
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad or not keys:
        raise OptionError(f"--group {','.join(bad) or repr(' '.join(args.group))}: give arm, level and/or seed")
    kinds = _items([args.kind])
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise OptionError(f"--kind {','.join(bad) or repr(args.kind)}: give uniform, greedy or uniform,greedy")
    device = str(args.device)
    if not DEVICE.match(device):  # the names trainer.device takes
        raise OptionError(f"--device {device}: give auto, cpu, cuda or cuda:K")
    return list(dict.fromkeys(keys)), list(dict.fromkeys(kinds))


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        keys, kinds = check_options(args)
    except OptionError as err:
        print(f"wdiv.soup: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    outcomes = make_soups(args.runs_dir, keys, kinds, device=args.device, force=args.force, cpus=available_cpus())
    for o in outcomes:
        if o.action == "refused":
            print(f"wdiv.soup: refused: {o.folder}: {o.reason}", file=sys.stderr)
        elif o.action != "too few" or args.verbose:
            print(summary(o), flush=True)
    counts = {a: sum(o.action == a for o in outcomes) for a in ("written", "up to date", "refused")}
    small = sum(o.action == "too few" for o in outcomes)
    if not outcomes:
        print(f"wdiv.soup: error: no complete run to soup under {args.runs_dir}", file=sys.stderr)
        return 1
    print(f"wdiv.soup: {', '.join(f'{n} {a}' for a, n in counts.items())}"
          + (f", {small} group(s) of one run (no soup)" if small else "") + f" -> {args.runs_dir}")
    return 1 if counts["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
