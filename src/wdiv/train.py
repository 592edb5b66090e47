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
import shutil
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from wdiv.variants import variant

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
# configs/exp/synthetic.yaml names its run directories by the variant (aliases spelled out)
OmegaConf.register_new_resolver("wdiv_synth_variant", variant, replace=True)

log = logging.getLogger("wdiv.train")


class PointFailed(CompactHydraException):
    """One grid point of a multirun could not run. Raised rather than exiting, so the launcher
    runs the other points; Hydra's sweeper re-raises the first after the batch (exit 1)."""


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

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
            info = run(cfg, out_dir)
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
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(task)()


if __name__ == "__main__":
    main()
