"""The command line of `python -m wdiv.analyze`: the parser, and every option checked before
any file is read or written (one ConfigError line, exit code 2)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

from wdiv.analysis_executor import EXECUTORS, PER_JOB, TIME_MIN
from wdiv.analysis_targets import JOBS_FOLDER
from wdiv.errors import ConfigError
from wdiv.spectral.farms import DEFAULT_PRESET as FARMS_DEFAULT, PRESETS as FARMS_PRESETS, XMIN_RULES as FARMS_XMIN
from wdiv.spectral.options import AnalyzeOptions, FarmsOptions
from wdiv.spectral.weights import find_checkpoint

DESCRIPTION = "spectra.csv (+ summary) beside every checkpoint."


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (exit 2), as every other option error of this command."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python -m wdiv.analyze --help)\n")


def _int_or_float(text: str):
    if text == "force":
        return text
    try:
        return int(text)
    except ValueError:
        return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m wdiv.analyze", description=DESCRIPTION)
    p.add_argument("paths", nargs="+", metavar="PATH", help="weights file, checkpoint or run dir, or a tree of them")
    g = p.add_argument_group("metrics")
    g.add_argument("--fit", choices=["ks", "hill", "powerlaw"], default="ks", help="power-law estimator (default ks)")
    g.add_argument("--xmax", type=_int_or_float, default=None,
                   help="power-law fit upper cut: an integer k (e.g. -1) drops the |k| largest eigenvalues as "
                        "WeightWatcher does, a float cuts at that eigenvalue, 'force' as WeightWatcher")
    g.add_argument("--fix-fingers", choices=["clip_xmax"], default=None)
    g.add_argument("--no-mp-fit", action="store_true", help="skip the Marchenko-Pastur fit")
    g.add_argument("--randomize", action="store_true", help="also analyse element-permuted W")
    g.add_argument("--seed", type=int, default=0, help="seed of --randomize / --farms (default 0)")
    g.add_argument("--farms", action="store_true", help="alpha_farms: fixed-aspect-ratio submatrix ESD (FARMS)")
    g.add_argument("--farms-preset", choices=list(FARMS_PRESETS), default=None,
                   help=f"the FARMS reference's experiment setting (default {FARMS_DEFAULT})")
    g.add_argument("--farms-window", type=int, default=None, help="FARMS window rows m (>= 1; over the preset)")
    g.add_argument("--farms-windows-per-dim", type=int, default=None, help="FARMS window starts per dimension (>= 1)")
    g.add_argument("--farms-aspect-ratio", type=float, default=None, help="FARMS window columns / rows Q (> 0)")
    g.add_argument("--farms-xmin", choices=list(FARMS_XMIN), default=None,
                   help="FARMS xmin rule: median, peak (the reference's) or ks (WeightWatcher's)")
    s = p.add_argument_group("layers")
    s.add_argument("--pool", dest="pool", action="store_true", default=True, help="one ESD per conv layer (default)")
    s.add_argument("--per-slice", dest="pool", action="store_false", help="one row per conv kernel slice")
    s.add_argument("--include", default=None, help="regex: analyse only matching layer longnames")
    s.add_argument("--exclude", default=None, help="regex: skip matching layer longnames")
    s.add_argument("--min-evals", type=int, default=10, help="(>= 0; 0: no lower filter)")
    s.add_argument("--max-evals", type=int, default=15000, help="(>= 1 and >= --min-evals)")
    s.add_argument("--max-N", dest="max_N", type=int, default=50000, help="(>= 1)")
    o = p.add_argument_group("outputs")
    o.add_argument("--base", nargs="?", const="auto", default=None,
                   help="reference checkpoint for delta_<metric> columns; without a value: run.json pretrained.path")
    o.add_argument("--out", default=None, help="spectra csv path (a single checkpoint only)")
    o.add_argument("--plot", action="store_true", help="one ESD PNG per layer under esd/ beside the csv")
    o.add_argument("--save-esd", action="store_true",
                   help="esd.npz beside spectra.csv (esd_base.npz with --base): the fitted eigenvalues of every row")
    o.add_argument("--snapshots", action="store_true",
                   help="also every training snapshot (run dir snapshots/epoch<E>/, trainer.snapshot_every), in place")
    o.add_argument("--force", action="store_true", help="redo outputs that are up to date")
    o.add_argument("--jobs", type=int, default=1, help="checkpoints analysed in parallel (>= 1)")
    o.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    o.add_argument("--summary", default=None, metavar="CSV",
                   help="population table: one row per checkpoint (path, sha256, means, layers, options)")
    o.add_argument("-q", "--quiet", action="store_true")
    x = p.add_argument_group("executor (a population across machines: wdiv.analysis_executor)")
    x.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this process (--jobs); slurm: a SLURM job array; submitit-local: the same jobs "
                        "as subprocesses here (default local)")
    x.add_argument("--per-job", type=int, default=None, help=f"checkpoints per job (>= 1, default {PER_JOB})")
    x.add_argument("--time", dest="time_min", type=int, default=None, help=f"minutes per job (default {TIME_MIN})")
    x.add_argument("--partition", default=None, help="SLURM partition (--executor slurm)")
    x.add_argument("--cpus", type=int, default=None, help="CPUs per job (--executor slurm)")
    x.add_argument("--mem", dest="mem_gb", type=float, default=None, help="GB of memory per job (--executor slurm)")
    x.add_argument("--gpus", type=int, default=None,
                   help="GPUs per job (--executor slurm, with --device cuda; SLURM's --gpus-per-node)")
    x.add_argument("--max-parallel", type=int, default=None,
                   help="jobs of the array running at once (--executor slurm)")
    x.add_argument("--jobs-folder", default=None,
                   help=f"submitit's logs and pickles (default PATH/{JOBS_FOLDER}/<time>)")
    x.add_argument("--no-wait", action="store_true", help="print the job ids and return once submitted")
    return p


def options_from_args(args) -> AnalyzeOptions:
    return AnalyzeOptions(
        fit=args.fit, xmax=args.xmax, fix_fingers=args.fix_fingers, mp_fit=not args.no_mp_fit,
        randomize=args.randomize, seed=args.seed, farms=args.farms,
        farms_options=FarmsOptions(preset=args.farms_preset, window=args.farms_window,
                                   windows_per_dim=args.farms_windows_per_dim,
                                   aspect_ratio=args.farms_aspect_ratio, xmin=args.farms_xmin),
        pool=args.pool, include=args.include, exclude=args.exclude, min_evals=args.min_evals,
        max_evals=args.max_evals, max_N=args.max_N, device=args.device)


# AnalyzeOptions' field names (its ConfigErrors start with one) -> the flag the user typed
FLAGS = {"fit": "--fit", "xmax": "--xmax", "fix_fingers": "--fix-fingers", "include": "--include",
         "exclude": "--exclude", "min_evals": "--min-evals", "max_evals": "--max-evals", "max_N": "--max-N",
         "device": "--device", "farms_window": "--farms-window", "farms_windows_per_dim": "--farms-windows-per-dim",
         "farms_aspect_ratio": "--farms-aspect-ratio",
         "farms_preset": "--farms-preset", "farms_xmin": "--farms-xmin"}


def check_executor_args(args) -> None:
    """The executor's options: each only with an executor that uses it; submitit (and sbatch for
    slurm) there before anything is submitted."""
    slurm = [f for f, v in (("--partition", args.partition), ("--cpus", args.cpus), ("--mem", args.mem_gb),
                            ("--gpus", args.gpus), ("--max-parallel", args.max_parallel)) if v is not None]
    if slurm and args.executor != "slurm":
        raise ConfigError(f"{slurm[0]}: needs --executor slurm")
    jobs = [f for f, on in (("--per-job", args.per_job is not None), ("--time", args.time_min is not None),
                            ("--jobs-folder", args.jobs_folder is not None), ("--no-wait", args.no_wait)) if on]
    if args.executor == "local":
        if jobs:
            raise ConfigError(f"{jobs[0]}: needs --executor slurm or submitit-local")
        return
    for flag, value in (("--per-job", args.per_job), ("--time", args.time_min), ("--cpus", args.cpus),
                        ("--mem", args.mem_gb), ("--gpus", args.gpus), ("--max-parallel", args.max_parallel)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag}: must be > 0, got {value}")
    if args.gpus is not None and args.device == "cpu":
        raise ConfigError("--gpus: the analysis would run on the CPU: add --device cuda")
    if args.out is not None:
        raise ConfigError("--out: a single checkpoint is analysed here: drop --executor")
    if args.summary is not None and args.no_wait:
        raise ConfigError("--summary: needs the jobs to finish: drop --no-wait (rerun with --summary once they end)")
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError(f"--executor {args.executor}: needs submitit (pip install 'wdiv[slurm]')")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if args.executor == "slurm" and missing:
        raise ConfigError(f"--executor slurm: no {missing[0]} here (run it where SLURM jobs are submitted, "
                          "or use --executor submitit-local)")


def check_args(args):
    """Every option checked before any file is read or written -> AnalyzeOptions; ConfigError
    ('--flag: why') for the first bad one."""
    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    check_executor_args(args)
    if args.summary is not None and Path(args.summary).is_dir():
        raise ConfigError(f"--summary: {args.summary} is a directory (give the csv's path)")
    if args.out is not None:
        if len(args.paths) > 1:
            raise ConfigError(f"--out: needs a single checkpoint, got {len(args.paths)} paths")
        if Path(args.out).is_dir():
            raise ConfigError(f"--out: {args.out} is a directory (give the csv's path)")
    farms = [flag for flag, v in (("--farms-preset", args.farms_preset), ("--farms-window", args.farms_window),
                                  ("--farms-windows-per-dim", args.farms_windows_per_dim),
                                  ("--farms-aspect-ratio", args.farms_aspect_ratio),
                                  ("--farms-xmin", args.farms_xmin)) if v is not None]
    if farms and not args.farms:
        raise ConfigError(f"{farms[0]}: needs --farms")
    if args.base not in (None, "auto"):
        ref = Path(args.base)
        if not ref.exists() or (ref.is_dir() and find_checkpoint(ref) is None):
            raise ConfigError(f"--base: {ref}: no such checkpoint")
    try:
        opts = options_from_args(args)
    except ConfigError as exc:
        key, _, why = str(exc).partition(": ")
        raise ConfigError(f"{FLAGS.get(key, key)}: {why}") from None
    if args.executor == "local":  # a job checks its own node (a login node may have no GPU)
        problem = device_problem(opts.device)
        if problem is not None:
            raise ConfigError(f"--device: {problem} here")
    return opts


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot run an analysis in this process (None: it can). Checked where the
    analysis runs: at the command for --executor local, in each job otherwise."""
    if device == "cpu":
        return None
    try:
        import torch  # only a CUDA analysis needs torch: a CPU one runs without it
    except ImportError:
        return f"{device} asked for, but torch is not installed"
    index = int(device.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        return f"{device} asked for, but CUDA is not available"
    if index >= torch.cuda.device_count():
        return f"{device} asked for, but there are {torch.cuda.device_count()} CUDA devices"
    return None
