"""What `wdiv.analyze` analyses: the CLI paths expanded into targets, and their references.

A path is a weights file, a checkpoint directory (the Hugging Face layouts
wdiv.spectral.weights.find_checkpoint reads, or a PEFT adapter) or a tree of them; below a tree,
resume checkpoints/, the executor's job folder and (without --snapshots) training snapshots/ are
never targets. --base attaches a reference (explicit, run.json's pretrained.path, or an adapter's
local base model) with its sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from wdiv.analysis_outputs import Target, outputs_for
from wdiv.errors import InputError
from wdiv.io import sha256_file
from wdiv.references import resolve_pretrained
from wdiv.spectral.weights import ADAPTER_CONFIG, checkpoint_files, find_adapter, find_checkpoint

WEIGHT_FILE = "model.safetensors"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SNAPSHOTS = "snapshots"  # training snapshots of a run dir (wdiv.training.snapshots)
JOBS_FOLDER = ".wdiv-analyze-jobs"  # --executor's logs (wdiv.analysis_executor), below the analysed directory
# Files whose folder is a checkpoint directory (wdiv.spectral.weights.find_checkpoint reads them).
MARKERS = ("model.safetensors", "*.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "model.pt", ADAPTER_CONFIG)  # the last: a PEFT adapter directory (wdiv.spectral.lora)


def _dir_target(d: Path, out: str | None) -> Target:
    """A checkpoint directory: model.safetensors is the weights when there is one (a run dir),
    otherwise the directory itself (sharded or PyTorch weights); outputs go beside them."""
    found = find_checkpoint(d)
    weights = found if found is not None and found.name == WEIGHT_FILE else d
    csv, summ = outputs_for(weights, out)
    return Target(weights, csv, summ, run_dir=d if (d / "run.json").is_file() else None)


def _snapshot_run(d: Path) -> Path | None:
    """The run dir of ``<run>/snapshots/epoch<E>/`` (a run.json two levels up), else None."""
    run = d.parent.parent
    if d.parent.name == SNAPSHOTS and d.name.startswith("epoch") and (run / "run.json").is_file():
        return run
    return None


def discover(paths: list[str], out: str | None = None, snapshots: bool = False) -> list[Target]:
    """Expand the CLI paths into targets; a path with nothing to analyse becomes an error target.

    Below a tree, resume checkpoints/ are never targets and training snapshots/ only with
    ``snapshots`` (each analysed in place, without a reference: the report takes the run's)."""
    targets: list[Target] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() or (not p.exists() and p.suffix in SUFFIXES):
            csv, summ = outputs_for(p, out)
            run_dir = p.parent if (p.parent / "run.json").is_file() and p.name == WEIGHT_FILE else None
            targets.append(Target(p, csv, summ, run_dir=run_dir))
            continue
        if not p.is_dir():
            targets.append(Target(p, p, p, error=f"{p}: no such file or directory"))
            continue
        if find_checkpoint(p) is not None or find_adapter(p) is not None:
            found = [p]
        else:
            found = sorted({f.parent for marker in MARKERS for f in p.rglob(marker) if f.is_file()
                            and (f.name != ADAPTER_CONFIG or find_adapter(f.parent) is not None)})
            found = [d for d in found if not {"checkpoints", JOBS_FOLDER} & set(d.relative_to(p).parts)
                     and (snapshots or SNAPSHOTS not in d.relative_to(p).parts)]
        if not found:
            targets.append(Target(p, p, p, error=f"{p}: no weights found (no {', '.join(MARKERS)} below it)"))
        for d in found:
            target = _dir_target(d, out if len(paths) == 1 and len(found) == 1 else None)
            target.snapshot_of = _snapshot_run(d)
            targets.append(target)
    return targets


def _adapter_base(folder: Path) -> Path | None:
    """An adapter's base_model_name_or_path when it names a local checkpoint (relative: to the adapter)."""
    try:
        name = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name:
        return None
    ref = Path(name) if Path(name).is_absolute() else folder / name
    return ref if ref.exists() and (ref.is_file() or find_checkpoint(ref) is not None) else None


def checkpoint_sha256(ref: Path) -> str:
    """sha256 of a reference: wdiv.io's for a file or safetensors shards (as run.json records it),
    else of the files the directory holds, in order (PyTorch files; an adapter's config and
    weights: its lora_alpha, r and patterns change dW as much as its factors do)."""
    files = checkpoint_files(ref)
    adapter = any(f.name == ADAPTER_CONFIG for f in files)
    if ref.is_file() or (not adapter and any(f.name.endswith(".safetensors") for f in files)):
        return sha256_file(ref)
    digest = hashlib.sha256()
    for f in files:
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


def attach_bases(targets: list[Target], base: str) -> None:
    """--base: an explicit reference for every target, or 'auto' = run.json's pretrained.path."""
    shas: dict[Path, str] = {}
    for t in targets:
        if t.error or t.snapshot_of is not None:  # a snapshot's reference is its run's
            continue
        if base != "auto":
            ref, sha = Path(base), None
        elif t.run_dir is None and find_adapter(t.weights) is not None:
            ref, sha = _adapter_base(t.weights), None
            if ref is None:
                t.error = (f"{t.weights / ADAPTER_CONFIG}: --base without a path needs its base_model_name_or_path "
                           "to be a local checkpoint")
                continue
        else:
            if t.run_dir is None:
                t.error = f"{t.weights}: --base without a path needs a run directory with run.json"
                continue
            try:
                pre = json.loads((t.run_dir / "run.json").read_text()).get("pretrained") or {}
            except (OSError, ValueError) as exc:
                t.error = f"{t.run_dir / 'run.json'}: unreadable ({exc})"
                continue
            if not pre.get("path"):
                t.error = f"{t.run_dir / 'run.json'}: no pretrained.path to use as --base"
                continue
            try:
                ref = resolve_pretrained(pre, t.run_dir)  # this machine's cache; a scratch run's own dir
            except InputError as exc:
                t.error = str(exc)
                continue
            sha = pre.get("sha256")
        if not ref.exists():
            t.error = f"{ref}: reference checkpoint not found (for {t.weights})"
            continue
        if sha is None:
            if ref not in shas:
                shas[ref] = checkpoint_sha256(ref)
            sha = shas[ref]
        t.base, t.base_sha = ref, sha
