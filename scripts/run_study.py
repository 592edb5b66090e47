#!/usr/bin/env python
"""The whole study in one command: train every arm x level x seed, analyse, report.

    python scripts/run_study.py                      # embedded default: every arm, every level, seeds 0,1,2
    python scripts/run_study.py --runs-dir runs/study --n-jobs 2 --seeds 0,1,2
    python scripts/run_study.py --arms baseline,weight_decay --levels weight_decay=1e-4,1e-3 \
        -- model=vit_micro trainer.epochs=1        # reduced grid; anything after -- goes to every train call

Stage 1 runs one Hydra multirun per arm (`python -m wdiv.train -m +exp=ARM seed=...` with the
joblib launcher, so n_jobs runs share the machine, each with cpu_count/n_jobs torch threads);
the arm's grid comes from its exp file unless --levels narrows it. Stage 2 is
`python -m wdiv.analyze RUNS_DIR --base`, stage 3 `python -m wdiv.report RUNS_DIR`. A failing
arm does not stop the others: its runs are listed as failed in the report, and the script exits
non-zero at the end. The wall time of every stage is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

EXP_DIR = Path(__file__).resolve().parents[1] / "src" / "wdiv" / "configs" / "exp"
ARMS = ("baseline", "dropout", "weight_decay", "augment", "synthetic")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/study"), help="where run dirs and report/ go")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (exp names); missing exp files are skipped")
    parser.add_argument("--levels", action="append", default=[], metavar="ARM=L1,L2",
                        help="narrow an arm's grid (repeatable), e.g. weight_decay=1e-4,1e-3")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel training runs (joblib launcher)")
    parser.add_argument("--analyze-jobs", type=int, default=None, help="parallel analyses (default: n-jobs)")
    parser.add_argument("--skip-train", action="store_true", help="only analyse and report existing runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every train call (after --)")
    return parser.parse_args(argv)


def train_command(arm: str, args: argparse.Namespace, levels: dict[str, str]) -> list[str]:
    threads = max(1, (os.cpu_count() or 1) // max(1, args.n_jobs))
    cmd = [sys.executable, "-m", "wdiv.train", "-m", f"+exp={arm}", f"seed={args.seeds}",
           "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}", f"trainer.threads={threads}",
           f"paths.runs_dir={args.runs_dir}"]
    if arm in levels:
        cmd.append(f"level={levels[arm]}")
    return cmd + list(args.overrides)


def run_stage(name: str, cmd: list[str], dry_run: bool, timings: list[tuple[str, float, int]]) -> int:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    if dry_run:
        return 0
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - start
    timings.append((name, wall, rc))
    print(f"=== {name}: {wall:.1f} s (exit {rc})", flush=True)
    return rc


def main(argv=None) -> int:
    args = parse_args(argv)
    levels = {}
    for item in args.levels:
        arm, sep, grid = item.partition("=")
        if not sep or not grid:
            print(f"run_study: error: --levels {item!r} is not ARM=L1,L2", file=sys.stderr)
            return 2
        levels[arm] = grid
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.runs_dir = args.runs_dir.resolve()
    timings: list[tuple[str, float, int]] = []
    failed = []
    total = time.perf_counter()
    if not args.skip_train:
        for arm in arms:
            if not (EXP_DIR / f"{arm}.yaml").is_file():
                print(f"run_study: no configs/exp/{arm}.yaml: arm {arm} skipped", flush=True)
                continue
            if run_stage(f"train {arm}", train_command(arm, args, levels), args.dry_run, timings):
                failed.append(f"train {arm}")
    analyze = [sys.executable, "-m", "wdiv.analyze", str(args.runs_dir), "--base",
               "--jobs", str(args.analyze_jobs or args.n_jobs)]
    if run_stage("analyze", analyze, args.dry_run, timings):
        failed.append("analyze")  # per-run failures; the report lists runs left without spectra
    if run_stage("report", [sys.executable, "-m", "wdiv.report", str(args.runs_dir)], args.dry_run, timings):
        failed.append("report")
    if not args.dry_run:
        print("\nstage wall times:")
        for name, wall, rc in timings:
            print(f"  {name:<24s} {wall:8.1f} s{'' if rc == 0 else f'  (exit {rc})'}")
        print(f"  {'total':<24s} {time.perf_counter() - total:8.1f} s")
        print(f"report: {args.runs_dir / 'report' / 'summary.md'}")
    if failed:
        print(f"run_study: failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
