"""A fabricated analysed study with known effects, for testing wdiv.report without training.

Layout and files follow the run-directory contract: runs/<exp>/<tag>/seed<seed>/ with run.json,
spectra.csv (fine-tuned, WeightWatcher columns) and spectra_base.csv (the pretrained reference).
For every metric, fine-tuned = pretrained + a per-(seed, layer) shift shared by all arms
+ the injected effect of (arm, level) + tiny noise, so D recovers the injected effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

WW_COLUMNS = [
    "layer_id", "name", "longname", "N", "M", "Q", "rf", "num_evals", "alpha", "xmin", "xmax", "D",
    "sigma", "num_pl_spikes", "lambda_max", "log_spectral_norm", "norm", "log_norm", "alpha_weighted",
    "log_alpha_norm", "stable_rank", "entropy", "matrix_rank", "num_spikes", "sigma_mp", "bulk_max",
    "bulk_min", "mp_softrank", "warning", "status",
]
LAYERS = [  # longname, N, M, rf
    ("patch_embed.proj", 48, 32, 16),
    ("blocks.0.attn.qkv", 96, 32, 1),
    ("blocks.0.attn.proj", 32, 32, 1),
    ("blocks.0.mlp.fc1", 128, 32, 1),
    ("blocks.0.mlp.fc2", 128, 32, 1),
    ("blocks.1.attn.qkv", 96, 32, 1),
    ("blocks.1.mlp.fc1", 128, 32, 1),
]
HEAD_PRE, HEAD_FT = ("head", 32, 5, 1), ("head", 32, 10, 1)
METRICS = ["alpha", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
           "stable_rank", "entropy", "num_spikes", "mp_softrank"]
ARMS = {"dropout": [0.1, 0.5], "weight_decay": [1e-4, 1e-3]}
# Injected D per (arm, level) and metric; anything not listed is 0.
EFFECTS = {
    ("weight_decay", 1e-4): {"log_norm": -0.02, "log_spectral_norm": -0.01},
    ("weight_decay", 1e-3): {"log_norm": -0.10, "log_spectral_norm": -0.05},
    ("dropout", 0.1): {"alpha": 0.10},
    ("dropout", 0.5): {"alpha": 0.30},
}
NOISE = 1e-4
SHA = "ab" * 32


def _base_table(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for i, (name, n, m, rf) in enumerate(LAYERS + [HEAD_PRE]):
        alpha = rng.uniform(2.5, 5.0)
        lam_max = rng.uniform(5.0, 50.0)
        row = {
            "layer_id": i, "name": "Linear", "longname": name, "N": n, "M": m, "Q": n / m, "rf": rf,
            "num_evals": m * rf, "alpha": alpha, "xmin": 1.0, "xmax": lam_max, "D": 0.05, "sigma": 0.1,
            "num_pl_spikes": 5, "lambda_max": lam_max, "log_spectral_norm": np.log10(lam_max),
            "norm": 10.0, "log_norm": rng.uniform(0.5, 2.0), "alpha_weighted": alpha * np.log10(lam_max),
            "log_alpha_norm": rng.uniform(1.0, 4.0), "stable_rank": rng.uniform(2.0, 10.0),
            "entropy": rng.uniform(0.7, 0.99), "matrix_rank": m, "num_spikes": float(rng.integers(0, 6)),
            "sigma_mp": 1.0, "bulk_max": 4.0, "bulk_min": 0.1, "mp_softrank": rng.uniform(0.05, 0.5),
            "warning": "", "status": "success",
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=WW_COLUMNS)


def _finetuned_table(base: pd.DataFrame, seed_shift: pd.DataFrame, effect: dict, rng) -> pd.DataFrame:
    ft = base.copy()
    for metric in METRICS:
        ft[metric] = base[metric] + seed_shift[metric] + effect.get(metric, 0.0) + rng.normal(0, NOISE, len(base))
    head = ft["longname"] == "head"
    ft.loc[head, "M"] = HEAD_FT[2]  # replaced head: shape differs from the reference
    return ft


def write_run(run_dir: Path, record: dict, spectra: pd.DataFrame | None, base: pd.DataFrame | None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(record, indent=1))
    if spectra is not None:
        spectra.to_csv(run_dir / "spectra.csv", index=False)
    if base is not None:
        base.to_csv(run_dir / "spectra_base.csv", index=False)
    return run_dir


PRETRAINED = "/nonexistent/pretrained/model.safetensors"


def record_for(arm: str, level, level_index: int, seed: int, acc: float, diversity: bool,
               pretrained: str = PRETRAINED) -> dict:
    record = {
        "status": "complete", "exp": arm, "arm": arm, "level": level, "level_index": level_index,
        "variant": None, "seed": seed, "model": "vit_micro", "data": "digits",
        "pretrained": {"path": str(pretrained), "sha256": SHA},
        "metrics": {"test_acc": acc, "test_ece": 0.05, "test_loss": 0.3, "ood_acc": acc - 0.2,
                    "ood": {"gaussian_noise": acc - 0.25, "blur": acc - 0.15}},
        "wall_time_s": 12.5,
    }
    if diversity:
        vs = 1.5 + level_index
        record["diversity"] = {"vendi_pixel": 2 * vs, "vendi_embed": vs, "rho": 0.9, "weighted_vs": 0.9 * vs, "n": 100}
    return record


def make_study(
    root: Path,
    seeds=(0, 1),
    arms: dict | None = None,
    effects: dict | None = None,
    extras: bool = True,
    diversity: bool = False,
    pretrained: str = PRETRAINED,
) -> Path:
    """Write the study under root; returns root. `extras` adds runs the report must skip."""
    arms = ARMS if arms is None else arms
    effects = EFFECTS if effects is None else effects
    rng = np.random.default_rng(1234)
    base = _base_table(rng)
    for seed in seeds:
        shift = pd.DataFrame({m: rng.normal(0.0, 0.02, len(base)) for m in METRICS})
        write_run(
            root / "baseline" / "baseline" / f"seed{seed}",
            record_for("baseline", None, 0, seed, 0.90, diversity, pretrained),
            _finetuned_table(base, shift, {}, rng),
            base,
        )
        for arm, levels in arms.items():
            for idx, level in enumerate(levels, start=1):
                effect = effects.get((arm, level), {})
                acc = 0.90 - 0.01 * idx if arm == "weight_decay" else 0.90 + 0.01 * idx
                write_run(
                    root / arm / f"level{level}" / f"seed{seed}",
                    record_for(arm, level, idx, seed, acc, diversity, pretrained),
                    _finetuned_table(base, shift, effect, rng),
                    base,
                )
    if extras:
        failed = record_for("dropout", 0.3, 9, 0, 0.0, False) | {"status": "failed", "error": "CUDA OOM"}
        write_run(root / "dropout" / "failed" / "seed0", failed, None, None)
        running = record_for("dropout", 0.3, 9, 1, 0.0, False) | {"status": "running"}
        write_run(root / "dropout" / "running" / "seed1", running, None, None)
        write_run(root / "dropout" / "nospectra" / "seed0", record_for("dropout", 0.7, 4, 0, 0.9, False), None, None)
        orphan = record_for("dropout", 0.1, 1, 7, 0.9, False)
        write_run(root / "dropout" / "orphan" / "seed7", orphan, _finetuned_table(base, shift, {}, rng), base)
        bad = root / "broken" / "seed0"
        bad.mkdir(parents=True)
        (bad / "run.json").write_text("{not json")
    return root


SKIPPED_RUNS = {
    "dropout/failed/seed0": "status=failed: CUDA OOM",
    "dropout/running/seed1": "status=running",
    "dropout/nospectra/seed0": "no spectra.csv",
    "dropout/orphan/seed7": "no matching baseline",
    "broken/seed0": "unreadable run.json",
}
