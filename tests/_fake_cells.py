"""A fabricated analysed study with three study cells and known effects, for testing wdiv.report.

Layout: root/<data>/<arm>/<tag>/seed<s>/ with run.json, spectra.csv (fine-tuned) and
spectra_base.csv (the pretrained reference), WeightWatcher columns as in _fake_study.

Cells (model, data, recipe): (vit_micro, digits, r-default), (vit_micro, cifar10, r-default) and
(vit_micro, digits, r-paper). Each dataset has its own pretrained checkpoint (own base table, own
sha256). For every metric and every changed layer:

    fine-tuned = pretrained + shift(data, seed, layer) + RECIPE_OFFSET[recipe] + effect + noise

with the shift shared by all arms of a dataset and seed, the recipe offset shared by all runs of a
recipe (baselines included), the injected effect of the run's configuration (EFFECTS, different per
dataset, so pooling the datasets would be detectably wrong) and NOISE-sized noise. So, with the
right baseline, D = effect (+ noise); with the wrong recipe's baseline D is off by the offset.

Layers of every table (ALL_LAYERS):
* LAYERS (the 7 vision layers of _fake_study): changed by fine-tuning, kept.
* head: its shape differs from the reference (replaced head): excluded for its shape.
* FROZEN (text.blocks.0.*): every metric bitwise identical in spectra.csv and spectra_base.csv in
  every run: excluded as "unchanged by fine-tuning".
* HASH_CHANGED (text.proj): every metric identical pre/post in every run. Excluded (unchanged by the
  spectra) in the cells without hashes; in HASHED_CELL both tables carry `weights_sha256` and its
  hash differs pre/post, so it is KEPT there (the weights win over the spectra), with dM = D = 0.
* In HASHED_CELL the FROZEN layers have equal hashes pre/post; one of them, HASH_FROZEN, has metrics
  that wobble by 1e-9 (a re-fit on identical weights): excluded there, because the hashes are equal.
* ONCE_UNCHANGED: one layer left bitwise unchanged in a single run: kept (dM = 0 in that run).
* FAILED_FIT: one layer of one run whose alpha fit failed (NaN): kept, NaN D left out of the means.

Runs the report must skip (SKIPPED_RUNS): one with a recipe that has no baseline in its dataset, one
that started from another checkpoint (pretrained sha256) than its dataset's baselines.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from _fake_study import HEAD_FT, HEAD_PRE, LAYERS, METRICS, WW_COLUMNS, write_run

MODEL = "vit_micro"
DATASETS = ("digits", "cifar10")
SEEDS = (0, 1, 2)
RECIPE = "r-default"
PAPER = "r-paper"
CELLS = [("digits", RECIPE), ("cifar10", RECIPE), ("digits", PAPER)]
HASHED_CELL = ("digits", PAPER)

FROZEN = ("text.blocks.0.attn.qkv", "text.blocks.0.mlp.fc1", "text.blocks.0.mlp.fc2", "text.blocks.0.attn.out")
HASH_FROZEN = "text.blocks.0.attn.out"
HASH_CHANGED = "text.proj"
VISION = [name for name, *_ in LAYERS]
ALL_LAYERS = LAYERS + [HEAD_PRE] + [(name, 64, 32, 1) for name in FROZEN] + [(HASH_CHANGED, 64, 32, 1)]
ONCE_UNCHANGED = ("cifar10/weight_decay/level0.0001/seed2", "blocks.1.mlp.fc1")
# A failed power-law fit: these metrics are NaN in one run's spectra.csv for one layer. The layer stays
# (its other metrics are data), its D of these metrics is NaN and left out of every mean. It also
# unbalances that layer's seeds across the levels of synthetic:replace, so the published statistic
# (seeds first within a level, then levels) differs from a plain mean over all of the layer's rows.
FAILED_FIT = ("digits/synthetic/replace0.9/seed1", "blocks.0.mlp.fc2", ("alpha", "alpha_weighted"))

SHA = {"digits": "d1" * 32, "cifar10": "c1" * 32}
OTHER_SHA = "ef" * 32
NOISE = 3e-3  # per layer and metric: F statistics stay moderate (well conditioned), effects >> noise
SHIFT_SD = 0.02

# (arm, variant, level, level_index) per cell; the baseline is (baseline, "", None, 0).
_DEFAULT_GRID = [
    ("dropout", "", 0.1, 1), ("dropout", "", 0.5, 2),
    ("weight_decay", "", 1e-4, 1), ("weight_decay", "", 1e-3, 2),
    ("synthetic", "replace", 0.5, 1), ("synthetic", "replace", 0.9, 2),
    ("synthetic", "add", 0.5, 1),
]
GRID = {
    ("digits", RECIPE): _DEFAULT_GRID + [("augment", "", "autoaugment", 1), ("augment", "", "randaugment", 2)],
    ("cifar10", RECIPE): list(_DEFAULT_GRID),
    ("digits", PAPER): [("dropout", "", 0.1, 1)],
}
# Injected D per (data, recipe, arm, variant, level) and metric; anything not listed is 0.
EFFECTS = {
    ("digits", RECIPE, "dropout", "", 0.1): {"alpha": 0.10},
    ("digits", RECIPE, "dropout", "", 0.5): {"alpha": 0.30},
    ("digits", RECIPE, "weight_decay", "", 1e-4): {"log_norm": -0.02, "log_spectral_norm": -0.01},
    ("digits", RECIPE, "weight_decay", "", 1e-3): {"log_norm": -0.10, "log_spectral_norm": -0.05},
    ("digits", RECIPE, "synthetic", "replace", 0.5): {"alpha": 0.15, "entropy": -0.02},
    ("digits", RECIPE, "synthetic", "replace", 0.9): {"alpha": 0.25, "entropy": -0.04},
    ("digits", RECIPE, "synthetic", "add", 0.5): {"alpha": -0.10, "entropy": 0.03, "stable_rank": 0.5},
    ("digits", RECIPE, "augment", "", "autoaugment"): {"alpha": 0.05},
    ("digits", RECIPE, "augment", "", "randaugment"): {"alpha": 0.12},
    ("cifar10", RECIPE, "dropout", "", 0.1): {"alpha": -0.05},
    ("cifar10", RECIPE, "dropout", "", 0.5): {"alpha": -0.20},
    ("cifar10", RECIPE, "weight_decay", "", 1e-4): {"log_norm": -0.08, "log_spectral_norm": -0.04},
    ("cifar10", RECIPE, "weight_decay", "", 1e-3): {"log_norm": -0.03, "log_spectral_norm": -0.02},  # not monotonic
    ("cifar10", RECIPE, "synthetic", "replace", 0.5): {"alpha": -0.10, "entropy": 0.02},
    ("cifar10", RECIPE, "synthetic", "replace", 0.9): {"alpha": -0.20, "entropy": 0.05},
    ("cifar10", RECIPE, "synthetic", "add", 0.5): {"alpha": 0.20, "stable_rank": -0.4},
    ("digits", PAPER, "dropout", "", 0.1): {"alpha": 0.25, "log_norm": 0.04},
}
# Added to dM of every run of the recipe (baselines too): the wrong recipe's baseline shifts D by it.
RECIPE_OFFSET = {RECIPE: {}, PAPER: {"alpha": 0.5, "log_norm": 0.2}}
# Recorded diversity of the named (augment) levels: (vendi_embed, weighted_vs) = f(level, seed).
DIVERSITY = {"autoaugment": 2.0, "randaugment": 3.0}


def category(arm: str, variant: str) -> str:
    return f"{arm}:{variant}" if variant else arm


def _tag(recipe: str, arm: str, variant: str, level) -> str:
    prefix = "paper-" if recipe == PAPER else ""
    if arm == "baseline":
        return "paper" if recipe == PAPER else "baseline"
    if arm == "augment":  # named levels
        return f"{prefix}{level}"
    return f"{prefix}{variant or 'level'}{level:g}"


def run_id(data: str, recipe: str, arm: str, variant: str, level, seed: int) -> str:
    return f"{data}/{arm}/{_tag(recipe, arm, variant, level)}/seed{seed}"


def baseline_id(data: str, recipe: str, seed: int) -> str:
    return run_id(data, recipe, "baseline", "", None, seed)


def runs_of(data: str, recipe: str) -> list[dict]:
    """Every run of a cell that the report must use (baselines first): dicts with run_id, arm, ..."""
    out = []
    for seed in SEEDS:
        out.append({"run_id": baseline_id(data, recipe, seed), "data": data, "recipe": recipe, "arm": "baseline",
                    "variant": "", "level": None, "level_index": 0, "seed": seed})
    for arm, variant, level, index in GRID[(data, recipe)]:
        for seed in SEEDS:
            out.append({"run_id": run_id(data, recipe, arm, variant, level, seed), "data": data, "recipe": recipe,
                        "arm": arm, "variant": variant, "level": level, "level_index": index, "seed": seed})
    return out


SKIPPED_RUNS = {  # run_id -> the start of its reason in skipped.csv
    run_id("cifar10", PAPER, "dropout", "", 0.1, 0): "no matching baseline",  # no cifar10 r-paper baseline
    "digits/dropout/othersha-level0.1/seed1": "no matching baseline",  # another starting checkpoint
}


def kept_layers(data: str, recipe: str) -> list[str]:
    """The layers the report must keep in a cell (in table order)."""
    return VISION + ([HASH_CHANGED] if (data, recipe) == HASHED_CELL else [])


@lru_cache(maxsize=None)
def _shift(data: str, seed: int) -> np.ndarray:
    """Per-(data, seed) shift of every layer (rows: ALL_LAYERS) and metric (columns: METRICS)."""
    rng = np.random.default_rng([DATASETS.index(data), seed, 99])
    return rng.normal(0.0, SHIFT_SD, (len(ALL_LAYERS), len(METRICS)))


def shift(data: str, seed: int, longname: str, metric: str) -> float:
    names = [name for name, *_ in ALL_LAYERS]
    return float(_shift(data, seed)[names.index(longname), METRICS.index(metric)])


def effect(data: str, recipe: str, arm: str, variant: str, level) -> dict:
    return EFFECTS.get((data, recipe, arm, variant, level), {})


def true_layer_D(run: dict, longname: str, metric: str) -> float:
    """The noise-free D of a kept layer of a run (as fabricated)."""
    if run["arm"] == "baseline" or longname == HASH_CHANGED:
        return 0.0
    if (run["run_id"], longname) == ONCE_UNCHANGED:  # dM = 0 here; its baseline's dM = shift + offset
        return -(shift(run["data"], run["seed"], longname, metric) + RECIPE_OFFSET[run["recipe"]].get(metric, 0.0))
    return effect(run["data"], run["recipe"], run["arm"], run["variant"], run["level"]).get(metric, 0.0)


def expected_mean_D(data: str, recipe: str, cat: str, level, metric: str) -> float:
    """Noise-free mean_D of a categories.csv row: per seed, the mean over the category's runs (at
    `level`, or all its levels for level "all") of the run's layer-mean D; then the mean over seeds.
    `cat` may be an arm pool (the arm of a multi-variant arm)."""
    layers = kept_layers(data, recipe)
    cell_runs = runs_of(data, recipe)
    runs = [r for r in cell_runs if category(r["arm"], r["variant"]) == cat]
    if not runs:  # an arm pool: every variant of the arm
        runs = [r for r in cell_runs if r["arm"] == cat]
    if level != "all":
        runs = [r for r in runs if r["level"] == level]
    assert runs, (data, recipe, cat, level)
    per_seed = []
    for seed in SEEDS:
        mine = [r for r in runs if r["seed"] == seed]
        per_seed.append(np.mean([np.mean([true_layer_D(r, name, metric) for name in layers
                                          if not _failed(r["run_id"], name, metric)]) for r in mine]))
    return float(np.mean(per_seed))


def _failed(run: str, longname: str, metric: str) -> bool:
    return (run, longname) == FAILED_FIT[:2] and metric in FAILED_FIT[2]


def _weights_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def base_table(data: str) -> pd.DataFrame:
    """The pretrained reference of a dataset (own values per dataset)."""
    rng = np.random.default_rng(1000 + DATASETS.index(data))
    rows = []
    for i, (name, n, m, rf) in enumerate(ALL_LAYERS):
        alpha = rng.uniform(2.5, 5.0)
        lam_max = rng.uniform(5.0, 50.0)
        rows.append({
            "layer_id": i, "name": "Linear", "longname": name, "N": n, "M": m, "Q": n / m, "rf": rf,
            "num_evals": m * rf, "alpha": alpha, "xmin": 1.0, "xmax": lam_max, "D": 0.05, "sigma": 0.1,
            "num_pl_spikes": 5, "lambda_max": lam_max, "log_spectral_norm": np.log10(lam_max),
            "norm": 10.0, "log_norm": rng.uniform(0.5, 2.0), "alpha_weighted": alpha * np.log10(lam_max),
            "log_alpha_norm": rng.uniform(1.0, 4.0), "stable_rank": rng.uniform(2.0, 10.0),
            "entropy": rng.uniform(0.7, 0.99), "matrix_rank": m, "num_spikes": float(rng.integers(0, 6)),
            "sigma_mp": 1.0, "bulk_max": 4.0, "bulk_min": 0.1, "mp_softrank": rng.uniform(0.05, 0.5),
            "warning": "", "status": "success",
        })
    return pd.DataFrame(rows, columns=WW_COLUMNS)


def finetuned_table(run: dict, base: pd.DataFrame, hashed: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(spectra.csv, spectra_base.csv) of one run."""
    rng = np.random.default_rng(zlib.crc32(run["run_id"].encode()))
    ft = base.copy()
    offset = RECIPE_OFFSET[run["recipe"]]
    eff = {} if run["arm"] == "baseline" else effect(run["data"], run["recipe"], run["arm"], run["variant"], run["level"])
    for i, name in enumerate(base["longname"]):
        unchanged = name in FROZEN or name == HASH_CHANGED or (run["run_id"], name) == ONCE_UNCHANGED
        for metric in METRICS:
            if unchanged:
                if hashed and name == HASH_FROZEN:  # identical weights, a re-fit that wobbles in the 9th digit
                    ft.at[i, metric] = base.at[i, metric] + 1e-9
                continue  # bitwise identical to the reference
            ft.at[i, metric] = (base.at[i, metric] + shift(run["data"], run["seed"], name, metric)
                                + offset.get(metric, 0.0) + eff.get(metric, 0.0) + rng.normal(0.0, NOISE))
    if run["run_id"] == FAILED_FIT[0]:
        ft.loc[ft["longname"] == FAILED_FIT[1], list(FAILED_FIT[2])] = np.nan
    ft.loc[ft["longname"] == "head", "M"] = HEAD_FT[2]  # replaced head: shape differs from the reference
    pre = base
    if hashed:
        pre = base.assign(weights_sha256=[_weights_hash(f"{run['data']}/pretrained/{n}") for n in base["longname"]])
        changed = [n not in FROZEN for n in base["longname"]]  # text.proj: the weights changed
        ft["weights_sha256"] = [_weights_hash(f"{run['run_id']}/{n}") if c else h
                                for n, c, h in zip(base["longname"], changed, pre["weights_sha256"])]
    return ft, pre


def record(run: dict, sha: str | None = None) -> dict:
    index = run["level_index"]
    acc = 0.9 + 0.01 * index * (-1 if run["arm"] == "weight_decay" else 1) - 0.002 * run["seed"]
    rec = {
        "status": "complete", "exp": run["arm"], "arm": run["arm"], "level": run["level"], "level_index": index,
        "variant": run["variant"] or None, "seed": run["seed"], "model": MODEL, "data": run["data"],
        "recipe": run["recipe"],
        "pretrained": {"path": f"/nonexistent/{run['data']}/pretrained.safetensors", "sha256": sha or SHA[run["data"]]},
        "metrics": {"test_acc": acc, "test_ece": 0.05, "test_loss": 0.3, "ood_acc": acc - 0.2,
                    "ood": {"gaussian_noise": acc - 0.25}},
        "wall_time_s": 3.0,
    }
    if run["arm"] == "augment":
        vs = DIVERSITY[run["level"]] + 0.1 * run["seed"]
        rec["diversity"] = {"vendi_pixel": 2 * vs, "vendi_embed": vs, "rho": 0.9, "weighted_vs": 0.9 * vs - 0.05 * run["seed"],
                            "n": 100}
    if run["arm"] == "synthetic":
        rec["synth"] = {"mode": run["variant"], "p": run["level"]}
    return rec


def make_cells_study(root: Path) -> Path:
    """Write the three-cell study (and the runs it must skip) under root; returns root."""
    root = Path(root)
    for data, recipe in CELLS:
        base = base_table(data)
        hashed = (data, recipe) == HASHED_CELL
        for run in runs_of(data, recipe):
            ft, pre = finetuned_table(run, base, hashed)
            write_run(root / run["run_id"], record(run), ft, pre)
    # skipped: a recipe without a baseline in its dataset
    orphan = {"run_id": run_id("cifar10", PAPER, "dropout", "", 0.1, 0), "data": "cifar10", "recipe": PAPER,
              "arm": "dropout", "variant": "", "level": 0.1, "level_index": 1, "seed": 0}
    write_run(root / orphan["run_id"], record(orphan), *finetuned_table(orphan, base_table("cifar10"), False))
    # skipped: same cell and seed as a baseline, but fine-tuned from another checkpoint
    other = {"run_id": "digits/dropout/othersha-level0.1/seed1", "data": "digits", "recipe": RECIPE,
             "arm": "dropout", "variant": "", "level": 0.1, "level_index": 1, "seed": 1}
    write_run(root / other["run_id"], record(other, sha=OTHER_SHA), *finetuned_table(other, base_table("digits"), False))
    return root
