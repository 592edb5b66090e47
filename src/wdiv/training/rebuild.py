"""A finished run's model and evaluation data, rebuilt from its saved config.yaml.

The same builders training uses (data.build_splits, models.create, augment.build_pipeline) and
the same evaluation (loop.evaluate), so weights evaluated here - a soup of several runs, say -
score exactly as the runner scores a run's final weights. The runner takes :func:`evaluation_sets`
and :func:`run_metrics` from here too, so there is one definition of run.json ``metrics``.

The validation, test and OOD splits depend on the data config alone (``data.split_seed``), never
on the run seed; synthetic data only ever enters the training split, so it is not rebuilt here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from wdiv.errors import InputError
from wdiv.training.loop import Runtime, evaluate
from wdiv.training.splits import Splits, transformed

CONFIG = "config.yaml"


def load_config(run_dir: Path) -> DictConfig:
    """A run's resolved config; InputError naming the file when it is missing or not a mapping."""
    path = Path(run_dir) / CONFIG
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except Exception as err:  # yaml and omegaconf raise several types
        raise InputError(f"{path}: not a readable config ({type(err).__name__})") from None
    if not isinstance(cfg, DictConfig):
        raise InputError(f"{path}: not a mapping")
    return cfg


def evaluation_sets(splits: Splits, eval_tf) -> dict:
    """The sets a run is scored on: ``test`` and every OOD set, with the evaluation transform."""
    return {"test": transformed(splits.test, eval_tf), **{name: transformed(ds, eval_tf) for name, ds in splits.ood.items()}}


def run_metrics(results: dict[str, dict[str, float]], ood_names, val_acc: float | None) -> dict:
    """run.json ``metrics`` from :func:`wdiv.training.loop.evaluate`'s results."""
    ood = {name: results[name]["acc"] for name in ood_names}
    return {
        "test_acc": results["test"]["acc"],
        "test_ece": results["test"]["ece"],
        "test_loss": results["test"]["loss"],
        "ood_acc": sum(ood.values()) / len(ood) if ood else None,
        "ood": ood,
        "val_acc": val_acc,
    }


@dataclass
class Evaluator:
    """One model of a run's architecture plus its evaluation data: load weights, then score them."""

    model: torch.nn.Module
    splits: Splits
    eval_tf: object
    finish: object
    rt: Runtime
    batch_size: int

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Put ``weights`` (a full state dict of this architecture) into the model."""
        self.model.load_state_dict(weights)

    def val_acc(self) -> float:
        """Accuracy on the run's validation split (as the loop scores it after every epoch)."""
        results = evaluate(self.model, {"val": transformed(self.splits.val, self.eval_tf)}, self.rt, batch_size=self.batch_size, finish=self.finish)
        return results["val"]["acc"]

    def metrics(self, val_acc: float | None = None) -> dict:
        """run.json ``metrics`` of the loaded weights (test, ECE, loss, OOD sets)."""
        results = evaluate(self.model, evaluation_sets(self.splits, self.eval_tf), self.rt, batch_size=self.batch_size, finish=self.finish)
        return run_metrics(results, list(self.splits.ood), val_acc)


def evaluator(cfg: DictConfig, rt: Runtime) -> Evaluator:
    """Model and evaluation data of the run whose resolved config is ``cfg`` (weights not loaded).

    Dropout and augmentation settings do not matter here: the model is scored in eval mode and
    the evaluation pipeline has no augmentation.
    """
    from wdiv.training import models
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits

    splits = build_splits(cfg.data, cfg.paths, task="target", synth_cfg=None, seed=int(cfg.seed))
    model = models.create(cfg.model, splits.num_classes).to(rt.device)
    mean, std = models.normalisation(model, cfg.model)
    eval_tf, finish = build_pipeline(cfg.aug, mean=mean, std=std, size=int(cfg.model.img_size), raw_size=splits.image_size, train=False)
    return Evaluator(model, splits, eval_tf, finish, rt, int(cfg.trainer.eval_batch_size))
