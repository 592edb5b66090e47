"""``python -m wdiv.train +exp=NAME [overrides]``: fine-tune one model under one regulariser.

A thin Hydra entry: compose the config (package configs, absolute path so tests and console
scripts find it), hand it to :func:`wdiv.training.runner.run`. Config errors end the process
with one line naming the key and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")

log = logging.getLogger("wdiv.train")


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from wdiv.errors import ConfigError
    from wdiv.training.runner import run

    try:
        return run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as err:
        log.error("config error: %s", err)
        sys.exit(2)


def main() -> None:
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(task)()


if __name__ == "__main__":
    main()
