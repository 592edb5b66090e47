"""``python -m wdiv.train +exp=NAME [overrides]``: fine-tune one model under one regulariser.

A thin Hydra entry: compose the config (package configs, absolute path so tests and console
scripts find it), hand it to :func:`wdiv.training.runner.run`. Logs go to stderr (configs/
train.yaml points Hydra's console handler there), the one result line to stdout.

Exit status: 0 done; 2 a config error or a damaged file, one line naming the key or the file
(a config error leaves no run directory behind); 130 / 143 interrupted by SIGINT / SIGTERM,
one line, run.json status "interrupted", the same command resumes. In a multirun (``-m``) a bad
grid point fails only its own job: one line naming the key, its run.json says ``failed``, the
other points run, and the multirun exits 1 at the end. Under submitit a SIGTERM or
the preemption signal hands over to submitit, which requeues the job.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException, ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from wdiv.training.config_schema import register as register_schemas

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
# the groups' YAML files start from these schemas (enum keys fail at compose time, naming the
# key); also registers the wdiv_synth_variant resolver of configs/exp/synthetic.yaml
register_schemas()

# The keys that choose which model or which data a run has (run.json model / data): a multirun
# that sweeps them gets a run-dir level per value, so runs of different models never collide.
IDENTITY_KEYS = ("model", "model.id", "model.name", "data", "data.id", "data.name", "data.dataset", "data.subset", "data.train_domain")
SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "shuffle(", "sort(")
SWEPT_ENV = "WDIV_SWEPT"  # set through hydra.job.env_set by main(): the identity keys the command line sweeps


def _is_sweep(value) -> bool:
    value = str(value).strip()
    return "," in value or value.startswith(SWEEP_FUNCTIONS)


def swept_keys(argv: list[str]) -> list[str]:
    """The identity keys a ``-m`` command line sweeps (``model=a,b``, ``data=glob(*)``, ...)."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    keys = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key in IDENTITY_KEYS and _is_sweep(value) and key not in keys:
            keys.append(key)
    return keys


def swept_dir(task_overrides, sweeper_params=None, command_line: str = "") -> str:
    """The sweep subdir's model/data level: ``model=cnn_small/`` for each job of ``-m model=a,b``,
    '' when no identity key is swept (the layout of other sweeps is unchanged). Swept keys are
    those of ``command_line`` (what main() found on the command line) and of the exp file's grid
    (``hydra.sweeper.params``); the level holds this job's values of them."""
    swept = {k for k in str(command_line or "").split("|") if k}
    swept |= {str(k) for k, v in (sweeper_params or {}).items() if str(k) in IDENTITY_KEYS and _is_sweep(v)}
    parts = []
    for item in task_overrides or ():
        key, _, value = str(item).lstrip("+~").partition("=")
        if key in swept and value:
            parts.append(f"{key}={value}".replace("/", "_"))
    return ",".join(parts) + "/" if parts else ""


OmegaConf.register_new_resolver("wdiv_swept", swept_dir, replace=True)

log = logging.getLogger("wdiv.train")


class PointFailed(CompactHydraException):
    """One grid point of a multirun could not run. Raised rather than exiting, so the launcher
    runs the other points; Hydra's sweeper re-raises the first after the batch (exit 1)."""


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from wdiv.cpus import available_cpus
    from wdiv.errors import ConfigError, InputError
    from wdiv.training import interrupts
    from wdiv.training.runner import run, summary

    from hydra.types import RunMode

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    fresh = _only_hydra_files(out_dir, str(hc.job.name))
    with interrupts.catch() as catcher:
        try:
            info = run(cfg, out_dir, cpus=available_cpus())  # asked here, once: SLURM's or the affinity mask's CPUs
        except ConfigError as err:
            log.error("config error: %s", err)
            if multirun:  # this point fails on its own; the others still run
                _record_failure(out_dir, cfg, f"config error: {err}")
                raise PointFailed(f"{out_dir}: config error: {err}") from None
            if fresh:  # nothing of this run was written: leave no run directory behind
                _remove_hydra_files(out_dir, str(hc.job.name), Path(str(cfg.paths.runs_dir)))
            sys.exit(2)
        except InputError as err:
            log.error("%s", err)
            if multirun:
                raise PointFailed(f"{out_dir}: {err}") from None
            sys.exit(2)
        except OmegaConfBaseException as err:  # raised inside the run: a fault, not a config that failed to compose
            raise RuntimeError(f"{out_dir}: {type(err).__name__}: {err}") from err
        except interrupts.Interrupted as stop:
            log.warning("%s; rerun the same command to resume", stop)
            catcher.hand_over(stop)  # under submitit: checkpoint + requeue (exits)
            sys.exit(stop.exit_code)
    print(summary(info, out_dir), flush=True)
    return info


def _record_failure(out_dir: Path, cfg, error: str) -> None:
    """run.json ``failed`` for a grid point refused before it started, so the report lists it."""
    from wdiv.io import write_json
    from wdiv.training.runner import describe

    try:
        fields = describe(cfg)
    except Exception:  # the config may be too broken to describe: the error says why
        fields = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run.json", {"status": "failed", **fields, "error": error})


def _only_hydra_files(out_dir: Path, job_name: str) -> bool:
    """True when ``out_dir`` holds nothing but what Hydra itself wrote for this job."""
    if not out_dir.is_dir():
        return True
    return all(p.name in (".hydra", f"{job_name}.log") for p in out_dir.iterdir())


def _remove_hydra_files(out_dir: Path, job_name: str, runs_dir: Path) -> None:
    shutil.rmtree(out_dir / ".hydra", ignore_errors=True)
    (out_dir / f"{job_name}.log").unlink(missing_ok=True)
    stop = runs_dir.resolve()
    folder = out_dir.resolve()
    while folder != stop and stop in folder.parents:  # empty folders this run made, up to runs_dir
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def main() -> None:
    """Hydra's main; a config that does not compose (a bad enum value, an unknown group option or
    key) is one line naming it on stderr and exit 2, like the checks the run makes itself."""
    swept = swept_keys(sys.argv[1:])
    if swept:  # the jobs name their run dirs by these (configs/train.yaml hydra.sweep.subdir)
        at = next(i for i, a in enumerate(sys.argv) if i and "=" in a and not a.startswith("-"))
        sys.argv.insert(at + 1, f"+hydra.job.env_set.{SWEPT_ENV}='{'|'.join(swept)}'")  # beside the overrides
    full = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its multi-line report
    try:
        hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(task)()
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException) as err:
        if full:
            raise
        print(f"wdiv.train: config error: {compose_error(err)}", file=sys.stderr)
        sys.exit(2)
    except PointFailed as err:  # a multirun with failed grid points (each named in its own log line)
        if full:
            raise
        print(f"wdiv.train: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        if full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full


def compose_error(err: BaseException) -> str:
    """One line for a composition error: the key and what is wrong with it (OmegaConf's
    ``full_key`` and first message line when there is one, else Hydra's own first line)."""
    for cause in (err.__cause__, err.__context__, err):
        key = getattr(cause, "full_key", None)
        if key and str(cause).strip():
            return f"{key}: {str(cause).strip().splitlines()[0]}"
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


if __name__ == "__main__":
    main()
