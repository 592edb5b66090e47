"""One fine-tuning run, from a composed config to a complete run directory.

Run directory contract (see DESIGN.md): model.safetensors, config.yaml (resolved), history.csv,
checkpoints/, run.json (status running | complete | failed). Re-running the same command on
the same directory resumes from the last epoch checkpoint, or returns at once if complete.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wdiv.errors import ConfigError
from wdiv.io import write_json, write_text
from wdiv.training.checkpoint import load_resume, load_weights, save_resume, save_weights
from wdiv.training.loop import Progress, Runtime, Schedule, StopRequested, fit
from wdiv.training.recipe import recipe, semantic
from wdiv.training.validate import NUMERIC_ARMS, validate

log = logging.getLogger(__name__)

INITIAL = "initial.safetensors"  # a from-scratch run's starting weights (run.json pretrained.path)


def describe(cfg) -> dict:
    """The run.json fields that identify a run."""
    level = cfg.get("level")
    if level is not None and cfg.arm in NUMERIC_ARMS:
        try:
            level = float(level)
        except (TypeError, ValueError):
            pass
    synth_mode = str(cfg.synth.get("mode", "none")) if cfg.get("synth") is not None else "none"
    return {
        "exp": str(cfg.exp_name),
        "arm": str(cfg.arm),
        "level": level,
        "level_index": level_index(level, list(cfg.get("levels") or [])),
        "variant": None if synth_mode == "none" else synth_mode,
        "seed": int(cfg.seed),
        "model": str(cfg.model.id),
        "data": str(cfg.data.get("id") or cfg.data.name),
    }


def level_index(level, grid: list) -> int | None:
    """Position of ``level`` in its arm's grid (0 for an arm without levels); None when off-grid.

    Off-grid levels get no index rather than a made-up one, so two of them never share a place:
    the report orders numeric levels by their value, named ones by index and then name.
    """
    if level is None:
        return 0
    for i, g in enumerate(grid):
        if _same_level(level, g):
            return i
    return None


def _same_level(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        try:
            return float(a) == float(b)  # "5e-5" on the command line and 5.0e-5 in the grid
        except (TypeError, ValueError):
            return str(a) == str(b)
    return a == b


def runtime(trainer) -> Runtime:
    threads = int(trainer.threads)
    if threads > 0:
        torch.set_num_threads(threads)
    name = str(trainer.device)
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))
    workers = trainer.num_workers
    workers = (0 if device.type == "cpu" else min(8, os.cpu_count() or 1)) if workers == "auto" else int(workers)
    precision = str(trainer.precision)
    bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    return Runtime(device=device, num_workers=workers, bf16=bf16, progress=bool(trainer.progress))


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _previous(out_dir: Path, resolved: dict, resume: bool) -> dict | None:
    """The finished run.json if this exact run is already complete; clears the dir when not resuming."""
    config_path, run_path = out_dir / "config.yaml", out_dir / "run.json"
    if not config_path.exists():
        return None
    if not resume:
        log.warning("trainer.resume=false: starting %s afresh", out_dir)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        for name in ("model.safetensors", INITIAL, "history.csv", "run.json"):
            (out_dir / name).unlink(missing_ok=True)
        return None
    old = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    changed = _diff(semantic(old), semantic(resolved))
    if changed:
        raise ConfigError(f"{changed[0]}: differs from the run already in {out_dir} ({len(changed)} keys differ); use another paths.runs_dir or trainer.resume=false to overwrite")
    if run_path.exists():
        info = json.loads(run_path.read_text())
        if info.get("status") == "complete" and (out_dir / "model.safetensors").exists():
            if "recipe" not in info:  # finished before run.json recorded it: same config, same recipe
                info.update(recipe(old))
                write_json(run_path, info)
            return info
    return None


def write_history(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def run(cfg, out_dir: Path) -> dict:
    """Train, evaluate and write ``out_dir``; returns the run.json dict."""
    start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"status": "running", **describe(cfg)}
    try:
        validate(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        info.update(recipe(resolved))
        done = _previous(out_dir, resolved, bool(cfg.trainer.resume))
    except ConfigError as err:
        if not (out_dir / "config.yaml").exists():  # never overwrite the record of a run already there
            write_json(out_dir / "run.json", {**info, "status": "failed", "error": str(err)})
        raise
    if done is not None:
        log.info("already complete, nothing to do: %s", out_dir)
        _summary(done, out_dir)
        return done
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    write_json(out_dir / "run.json", info)
    try:
        info = _execute(cfg, out_dir, info, start)
    except StopRequested as stop:
        log.warning("%s; rerun the same command to resume", stop)
        write_json(out_dir / "run.json", {**info, "note": str(stop)})
        return info
    except BaseException as err:
        write_json(out_dir / "run.json", {**info, "status": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    _summary(info, out_dir)
    return info


def _execute(cfg, out_dir: Path, info: dict, start: float) -> dict:
    from wdiv.training import models, pretrained
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits, transformed
    from wdiv.training.evaluate import evaluate
    from wdiv.training.optim import build_optimizer

    rt = runtime(cfg.trainer)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    splits = build_splits(cfg.data, cfg.paths, task="target", synth_cfg=cfg.get("synth"), seed=seed)
    start_weights = pretrained.resolve(cfg, rt)
    if splits.synth:
        info["synth"] = splits.synth

    torch.manual_seed(seed)  # the fresh head's init depends on the seed only
    model = models.create(cfg.model, splits.num_classes)
    if start_weights is not None:
        models.load_backbone(model, load_weights(start_weights["path"]), start_weights["path"])
    else:  # from scratch: the seeded init is the reference the fine-tuned weights are compared with
        start_weights = pretrained.record_initial(model, out_dir / INITIAL)
    info["pretrained"] = start_weights
    model.to(rt.device)
    mean, std = models.normalisation(model, cfg.model)
    size = int(cfg.model.img_size)
    # per-image augmentation in the dataset; the one normalisation once per batch in the loop
    train_tf, finish = build_pipeline(cfg.aug, mean=mean, std=std, size=size, raw_size=splits.image_size, train=True)
    eval_tf, _ = build_pipeline(cfg.aug, mean=mean, std=std, size=size, raw_size=splits.image_size, train=False)

    if cfg.get("diversity") is not None and cfg.diversity.get("compute"):
        from wdiv.diversity import measure_training_set, pre_logits_encoder

        augmented = str(cfg.aug.policy) not in ("none", "")
        try:
            info["diversity"] = measure_training_set(
                real=splits.real_train if splits.real_train is not None else splits.train,
                train=splits.train,
                transform=train_tf if augmented else None,  # per-image augmentation, before normalisation
                encoder=pre_logits_encoder(model, mean, std, size=size),
                cfg=cfg.diversity,
                seed=seed,
            )
        except ConfigError:
            raise
        except Exception as err:  # an auxiliary measurement must not cost the training run
            log.warning("diversity not measured: %s: %s", type(err).__name__, err)
            info["diversity"] = {"error": f"{type(err).__name__}: {err}"}

    optimizer = build_optimizer(model, cfg.optim)
    ckpt_dir = out_dir / "checkpoints"
    progress = Progress()
    resumed = load_resume(ckpt_dir) if cfg.trainer.resume else None
    if resumed is not None:
        state, weights = resumed
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress(epoch=int(state["epoch"]), step=int(state["step"]), history=list(state["history"]))
        log.info("resuming %s after epoch %d", out_dir, progress.epoch)
    write_json(out_dir / "run.json", info)

    def checkpoint(p: Progress) -> None:
        save_resume(ckpt_dir, model=model, optimizer=optimizer, epoch=p.epoch, step=p.step, history=p.history)
        write_history(out_dir / "history.csv", p.history)

    t = cfg.trainer
    sched = Schedule(
        epochs=int(t.epochs),
        batch_size=int(t.batch_size),
        lr_schedule=str(cfg.optim.schedule),
        warmup_epochs=float(cfg.optim.get("warmup_epochs", 0.0)),
        stop_after_epoch=t.get("stop_after_epoch"),
    )
    fit(model, optimizer, transformed(splits.train, train_tf), transformed(splits.val, eval_tf), sched, rt, seed=seed, progress=progress, on_epoch_end=checkpoint, finish=finish)

    sets = {"test": transformed(splits.test, eval_tf), **{name: transformed(ds, eval_tf) for name, ds in splits.ood.items()}}
    results = evaluate(model, sets, rt, batch_size=int(t.eval_batch_size), finish=finish)
    ood = {name: results[name]["acc"] for name in splits.ood}
    info["metrics"] = {
        "test_acc": results["test"]["acc"],
        "test_ece": results["test"]["ece"],
        "test_loss": results["test"]["loss"],
        "ood_acc": sum(ood.values()) / len(ood) if ood else None,
        "ood": ood,
        "val_acc": progress.history[-1].get("val_acc") if progress.history else None,
    }
    save_weights(model, out_dir / "model.safetensors")
    info["epochs_done"] = progress.epoch
    info["device"] = str(rt.device)
    info["wall_time_s"] = round(time.time() - start, 3)
    info["status"] = "complete"
    write_json(out_dir / "run.json", info)
    return info


def _summary(info: dict, out_dir: Path) -> None:
    m = info.get("metrics") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    arm = info.get("arm") if info.get("level") is None else f"{info.get('arm')} {info.get('level')}"
    log.info(
        "done %s seed %s | test_acc %s | ece %s | ood_acc %s | wall %.1fs | %s",
        arm, info.get("seed"),
        fmt(m.get("test_acc")), fmt(m.get("test_ece")), fmt(m.get("ood_acc")), info.get("wall_time_s") or 0.0, out_dir,
    )
