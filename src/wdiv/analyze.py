"""python -m wdiv.analyze PATH [PATH ...]: spectra.csv (+ summary) beside every checkpoint.

PATH is a weights file (safetensors or PyTorch, told apart by their bytes), a run directory, a
checkpoint directory in the Hugging Face layout (model.safetensors, sharded *.safetensors with
their index, pytorch_model.bin, sharded pytorch_model-*.bin with pytorch_model.bin.index.json,
model.pt), or a tree of such directories (resume checkpoints/ excluded; training snapshots/ only
with --snapshots). argparse, not Hydra:
Hydra would take the paths for overrides. Every option is checked before any file is read;
the outputs and their record are wdiv.analysis_outputs'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

import numpy as np

from wdiv.analysis_outputs import Outcome, Target, esd_key, outputs_for, record_failure, stale_reason, write_outputs
from wdiv.analysis_args import build_parser, check_args
from wdiv.errors import ConfigError
from wdiv.io import sha256_file
from wdiv.spectral.weights import ADAPTER_CONFIG, checkpoint_files, find_adapter, find_checkpoint

log = logging.getLogger("wdiv.analyze")

WEIGHT_FILE = "model.safetensors"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Files whose folder is a checkpoint directory (wdiv.spectral.weights.find_checkpoint reads them).
SNAPSHOTS = "snapshots"  # training snapshots of a run dir (wdiv.training.snapshots)
MARKERS = ("model.safetensors", "*.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
           "model.pt", ADAPTER_CONFIG)  # the last: a PEFT adapter directory (wdiv.spectral.lora)


# ------------------------------------------------------------------ discovery


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
            found = [d for d in found if "checkpoints" not in d.relative_to(p).parts
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
    else of the PyTorch files the directory holds, in order."""
    files = checkpoint_files(ref)
    if ref.is_file() or any(f.name.endswith(".safetensors") for f in files):
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
            ref = Path(pre["path"])
            if not ref.is_absolute():  # relative to the run dir (a scratch run's initial.safetensors), never the cwd
                ref = t.run_dir / ref
            sha = pre.get("sha256")
        if not ref.exists():
            t.error = f"{ref}: reference checkpoint not found (for {t.weights})"
            continue
        if sha is None:
            if ref not in shas:
                shas[ref] = checkpoint_sha256(ref)
            sha = shas[ref]
        t.base, t.base_sha = ref, sha


# ------------------------------------------------------------------ analysis


def _set_threads(jobs: int) -> None:
    """Share the cores among `jobs` parallel checkpoints: torch's threads (the eigensolver's
    workers follow them) and, in a spawned worker process, numpy's BLAS threads too."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    torch.set_num_threads(threads)
    if jobs > 1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")  # process-wide: this process is one job


def _adapter_results(weights: Path, opts, merge_base: Path | None, stack: contextlib.ExitStack):
    """(results, hashes()) of a PEFT adapter directory: dW rows, + W + dW rows with its base."""
    from wdiv.spectral import lora
    from wdiv.spectral.weights import open_weights

    adapter = stack.enter_context(lora.LoraAdapter(weights))
    base = stack.enter_context(open_weights(merge_base)) if merge_base is not None else None
    return (lora.iter_adapter_results(adapter, opts, base),
            lambda: lora.adapter_hashes(adapter, lora.adapter_specs(adapter, opts)))


def analyse_checkpoint(weights: Path, opts, plot_dir: Path | None = None, progress: bool = False,
                       jobs: int = 1, save_esd: bool = False, hash_weights: bool = False,
                       merge_base: Path | None = None) -> Outcome:
    """Analyse one checkpoint; never raises for bad input: errors come back as lines.

    save_esd keeps each row's fitted eigenvalues (for esd.npz); hash_weights adds the
    weights_sha256 column (with --base, so the report can tell unchanged layers exactly).
    A PEFT adapter directory gives the rows of its updates dW; merge_base (its --base) adds W + dW."""
    from wdiv.spectral.api import iter_layer_results, results_frame
    from wdiv.spectral.weights import WeightsError, layer_hashes, open_weights, select_layers

    _set_threads(jobs)
    outcome = Outcome(esd={} if save_esd else None)
    rows = []
    hashes: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            if find_adapter(weights) is not None and find_checkpoint(weights) is None:
                results, adapter_hashes = _adapter_results(weights, opts, merge_base, stack)
            else:
                source = stack.enter_context(open_weights(weights))
                results, adapter_hashes = iter_layer_results(source, opts, progress=progress, desc=str(weights)), None
            if plot_dir is not None:
                plot_dir.mkdir(parents=True, exist_ok=True)
            for res in results:
                rows.append(res.row)
                if save_esd and res.evals is not None:
                    outcome.esd[esd_key(res.row)] = np.asarray(res.evals, dtype=np.float64)
                if res.error:
                    outcome.errors.append(f"{weights}: layer {res.row['longname']}: {res.error}")
                if plot_dir is not None and res.evals is not None:
                    from wdiv.spectral.plots import save_esd_figure

                    tag = f"_{res.row['slice_id']}" if "slice_id" in res.row else ""
                    tag += f"_{res.row['matrix']}" if "matrix" in res.row else ""
                    name = re.sub(r"[^\w.-]", "_", f"{res.row['layer_id']:04d}_{res.row['longname']}{tag}.png")
                    save_esd_figure(plot_dir / name, res.evals, res.row, res.rand_evals)
                    outcome.plots += 1
            if hash_weights and adapter_hashes is not None:
                hashes = adapter_hashes()
            elif hash_weights:
                specs = select_layers(source, pool=opts.pool, min_evals=opts.min_evals, max_evals=opts.max_evals,
                                      max_N=opts.max_N, include=opts.include, exclude=opts.exclude)
                hashes = layer_hashes(source, specs)
    except WeightsError as exc:
        outcome.errors.append(str(exc))
        return outcome
    except Exception as exc:  # anything unexpected still names the file and spares the others
        outcome.errors.append(f"{weights}: {type(exc).__name__}: {exc}")
        return outcome
    if not rows:
        outcome.errors.append(f"{weights}: no layer to analyse (nothing passed the layer selection)")
        return outcome
    outcome.df = results_frame(rows)
    if hash_weights:
        outcome.df["weights_sha256"] = outcome.df["longname"].map(hashes)
    return outcome


# ------------------------------------------------------------------ signals


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised where the main thread is, caught by main()."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _worker_init() -> None:
    """A --jobs worker leaves Ctrl-C to the parent (which ends the workers), so it prints nothing;
    tqdm's lock is a thread lock there: its default multiprocessing lock is a named semaphore that a
    killed worker would leave to the resource tracker (a 'leaked semaphore' warning)."""
    from tqdm.auto import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _run_all(jobs_in: dict, opts, plot_dirs: dict, jobs: int, progress: bool, save_esd: bool = False,
             hash_weights: bool = False, merge_bases: dict | None = None) -> Iterator[tuple[str, Outcome]]:
    """(key, Outcome) as each distinct weights path is analysed (once; in parallel with jobs > 1).
    Close it (contextlib.closing) so that an interrupted run ends its workers at once."""
    from tqdm.auto import tqdm

    merges = merge_bases or {}
    if jobs <= 1 or len(jobs_in) <= 1:
        for key in tqdm(jobs_in, desc="checkpoints", unit="ckpt", disable=not progress or len(jobs_in) < 2):
            yield key, analyse_checkpoint(jobs_in[key], opts, plot_dirs.get(key), progress=progress,
                                          save_esd=save_esd, hash_weights=hash_weights,
                                          merge_base=merges.get(key))
        return
    # spawn, not fork: a forked child can hang on the parent's OpenMP/BLAS thread state
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    try:
        futs = {pool.submit(analyse_checkpoint, path, opts, plot_dirs.get(key), False, jobs, save_esd, hash_weights,
                            merges.get(key)): key
                for key, path in jobs_in.items()}
        for fut in tqdm(as_completed(futs), total=len(futs), desc="checkpoints", unit="ckpt", disable=not progress):
            yield futs[fut], fut.result()
    except BaseException:  # interrupted (or closed early): end the workers now rather than wait for them
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # returns at once: its workers are gone
        raise
    pool.shutdown()


def _finish(t: Target, opts, res: Outcome, base_res: Outcome | None) -> tuple[bool, list[str]]:
    """Write t's outputs (or record that it failed) -> (written, the error lines of t itself)."""
    mine = list(res.errors) + [f"(reference) {e}" for e in (base_res.errors if base_res is not None else [])]
    if base_res is not None and base_res.df is None:
        line = f"{t.weights}: reference {t.base} could not be analysed, outputs not written"
        record_failure(t, mine + [line])
        return False, [*res.errors, line]
    if res.df is None:
        record_failure(t, mine)  # a good earlier record now says the last try failed: retried next time
        return False, list(res.errors)
    write_outputs(t, opts, res.df, base_res.df if base_res is not None else None, res.esd,
                  base_res.esd if base_res is not None else None, errors=mine)
    return True, list(res.errors)


def _analyse_targets(args, opts) -> int:
    targets = discover(args.paths, args.out, snapshots=args.snapshots)
    if args.out and len(targets) > 1:
        print(f"error: --out: needs a single checkpoint, {args.paths[0]} holds {len(targets)}", file=sys.stderr)
        return 2
    if args.base:
        attach_bases(targets, args.base)
    todo = []
    for t in targets:
        if t.error:
            continue
        stale = None if args.force else stale_reason(t, opts, args.save_esd)
        if not args.force and stale is None:
            log.info("%s: up to date, skipped (--force to redo)", t.csv)
            continue
        if stale is not None and stale.warn:  # names the file and why: "<file>: truncated (...): redone"
            log.warning("%s: redone", stale.reason)
        elif stale is not None:
            log.info("%s: redone (%s)", t.csv, stale.reason)
        todo.append(t)
    bases = {t.base_sha: t.base for t in todo if t.base is not None}
    work = {f"base:{sha}": path for sha, path in bases.items()}  # references first: targets written as they finish
    work.update({str(t.weights): t.weights for t in todo})
    plot_dirs = {str(t.weights): t.csv.parent / "esd" for t in todo} if args.plot else {}
    progress = not args.quiet and sys.stderr.isatty()
    results: dict[str, Outcome] = {}
    lines: dict[int, list[str]] = {}  # target index -> its error lines, printed in target order
    written = 0
    pending = list(todo)
    merges = {str(t.weights): t.base for t in todo if t.base is not None and find_adapter(t.weights) is not None}
    with contextlib.closing(_run_all(work, opts, plot_dirs, args.jobs, progress, save_esd=args.save_esd,
                                     hash_weights=bool(args.base), merge_bases=merges)) as outcomes:
        for key, outcome in outcomes:
            results[key] = outcome
            for t in [t for t in pending if str(t.weights) in results
                      and (t.base is None or f"base:{t.base_sha}" in results)]:
                pending.remove(t)
                ok, lines[todo.index(t)] = _finish(t, opts, results[str(t.weights)],
                                                   results.get(f"base:{t.base_sha}") if t.base is not None else None)
                written += ok
    errors = [t.error for t in targets if t.error] + [e for i in sorted(lines) for e in lines[i]]
    for sha in bases:
        errors.extend(f"(reference) {e}" for e in results[f"base:{sha}"].errors)
    for line in dict.fromkeys(errors):
        print(f"error: {line}", file=sys.stderr)
    skipped = len(targets) - len(todo) - sum(1 for t in targets if t.error)
    if not args.quiet:
        print(f"wdiv.analyze: {written} written, {skipped} up to date, {len(set(errors))} error(s)", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 1 some checkpoint failed (named on stderr), 2 bad options (one line, nothing
    read or written), 130 / 143 interrupted by SIGINT / SIGTERM (no traceback, no half file)."""
    in_main = threading.current_thread() is threading.main_thread()
    stops = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, _raise_interrupted) for s in stops} if in_main else {}
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s %(message)s")
        try:
            opts = check_args(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _analyse_targets(args, opts)
    except KeyboardInterrupt as exc:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C while we say goodbye: no traceback
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"wdiv.analyze: interrupted by {signal.Signals(signum).name}; every file written is complete, "
              "the same command goes on from there", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
