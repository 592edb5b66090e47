"""One fine-tuning run, from a composed config to a complete run directory.

Run directory contract (see DESIGN.md): model.safetensors, config.yaml (resolved), history.csv,
checkpoints/, run.json (status running | complete | failed | interrupted), written last, whose
``files`` describe the weights (records.describe). Re-running the same command on the same
directory resumes from the last epoch checkpoint, or returns at once if complete *and* its
weights still match run.json's record; a damaged or missing file is redone, never reused.
A config error is raised before anything is written.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wdiv import records
from wdiv.errors import ConfigError, InputError
from wdiv.io import write_json, write_text
from wdiv.training.checkpoint import STATE, damaged, load_resume, load_weights, save_resume, save_weights
from wdiv.training import snapshots
from wdiv.training.interrupts import Interrupted
from wdiv.training.loop import Progress, Runtime, Schedule, StopRequested, fit
from wdiv.training.rebuild import evaluation_sets, run_metrics
from wdiv.training.recipe import recipe, semantic
from wdiv.training.splits import data_id
from wdiv.training.validate import NUMERIC_ARMS, validate
from wdiv.variants import variant

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
    synth = cfg.get("synth")
    synth_variant = None if synth is None else variant(synth.get("mode", "none"), synth.get("filter", False))
    return {
        "exp": str(cfg.exp_name),
        "arm": str(cfg.arm),
        "level": level,
        "level_index": level_index(level, list(cfg.get("levels") or [])),
        "variant": synth_variant,
        "seed": int(cfg.seed),
        "model": str(cfg.model.id),
        "data": data_id(cfg.data),
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


def runtime(trainer, cpus: int) -> Runtime:
    """The Runtime ``trainer`` asks for; ``cpus`` is what the entry point found this process may
    use (wdiv.cpus.available_cpus: SLURM's or the affinity mask's count), never asked here."""
    threads = int(trainer.threads)
    torch.set_num_threads(threads if threads > 0 else max(1, int(cpus)))
    name = str(trainer.device)
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))
    workers = trainer.num_workers
    workers = (0 if device.type == "cpu" else min(8, max(0, int(cpus) - 1))) if str(workers) == "auto" else int(workers)
    precision = str(trainer.precision)
    bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    return Runtime(device=device, num_workers=workers, bf16=bf16, progress=show_progress(trainer.progress))


def is_convolutional(model: torch.nn.Module) -> bool:
    """More than one 2-d convolution: a CNN (a ViT has just its patch embedding)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def use_channels_last(trainer, model: torch.nn.Module, rt: Runtime) -> bool:
    """trainer.channels_last: auto = CNNs on CUDA (NHWC convolutions); true / false force it."""
    setting = str(trainer.get("channels_last", "auto")).lower()
    if setting == "auto":
        return rt.device.type == "cuda" and is_convolutional(model)
    return setting == "true"


def show_progress(setting) -> bool:
    """trainer.progress: auto (default) draws bars only when stderr is a terminal; true/false force."""
    if str(setting).lower() == "auto":
        import sys

        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(setting)


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


WEIGHT_FILES = ("model.safetensors", INITIAL)  # what run.json ``files`` must vouch for


def _previous(out_dir: Path, resolved: dict, resume: bool) -> dict | None:
    """The finished run.json if this exact run is already complete; clears the dir when not resuming."""
    config_path, run_path = out_dir / "config.yaml", out_dir / "run.json"
    if not config_path.exists():
        return None
    if not resume:
        log.warning("trainer.resume=false: starting %s afresh", out_dir)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(out_dir / snapshots.DIR, ignore_errors=True)
        for name in ("model.safetensors", INITIAL, "history.csv", "run.json"):
            (out_dir / name).unlink(missing_ok=True)
        return None
    try:
        old = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
        if not isinstance(old, dict):
            raise ValueError("not a mapping")
    except Exception as err:  # yaml and omegaconf raise several types
        raise InputError(f"{config_path}: not a readable config ({type(err).__name__}); trainer.resume=false starts over") from None
    changed = _diff(semantic(old), semantic(resolved))
    if changed:
        raise ConfigError(f"{changed[0]}: differs from the run already in {out_dir} ({len(changed)} keys differ); use another paths.runs_dir or trainer.resume=false to overwrite")
    if not run_path.exists():
        return None
    try:
        info = records.read_json(run_path)
    except ValueError as err:
        log.warning("%s; not taken as complete, resuming from checkpoints/", err)
        return None
    if info.get("status") != "complete":
        return None
    reason = _damaged_output(out_dir, info)
    if reason:
        log.warning("%s; run.json says complete, redoing it from checkpoints/", reason)
        return None
    if snapshots.repair(out_dir, info):
        write_json(run_path, info)
    every = int((resolved.get("trainer") or {}).get("snapshot_every") or 0)
    if every and int((info.get("snapshots") or {}).get("every") or 0) != every:
        log.warning("%s is complete without trainer.snapshot_every=%d snapshots; trainer.resume=false retrains it with them", out_dir, every)
    if "recipe" not in info:  # finished before run.json recorded it: same config, same recipe
        info.update(recipe(old))
        write_json(run_path, info)
    return info


def _damaged_output(out_dir: Path, info: dict) -> str | None:
    """Why the weights of a 'complete' run may not be used (naming the file), or None."""
    files = info.get("files") if isinstance(info.get("files"), dict) else {}
    for name in WEIGHT_FILES:
        entry = files.get(name)
        if entry is None and not (name == "model.safetensors" or (out_dir / name).exists()):
            continue  # initial.safetensors: only from-scratch runs have it
        reason = records.check(out_dir / name, entry)  # no entry (older run): it must at least parse
        if reason:
            return f"{out_dir / name}: {reason}"
    return None


def _describe_outputs(out_dir: Path) -> dict:
    """run.json ``files``: the record of what this run wrote for other stages."""
    files = {}
    for name in (*WEIGHT_FILES, "history.csv"):
        if (out_dir / name).is_file():
            files[name] = records.describe(out_dir / name)
    return files


def write_history(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def run(cfg, out_dir: Path, *, cpus: int = 1) -> dict:
    """Train, evaluate and write ``out_dir``; returns the run.json dict.

    Raises ConfigError before writing anything when the config is bad, InputError naming the
    file when a resume state or an earlier run's record is damaged, and
    :class:`~wdiv.training.interrupts.Interrupted` (run.json status "interrupted") after a stop
    signal; the same call then resumes. ``cpus``: the CPUs the entry point found for this
    process (threads for ``trainer.threads=0``, workers for ``trainer.num_workers=auto``).
    """
    start = time.time()
    out_dir = Path(out_dir)
    info = {"status": "running", **describe(cfg)}
    validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    info.update(recipe(resolved))
    done = _previous(out_dir, resolved, bool(cfg.trainer.resume))
    if done is not None:
        log.info("already complete, nothing to do: %s", out_dir)
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(resolved))
    write_json(out_dir / "run.json", info)
    try:
        info = _execute(cfg, out_dir, info, start, cpus)
    except StopRequested as stop:  # the test hook: as if killed, run.json stays "running"
        log.warning("%s; rerun the same command to resume", stop)
        write_json(out_dir / "run.json", {**info, "note": str(stop)})
        return info
    except Interrupted as stop:
        if stop.epoch is None:  # before training started: the resume point is what checkpoints/ holds
            stop.epoch = _resume_epoch(out_dir / "checkpoints")
        write_json(out_dir / "run.json", {**info, "status": "interrupted", "interrupted": {"signal": stop.name, "after_epoch": stop.epoch}})
        raise
    except BaseException as err:
        write_json(out_dir / "run.json", {**info, "status": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    return info


def _resume_epoch(ckpt_dir: Path) -> int:
    try:
        return int(load_resume(ckpt_dir)[0]["epoch"])
    except Exception:  # none, or damaged: the rerun will say which
        return 0


def _execute(cfg, out_dir: Path, info: dict, start: float, cpus: int) -> dict:
    from wdiv.training import models, pretrained
    from wdiv.training.augment import build_pipeline
    from wdiv.training.data import build_splits, transformed
    from wdiv.training.loop import compile_model, evaluate
    from wdiv.training.optim import build_optimizer

    rt = runtime(cfg.trainer, cpus)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    splits = build_splits(cfg.data, cfg.paths, task="target", synth_cfg=cfg.get("synth"), seed=seed)
    start_weights = pretrained.resolve(cfg, rt)
    if splits.synth:
        info["synth"] = splits.synth
    info.update(splits.run_info)  # e.g. text: label order, tokenizer, EDA

    torch.manual_seed(seed)  # the fresh head's init depends on the seed only
    model = models.create(cfg.model, splits.num_classes)
    if start_weights is not None:
        start_path, start_weights = start_weights
        models.load_backbone(model, load_weights(start_path), start_path)
    else:  # from scratch: the seeded init is the reference the fine-tuned weights are compared with
        start_weights = pretrained.record_initial(model, out_dir / INITIAL)
    info["pretrained"] = start_weights
    model.to(rt.device)
    rt.channels_last = use_channels_last(cfg.trainer, model, rt)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
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
        try:
            model.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
            progress = Progress(epoch=int(state["epoch"]), step=int(state["step"]), history=list(state["history"]))
        except Exception as err:  # parseable, but not this run's model or optimizer
            raise damaged(ckpt_dir / STATE, f"does not fit this run ({type(err).__name__})") from None
        log.info("resuming %s after epoch %d", out_dir, progress.epoch)
    write_json(out_dir / "run.json", info)

    every = int(cfg.trainer.get("snapshot_every") or 0)

    def checkpoint(p: Progress) -> None:
        if snapshots.due(p.epoch, every):  # before the resume state: a kill in between replays this epoch
            save_weights(model, out_dir / snapshots.relative_path(p.epoch))
        save_resume(ckpt_dir, model=model, optimizer=optimizer, epoch=p.epoch, step=p.step, history=p.history)
        write_history(out_dir / "history.csv", p.history)

    t = cfg.trainer
    sched = Schedule(
        epochs=int(t.epochs),
        batch_size=int(t.batch_size),
        lr_schedule=str(cfg.optim.schedule),
        warmup_epochs=float(cfg.optim.get("warmup_epochs", 0.0)),
        stop_after_epoch=t.get("stop_after_epoch"),
        eval_batch_size=int(t.eval_batch_size),
    )
    net = compile_model(model, bool(t.get("compile", False)))  # forward only; checkpoints save ``model``
    try:
        fit(net, optimizer, transformed(splits.train, train_tf), transformed(splits.val, eval_tf), sched, rt, seed=seed, progress=progress, on_epoch_end=checkpoint, finish=finish)
        results = evaluate(net, evaluation_sets(splits, eval_tf), rt, batch_size=int(t.eval_batch_size), finish=finish)
    except Interrupted as stop:
        stop.epoch = progress.epoch  # what checkpoints/ holds: the resume point
        raise
    info["metrics"] = run_metrics(results, list(splits.ood), progress.history[-1].get("val_acc") if progress.history else None)
    save_weights(model, out_dir / "model.safetensors")
    write_history(out_dir / "history.csv", progress.history)  # also when resumed at the last epoch
    info["files"] = _describe_outputs(out_dir)
    if every or (out_dir / snapshots.DIR).is_dir():
        info["snapshots"] = snapshots.describe(out_dir, every, progress.epoch)
    info["epochs_done"] = progress.epoch
    info["device"] = str(rt.device)
    info["wall_time_s"] = round(time.time() - start, 3)
    info["status"] = "complete"
    write_json(out_dir / "run.json", info)
    return info


def summary(info: dict, out_dir: Path) -> str:
    """One result line for a finished run (the CLI prints it on stdout)."""
    m = info.get("metrics") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    arm = info.get("arm") if info.get("level") is None else f"{info.get('arm')} {info.get('level')}"
    wall = info.get("wall_time_s") or 0.0
    return (
        f"{info.get('status')} {arm} seed {info.get('seed')} | test_acc {fmt(m.get('test_acc'))} | ece {fmt(m.get('test_ece'))}"
        f" | ood_acc {fmt(m.get('ood_acc'))} | wall {wall:.1f}s | {out_dir}"
    )
