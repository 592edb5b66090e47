"""Starting checkpoints: builtin (pretrained here on the dataset's source task), hub, or a local file.

Builtin and hub weights are materialised once under ``<cache>/pretrained/<key>/model.safetensors``
with a ``pretrained.json`` (config + sha256) beside it, so ``wdiv.analyze`` always has a file to
compare the fine-tuned weights against. A file lock makes parallel jobs build it only once.
A from-scratch run (``model.pretrained=none``) keeps its seeded initial weights in its own run
directory instead (:func:`record_initial`).

run.json ``pretrained`` is ``{path, sha256, kind}``, and a checkpoint in the cache is recorded
relative to it (``relative_to: "cache"``, see :mod:`wdiv.references`), so the run directory can be
analysed on another machine with its own cache; ``kind`` says where the weights came from:
``builtin`` (pretrained here on the source task), ``hub`` (timm's download), ``file`` (the
weights file named by ``model.pretrained``) or ``initial`` (from scratch: the model as created
with the run's seed, ``path`` relative to the run directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from wdiv.errors import ConfigError
from wdiv.io import sha256_file, write_json
from wdiv.locks import locked
from wdiv.references import pretrained_record
from wdiv.training import text
from wdiv.training.checkpoint import load_weights, save_weights
from wdiv.training.splits import cache_root
from wdiv.training.text import models as text_models

log = logging.getLogger(__name__)

BUILTIN_DATA_KEYS = ("name", "source_classes", "image_size", "split_seed", "val_fraction", "test_fraction")
# The pretraining numerics' version, part of the cache key: bump it whenever the loop draws its randomness
# differently, so a cache built by older code is never taken for this code's checkpoint (2: per-sample seeds).
BUILDER_VERSION = 2


def resolve(cfg, rt) -> tuple[Path, dict] | None:
    """(local path, run.json ``pretrained`` record) of the starting weights, building or
    downloading them if needed; None for a from-scratch run."""
    spec = str(cfg.model.pretrained)
    if spec == "none":
        return None
    cache = cache_root(cfg.paths)
    if spec == "builtin":
        path = ensure_builtin(cfg, rt)
    elif spec == "hub" and text.is_text_model(cfg.model):  # a Hugging Face encoder (hub id or local dir)
        path = text_models.ensure_hf(cfg.model, cache)
    elif spec == "hub":
        path = ensure_hub(cfg)
    else:
        from wdiv.training.models import local_weights_path

        path = local_weights_path(spec).resolve()
        return path, {"path": str(path), "sha256": sha256_file(path), "kind": "file"}
    meta = json.loads((path.parent / "pretrained.json").read_text())
    return path, pretrained_record(path, meta["sha256"], spec, cache)


def record_initial(model, path: Path) -> dict:
    """Keep a from-scratch model's starting weights at ``path`` (in its run directory) as its reference.

    Written once, atomically. When the file is already there (a restarted run) it is never
    overwritten: its weights are loaded into ``model`` instead, so the recorded initial weights
    are exactly what training starts from even if this process's seeded init came out different.
    A file that no longer reads (truncated, garbage) is rewritten from the seed's init, with a warning.
    Returns run.json ``pretrained`` with ``path`` relative to the run directory.
    """
    import torch

    path = Path(path)
    kept = None
    if path.exists():
        try:
            kept = load_weights(path)
        except Exception as err:  # damaged (truncated, garbage): the seed's init is the same weights
            log.warning("%s: not a readable safetensors file (%s); rewritten from this seed's init", path, type(err).__name__)
    if kept is not None:
        fresh = model.state_dict()
        if kept.keys() != fresh.keys() or any(kept[k].shape != fresh[k].shape for k in kept):
            raise ConfigError(f"model.pretrained: {path} holds initial weights of another model; remove it or use trainer.resume=false")
        if not all(torch.equal(kept[k], fresh[k].detach().cpu()) for k in kept):
            log.warning("%s differs from this seed's fresh init (another torch/timm version?); starting from the recorded weights", path)
            model.load_state_dict(kept)
    else:
        save_weights(model, path)
    return {"path": path.name, "sha256": sha256_file(path), "kind": "initial"}


def builtin_spec(cfg) -> dict:
    """Everything that determines a builtin checkpoint (its cache key)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {
        "model": {k: model.get(k) for k in ("name", "kwargs", "img_size", "mean", "std", "pretrain")},
        "data": {k: data.get(k) for k in BUILTIN_DATA_KEYS},
        "builder": BUILDER_VERSION,
    }


def ensure_builtin(cfg, rt) -> Path:
    spec = builtin_spec(cfg)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cfg.paths) / "pretrained" / f"{cfg.model.id}-{spec['data']['name']}-{key}"
    weights = folder / "model.safetensors"
    with locked(folder.parent / f"{folder.name}.lock"):
        if weights.exists() and (folder / "pretrained.json").exists():
            return weights
        log.warning("building the builtin pretrained checkpoint for model %s on the %s source task (first use; cached in %s)", cfg.model.id, spec["data"]["name"], folder)
        info = _pretrain(cfg, rt, weights)
        write_json(folder / "pretrained.json", {"kind": "builtin", "config": spec, "sha256": sha256_file(weights), **info})
    return weights


def _pretrain(cfg, rt, weights: Path) -> dict:
    """Train the model from scratch on the source task with the ordinary loop.

    Every source-task image is used (train, val and test splits of the source classes): they
    share no class with the target task, and the checkpoint is only a starting point.
    """
    import torch
    from torch.utils.data import ConcatDataset

    from wdiv.training import models
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits, transformed
    from wdiv.training.loop import Schedule, fit
    from wdiv.training.optim import build_optimizer

    pre = cfg.model.pretrain
    seed = int(pre.seed)
    splits = build_splits(cfg.data, cfg.paths, task="source")
    torch.manual_seed(seed)
    model_cfg = OmegaConf.merge(cfg.model, {"dropout": 0.0, "dropout_at": "head"})
    model = models.create(model_cfg, splits.num_classes).to(rt.device)
    mean, std = models.normalisation(model, cfg.model)
    per_image, finish = build_pipeline(OmegaConf.create({"policy": "none"}), mean=mean, std=std, size=int(cfg.model.img_size), raw_size=splits.image_size, train=False)
    optim_cfg = OmegaConf.create({"name": "adamw", "lr": float(pre.lr), "weight_decay": float(pre.weight_decay), "eps": 1e-8})
    optimizer = build_optimizer(model, optim_cfg)
    sched = Schedule(epochs=int(pre.epochs), batch_size=int(pre.batch_size), lr_schedule="cosine")
    source = ConcatDataset([splits.train, splits.val, splits.test])
    progress = fit(model, optimizer, transformed(source, per_image), None, sched, rt, seed=seed, desc="pretrain ", finish=finish)
    last = progress.history[-1]
    log.info("builtin checkpoint: source-task train accuracy %.3f after %d epochs", last["train_acc"], last["epoch"])
    save_weights(model, weights)
    return {"source_train_acc": last["train_acc"], "n_source": len(source), "epochs": int(pre.epochs)}


def hub_folder(cfg) -> Path:
    """Where the hub weights of ``cfg.model.name`` are cached (whether or not they are there yet)."""
    return cache_root(cfg.paths) / "pretrained" / f"hub-{str(cfg.model.name).replace('/', '_')}"


def ensure_hub(cfg) -> Path:
    """Download timm's pretrained weights once (network) and keep them as safetensors in the cache."""
    import timm

    name = str(cfg.model.name)
    if not timm.is_model(name):
        raise ConfigError(f"model.name: unknown timm model {name!r}")
    folder = hub_folder(cfg)
    weights = folder / "model.safetensors"
    with locked(folder.parent / f"{folder.name}.lock"):
        if not (weights.exists() and (folder / "pretrained.json").exists()):
            log.warning("downloading pretrained weights of %s from the hub (first use; cached in %s)", name, folder)
            model = timm.create_model(name, pretrained=True)
            save_weights(model, weights)
            write_json(folder / "pretrained.json", {"kind": "hub", "config": {"name": name}, "sha256": sha256_file(weights)})
    return weights
