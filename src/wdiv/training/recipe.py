"""Which config keys make up a run's training recipe, and which only say how it was executed.

The one place these rules live. Two subsets of the resolved config are derived from them:

* the *semantic* config (everything but :data:`EXECUTION_KEYS`): a restarted command must match
  the run already in its directory on it (``runner._previous``);
* the *recipe* (the semantic config minus :data:`ARM_KEYS` and :data:`CELL_KEYS`): the hash the
  report matches an arm's runs to their baselines with (``run.json`` ``recipe``, with the hashed
  dict as ``recipe_config``). A dropout, weight-decay, augment, synthetic and baseline run
  trained the same way (same model, optimiser, schedule, epochs, batch, starting weights) share
  one recipe; the seed and the arm's level are separate columns of run.json.

Any key not named here is part of the recipe, so a new knob splits cells until it is listed.
A rule maps a top-level key to ``None`` (the whole key or group is out) or to the set of its
sub-keys that are out.
"""

from __future__ import annotations

from wdiv.io import sha256_json

Rule = dict[str, "set[str] | None"]

# How a run is executed, not what it computes; a restarted command may change these.
#   trainer.threads/device/num_workers: where and how parallel (the device used is run.json device)
#   trainer.progress: tqdm bars; trainer.resume/stop_after_epoch: restart mechanics
#   trainer.snapshot_every: copies of the weights along the way (run.json snapshots lists them)
#   trainer.eval_batch_size: evaluation batching (the model is in eval mode: same predictions)
#   trainer.channels_last/compile: memory layout and compiled kernels of the same model and recipe
#   paths: where runs, data and caches live; diversity: a measurement of the training set made
#   before training, which does not touch the model; hydra: the launcher's own settings.
# trainer.precision stays in: bf16 autocast and fp32 are different arithmetic.
EXECUTION_KEYS: Rule = {
    "trainer": {"threads", "device", "num_workers", "progress", "resume", "stop_after_epoch", "eval_batch_size",
                "snapshot_every", "channels_last", "compile"},
    "paths": None,
    "diversity": None,
    "hydra": None,
}

# Inputs of other keys: model.finetune is the model's recipe, and its values reach the run only
# through optim.lr/schedule/warmup_epochs and trainer.epochs/batch_size, which are compared and
# hashed themselves (so the recipe of a run is the same whether its lr came from there or not).
DERIVED_KEYS: Rule = {"model": {"finetune"}}

# Every arm's own knob, for all arms, and the run's identity inside its cell.
#   arm, exp_name, level, levels, run_tag: which arm and level (run.json arm/level/level_index/exp)
#   seed: a separate column; baselines are matched on recipe + seed
#   model.dropout, model.dropout_at: the dropout arm
#   optim.weight_decay, optim.decay_norm_bias: the weight-decay arm
#   aug: the augment arm (policy and its parameters); synth: the synthetic arm (run.json variant)
ARM_KEYS: Rule = {
    "arm": None,
    "exp_name": None,
    "level": None,
    "levels": None,
    "run_tag": None,
    "seed": None,
    "model": {"dropout", "dropout_at"},
    "optim": {"weight_decay", "decay_norm_bias"},
    "aug": None,
    "synth": None,
}

# Keys that are their own part of the cell: the data set is run.json data (model stays in the
# recipe as well: it also holds the starting weights and the builtin pretraining recipe).
CELL_KEYS: Rule = {"data": None}

RECIPE_HEX = 16


def merge(*rules: Rule) -> Rule:
    """One rule dropping everything any of ``rules`` drops."""
    out: Rule = {}
    for rule in rules:
        for key, sub in rule.items():
            if sub is None or (key in out and out[key] is None):
                out[key] = None
            else:
                out[key] = set(out.get(key) or ()) | set(sub)
    return out


def without(config: dict, rule: Rule) -> dict:
    """A copy of the resolved ``config`` with the keys ``rule`` names removed."""
    out = dict(config)
    for key, sub in rule.items():
        if sub is None:
            out.pop(key, None)
        elif isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k not in sub}
    return out


def semantic(config: dict) -> dict:
    """What a run computes: the resolved config without its execution-only keys."""
    return without(config, merge(EXECUTION_KEYS, DERIVED_KEYS))


def recipe_config(config: dict) -> dict:
    """The part of the resolved config the recipe hash covers."""
    return without(config, merge(EXECUTION_KEYS, DERIVED_KEYS, ARM_KEYS, CELL_KEYS))


def recipe(config: dict) -> dict:
    """run.json's ``recipe`` (first 16 hex of the sha256 of :func:`recipe_config`) and ``recipe_config``."""
    covered = recipe_config(config)
    return {"recipe": sha256_json(covered)[:RECIPE_HEX], "recipe_config": covered}
