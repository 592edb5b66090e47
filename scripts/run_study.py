#!/usr/bin/env python
"""The whole study in one command: train every arm x level x seed, analyse, report.

    python scripts/run_study.py                      # embedded default: every arm, every level, seeds 0,1,2
    python scripts/run_study.py --runs-dir runs/study --n-jobs 2 --seeds 0,1,2
    python scripts/run_study.py --arms baseline,weight_decay,synthetic --levels weight_decay=1e-4,1e-3 \
        --levels synthetic=0.5 --sweep synthetic:synth.mode=replace -- model=vit_micro trainer.epochs=1
                                                     # reduced grid; anything after -- goes to every train call
    python scripts/run_study.py --snapshots 2 --soups   # + spectral trajectories and model soups

Stage 1 runs one Hydra multirun per arm (`python -m wdiv.train -m +exp=ARM seed=...` with the
joblib launcher, so n_jobs runs share the CPUs this process may use, each with cpus/n_jobs threads);
the arm's grid comes from its exp file unless --levels narrows it. Stage 2 is
`python -m wdiv.analyze RUNS_DIR --base`, stage 3 `python -m wdiv.report RUNS_DIR`. With
--snapshots K every run keeps its weights every K epochs (trainer.snapshot_every=K) and stage 2
analyses them too (--snapshots), so the report has trajectories; with --soups, `python -m
wdiv.soup RUNS_DIR` makes uniform and greedy soups (one per arm) before stage 2. A failing
arm does not stop the others: its runs are listed as failed in the report, and the script exits
non-zero at the end. The wall time of every stage is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from wdiv.cpus import available_cpus

EXP_DIR = Path(__file__).resolve().parents[1] / "src" / "wdiv" / "configs" / "exp"
ARMS = ("baseline", "dropout", "weight_decay", "augment", "synthetic")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/study"), help="where run dirs and report/ go")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (exp names); missing exp files are skipped")
    parser.add_argument("--levels", action="append", default=[], metavar="ARM=L1,L2",
                        help="narrow an arm's levels (repeatable), e.g. weight_decay=1e-4,1e-3")
    parser.add_argument("--sweep", action="append", default=[], metavar="ARM:KEY=V1,V2",
                        help="set any swept key of one arm (repeatable), e.g. synthetic:synth.mode=replace")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel training runs (joblib launcher)")
    parser.add_argument("--analyze-jobs", type=int, default=None, help="parallel analyses (default: n-jobs)")
    parser.add_argument("--snapshots", type=int, default=0, metavar="K",
                        help="keep the weights every K epochs and analyse them (report: trajectories); 0 = off")
    parser.add_argument("--soups", action="store_true", help="uniform and greedy soups per arm (python -m wdiv.soup)")
    parser.add_argument("--skip-train", action="store_true", help="only analyse and report existing runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every train call (after --)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as one line, before anything runs (None when all are usable)."""
    seeds = [s.strip() for s in args.seeds.split(",")]
    if not all(s.lstrip("-").isdigit() for s in seeds):
        return f"--seeds {args.seeds!r}: comma-separated integers expected"
    if args.n_jobs < 1:
        return f"--n-jobs {args.n_jobs}: at least 1"
    if args.snapshots < 0:
        return f"--snapshots {args.snapshots}: 0 (off) or a number of epochs"
    if args.analyze_jobs is not None and args.analyze_jobs < 1:
        return f"--analyze-jobs {args.analyze_jobs}: at least 1"
    if args.runs_dir.exists() and not args.runs_dir.is_dir():
        return f"--runs-dir {args.runs_dir}: exists and is not a directory"
    if not [a for a in args.arms.split(",") if a.strip()]:
        return "--arms: no arm given"
    return None


def train_command(arm: str, args: argparse.Namespace, sweeps: dict[str, dict[str, str]]) -> list[str]:
    threads = max(1, available_cpus() // max(1, args.n_jobs))  # the job's CPUs (SLURM / affinity), not the machine's
    cmd = [sys.executable, "-m", "wdiv.train", "-m", f"+exp={arm}", f"seed={args.seeds}",
           "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}", f"trainer.threads={threads}",
           f"paths.runs_dir={args.runs_dir}"]
    if args.snapshots:
        cmd.append(f"trainer.snapshot_every={args.snapshots}")
    cmd += [f"{key}={values}" for key, values in sweeps.get(arm, {}).items()]
    return cmd + list(args.overrides)


def grid_size(arm: str, args: argparse.Namespace, sweeps: dict[str, dict[str, str]]) -> int:
    """Runs one arm's multirun will launch: its exp file's sweep (narrowed by --levels) x seeds."""
    from omegaconf import OmegaConf

    params = dict(OmegaConf.select(OmegaConf.load(EXP_DIR / f"{arm}.yaml"), "hydra.sweeper.params", default={}) or {})
    params.update(sweeps.get(arm, {}))
    size = len(args.seeds.split(","))
    for value in params.values():
        size *= len(str(value).split(","))
    return size


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
    if (why := check_args(args)) is not None:
        print(f"run_study: error: {why}", file=sys.stderr)
        return 2
    sweeps: dict[str, dict[str, str]] = {}
    for flag, items in (("--levels", [f"{i.partition('=')[0]}:level={i.partition('=')[2]}" if "=" in i else i
                                      for i in args.levels]), ("--sweep", args.sweep)):
        for item in items:
            arm, _, assignment = item.partition(":")
            key, sep, values = assignment.partition("=")
            if not arm or not key or not sep or not values:
                form = "ARM=L1,L2" if flag == "--levels" else "ARM:KEY=V1,V2"
                print(f"run_study: error: {flag} {item!r} is not {form}", file=sys.stderr)
                return 2
            sweeps.setdefault(arm, {})[key] = values
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.runs_dir = args.runs_dir.resolve()
    timings: list[tuple[str, float, int]] = []
    failed = []
    total = time.perf_counter()
    if not args.skip_train:
        missing = [a for a in arms if not (EXP_DIR / f"{a}.yaml").is_file()]
        for arm in missing:
            print(f"run_study: no configs/exp/{arm}.yaml: arm {arm} skipped", flush=True)
        arms = [a for a in arms if a not in missing]
        sizes = {arm: grid_size(arm, args, sweeps) for arm in arms}
        print("runs to train: " + ", ".join(f"{a} {n}" for a, n in sizes.items()) + f"; total {sum(sizes.values())}")
        for arm in arms:
            if run_stage(f"train {arm}", train_command(arm, args, sweeps), args.dry_run, timings):
                failed.append(f"train {arm}")
    if args.soups and run_stage("soups", [sys.executable, "-m", "wdiv.soup", str(args.runs_dir), "--group", "arm"],
                                args.dry_run, timings):
        failed.append("soups")
    analyze = [sys.executable, "-m", "wdiv.analyze", str(args.runs_dir), "--base", "--save-esd",
               "--jobs", str(args.analyze_jobs or args.n_jobs)] + (["--snapshots"] if args.snapshots else [])
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
