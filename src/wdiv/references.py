"""run.json ``pretrained``: how a run names its reference checkpoint portably, and how a reader
finds that checkpoint on this machine.

A checkpoint inside the cache (builtin, hub, Hugging Face encoders) is recorded by its sha256
and its path *relative to the cache* (``relative_to: "cache"``), so a run directory analysed on
another machine finds the checkpoint in that machine's cache (``$WDIV_CACHE``, else
``~/.cache/wdiv``), even under another folder name (looked up by sha256). A file outside the
cache keeps its absolute path; a from-scratch run's ``initial.safetensors`` is relative to its
run directory. Older run.json files (absolute cache paths) still read; when that path is gone,
the local cache is searched by sha256 too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from wdiv.errors import InputError

CACHE = "cache"  # run.json pretrained.relative_to


def default_cache() -> Path:
    """``$WDIV_CACHE``, else ``~/.cache/wdiv`` (what wdiv.train uses unless paths.cache_dir says otherwise)."""
    return Path(os.environ.get("WDIV_CACHE") or "~/.cache/wdiv").expanduser()


def pretrained_record(path: str | os.PathLike, sha256: str, kind: str, cache: str | os.PathLike) -> dict:
    """run.json ``pretrained`` for ``path``: relative to ``cache`` when inside it, else absolute."""
    path = Path(path).expanduser().resolve()
    try:
        relative = path.relative_to(Path(cache).expanduser().resolve())
    except ValueError:
        return {"path": str(path), "sha256": sha256, "kind": kind}
    return {"path": relative.as_posix(), "relative_to": CACHE, "sha256": sha256, "kind": kind}


def resolve_pretrained(pre: dict, run_dir: str | os.PathLike | None, cache: str | os.PathLike | None = None) -> Path:
    """The file run.json ``pretrained`` refers to, on this machine (it may not exist: the caller
    names it). A cache checkpoint whose recorded sha256 is not the one at its path is looked up
    by sha256 among the cache's checkpoints (their ``pretrained.json``); InputError, naming the file,
    when only a different checkpoint is there."""
    root = Path(cache).expanduser() if cache is not None else default_cache()
    path = Path(str(pre["path"]))
    sha = pre.get("sha256")
    if pre.get("relative_to") == CACHE:
        candidate = root / path
        recorded = _recorded_sha(candidate)
        if candidate.exists() and recorded in (sha, None):
            return candidate
        found = _find_by_sha(root, sha, path.name)
        if found is None and candidate.exists():  # never compare against another checkpoint
            raise InputError(f"{candidate}: holds sha256 {str(recorded)[:12]}..., not the {str(sha)[:12]}... run.json "
                             f"records (another build of it?); point WDIV_CACHE at the cache the run was trained with")
        return found or candidate
    if not path.is_absolute():  # a scratch run's initial.safetensors: beside run.json, never the cwd
        return Path(run_dir) / path if run_dir is not None else path
    if not path.exists() and sha:  # an older run.json from another machine
        return _find_by_sha(root, sha, path.name) or path
    return path


def _recorded_sha(weights: Path) -> str | None:
    """The sha256 in the ``pretrained.json`` beside a cache checkpoint (None: no record)."""
    try:
        return json.loads((weights.parent / "pretrained.json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _find_by_sha(root: Path, sha: str | None, name: str) -> Path | None:
    if not sha:
        return None
    for record in sorted((root / "pretrained").glob("*/pretrained.json")):
        weights = record.parent / name
        if weights.exists() and _recorded_sha(weights) == sha:
            return weights
    return None
