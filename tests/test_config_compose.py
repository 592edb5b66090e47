"""The packaged configs compose from a notebook (Hydra's compose API) without ``import wdiv.train``.

Importing the config package ``wdiv.configs`` (Hydra does, on initialize_config_module) registers
the groups' schemas (wdiv.training.config_schema), so enum keys are still checked at compose time.
Run in a fresh interpreter: in this one another test may have imported wdiv.train already.
"""

import json
import os
import subprocess
import sys

SNIPPET = r'''
import json, sys
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

out = {}
with initialize_config_module(config_module="wdiv.configs", version_base=None):
    cfg = compose("train", overrides=["+exp=dropout"])
    out["arm"] = cfg.arm
    out["optim_name"] = str(cfg.optim.name)
    out["resolved"] = OmegaConf.to_container(cfg, resolve=True)["run_tag"]
    synth = compose("train", overrides=["+exp=synthetic"])
    out["synth_run_tag"] = synth.run_tag  # the wdiv_synth_variant resolver is registered too
    try:
        compose("train", overrides=["+exp=dropout", "optim.name=nonsense"])
        out["error"] = None
    except Exception as exc:
        chain, e = [], exc
        while e is not None:
            chain.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        out["error"] = "\n".join(chain)
out["train_imported"] = "wdiv.train" in sys.modules
print(json.dumps(out))
'''


def test_compose_packaged_configs_without_wdiv_train():
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["arm"] == "dropout"
    assert out["optim_name"] == "adam"
    assert out["resolved"] == "p0.1"
    assert out["synth_run_tag"] == "replace_p0.5"
    # the schema check still fires at compose time, naming the key and the bad value
    assert out["error"] is not None
    assert "optim.name" in out["error"] and "nonsense" in out["error"]
    assert "adamw" in out["error"]  # the allowed values (wdiv.training.config_schema.OptimName)
    assert out["train_imported"] is False


def test_register_is_idempotent():
    from hydra.core.config_store import ConfigStore

    from wdiv.training import config_schema

    config_schema.register()
    config_schema.register()
    for group in config_schema.SCHEMAS:
        assert f"{config_schema.NAME}.yaml" in ConfigStore.instance().list(group)
