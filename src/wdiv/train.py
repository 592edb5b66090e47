"""``python -m wdiv.train +exp=NAME [overrides]``: fine-tune one model under one regulariser.

A thin Hydra entry: compose the config (package configs, absolute path so tests and console
scripts find it), hand it to :func:`wdiv.training.runner.run`. Logs go to stderr (configs/
train.yaml points Hydra's console handler there), the one result line to stdout.

Exit status: 0 done; 2 a config error or a damaged file, one line naming the key or the file
(a config error leaves no run directory behind); 130 / 143 interrupted by SIGINT / SIGTERM,
one line, run.json status "interrupted", the same command resumes. Under submitit a SIGTERM or
the preemption signal hands over to submitit, which requeues the job.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from wdiv.variants import variant

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
# configs/exp/synthetic.yaml names its run directories by the variant (aliases spelled out)
OmegaConf.register_new_resolver("wdiv_synth_variant", variant, replace=True)

log = logging.getLogger("wdiv.train")


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from wdiv.errors import ConfigError, InputError
    from wdiv.training import interrupts
    from wdiv.training.runner import run, summary

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    fresh = _only_hydra_files(out_dir, str(hc.job.name))
    with interrupts.catch() as catcher:
        try:
            info = run(cfg, out_dir)
        except ConfigError as err:
            log.error("config error: %s", err)
            if fresh:  # nothing of this run was written: leave no run directory behind
                _remove_hydra_files(out_dir, str(hc.job.name), Path(str(cfg.paths.runs_dir)))
            sys.exit(2)
        except InputError as err:
            log.error("%s", err)
            sys.exit(2)
        except interrupts.Interrupted as stop:
            log.warning("%s; rerun the same command to resume", stop)
            catcher.hand_over(stop)  # under submitit: checkpoint + requeue (exits)
            sys.exit(stop.exit_code)
    print(summary(info, out_dir), flush=True)
    return info


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
