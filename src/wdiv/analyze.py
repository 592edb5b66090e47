"""python -m wdiv.analyze PATH [PATH ...]: spectra.csv (+ summary) beside every checkpoint.

PATH is a weights file (safetensors or PyTorch, told apart by their bytes), a run directory, a
checkpoint directory in the Hugging Face layout (model.safetensors, sharded *.safetensors with
their index, pytorch_model.bin, sharded pytorch_model-*.bin with pytorch_model.bin.index.json,
model.pt), or a tree of such directories (resume checkpoints/ excluded; training snapshots/ only
with --snapshots). argparse, not Hydra:
Hydra would take the paths for overrides. Every option is checked before any file is read;
the outputs and their record are wdiv.analysis_outputs'; --executor slurm|submitit-local sends the
checkpoints to a job array (wdiv.analysis_executor), --summary writes wdiv.analysis_population's table.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

import numpy as np

from wdiv.analysis_args import build_parser, check_args, device_problem
from wdiv.analysis_executor import ChunkReport, run_jobs, spec_from_args
from wdiv.analysis_outputs import Outcome, Target, esd_key, record_failure, stale_reason, write_outputs
from wdiv.analysis_population import population_root, write_population
from wdiv.analysis_reference_cache import shared_reference
from wdiv.analysis_targets import attach_bases, discover
from wdiv.cpus import available_cpus
from wdiv.errors import ConfigError
from wdiv.spectral.weights import find_adapter, find_checkpoint, open_weights

log = logging.getLogger("wdiv.analyze")

REFERENCE_CACHE = "references"  # below the command's jobs folder: the references its jobs share

# ------------------------------------------------------------------ analysis


def _set_threads(jobs: int) -> int:
    """Share the cores among `jobs` parallel checkpoints -> the eigensolver's threads for one; in a
    spawned worker process numpy's BLAS threads follow the share too."""
    cores = available_cpus()  # the job's CPUs: SLURM_CPUS_PER_TASK, else the affinity mask
    threads = max(1, (cores or 1) // max(1, jobs))
    if jobs > 1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")  # process-wide: this process is one job
    return threads


def _adapter_results(weights: Path, opts, merge_base: Path | None, stack: contextlib.ExitStack):
    """(results, hashes()) of a PEFT adapter directory: dW rows, + W + dW rows with its base."""
    from wdiv.spectral import lora  # deferred like the engine's other heavy modules (api, esd)

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
    from wdiv.spectral.weights import WeightsError, layer_hashes, select_layers

    threads = _set_threads(jobs)
    outcome = Outcome(esd={} if save_esd else None)
    rows = []
    hashes: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            if find_adapter(weights) is not None and find_checkpoint(weights) is None:
                results, adapter_hashes = _adapter_results(weights, opts, merge_base, stack)
            else:
                source = stack.enter_context(open_weights(weights))
                results = iter_layer_results(source, opts, progress=progress, desc=str(weights), threads=threads)
                adapter_hashes = None
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


def _todo(targets: list[Target], opts, force: bool, save_esd: bool) -> list[Target]:
    """The targets whose outputs are missing, damaged or out of date (all with ``force``)."""
    todo = []
    for t in targets:
        if t.error:
            continue
        stale = None if force else stale_reason(t, opts, save_esd)
        if not force and stale is None:
            log.info("%s: up to date, skipped (--force to redo)", t.csv)
            continue
        if stale is not None and stale.warn:  # names the file and why: "<file>: truncated (...): redone"
            log.warning("%s: redone", stale.reason)
        elif stale is not None:
            log.info("%s: redone (%s)", t.csv, stale.reason)
        todo.append(t)
    return todo


def analyse_and_write(todo: list[Target], opts, jobs: int = 1, progress: bool = False, plot: bool = False,
                      save_esd: bool = False, hash_weights: bool = False, reference_cache: Path | None = None):
    """Analyse the targets (each reference once, first) and write each one's outputs as soon as it
    and its reference are done -> ([(target, written, its error lines)] in todo order, the
    references' own error lines). With ``reference_cache`` (the jobs of one command) a reference
    is analysed by the first job that needs it and read from there by the others."""
    bases = {t.base_sha: t.base for t in todo if t.base is not None}
    results: dict[str, Outcome] = {}
    if reference_cache is not None:
        for sha, path in bases.items():
            results[f"base:{sha}"] = shared_reference(
                reference_cache, path, sha, opts, save_esd, hash_weights,
                lambda path=path: analyse_checkpoint(path, opts, save_esd=save_esd, hash_weights=hash_weights))
    work = {f"base:{sha}": path for sha, path in bases.items()  # references first: targets written as they finish
            if f"base:{sha}" not in results}
    work.update({str(t.weights): t.weights for t in todo})
    plot_dirs = {str(t.weights): t.csv.parent / "esd" for t in todo} if plot else {}
    done: dict[int, tuple[bool, list[str]]] = {}  # target index -> (written, its error lines)
    pending = list(todo)
    merges = {str(t.weights): t.base for t in todo if t.base is not None and find_adapter(t.weights) is not None}
    with contextlib.closing(_run_all(work, opts, plot_dirs, jobs, progress, save_esd=save_esd,
                                     hash_weights=hash_weights, merge_bases=merges)) as outcomes:
        for key, outcome in outcomes:
            results[key] = outcome
            for t in [t for t in pending if str(t.weights) in results
                      and (t.base is None or f"base:{t.base_sha}" in results)]:
                pending.remove(t)
                done[todo.index(t)] = _finish(t, opts, results[str(t.weights)],
                                              results.get(f"base:{t.base_sha}") if t.base is not None else None)
    refs = [f"(reference) {e}" for sha in bases for e in results[f"base:{sha}"].errors]
    return [(todo[i], *done[i]) for i in sorted(done)], refs


def analyse_chunk(chunk: list[Target], opts, settings: dict) -> ChunkReport:
    """One job of --executor slurm|submitit-local: its chunk's checkpoints that are still to do
    (a requeued job skips what it finished), analysed and written as analyse_and_write writes them."""
    report = ChunkReport()
    todo = _todo(chunk, opts, settings["force"], settings["save_esd"])
    report.skipped = [str(t.weights) for t in chunk if t not in todo]
    problem = device_problem(opts.device) if todo else None  # checked here: the command's node may have no GPU
    if problem is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        given = f"CUDA_VISIBLE_DEVICES={visible}" if visible else "no CUDA_VISIBLE_DEVICES: --gpus N asks SLURM for GPUs"
        why = f"not analysed: --device: {problem} on the job's node {socket.gethostname()} ({given})"
        for t in todo:
            report.failed[str(t.weights)] = _finish(t, opts, Outcome(errors=[f"{t.weights}: {why}"]), None)[1]
        return report
    cache = settings.get("reference_cache")
    done, report.errors = analyse_and_write(todo, opts, settings["jobs"], False, settings["plot"],
                                            settings["save_esd"], settings["hash_weights"],
                                            Path(cache) if cache else None)
    for t, written, lines in done:
        if written:
            report.analysed.append(str(t.weights))
            report.errors += lines  # failed layers of a written table
        else:
            report.failed[str(t.weights)] = lines
    return report


def _submit(args, opts, targets: list[Target], todo: list[Target]) -> tuple[int, dict[str, str]]:
    """--executor slurm|submitit-local: the todo list over a job array; one summary once they end
    -> (exit code, {weights: first error line} of the checkpoints that failed)."""
    spec = spec_from_args(args)
    settings = {"force": args.force, "save_esd": args.save_esd, "jobs": args.jobs, "plot": args.plot,
                "hash_weights": bool(args.base), "reference_cache": str(spec.folder / REFERENCE_CACHE)}
    try:
        jobs, report = run_jobs(analyse_chunk, todo, opts, settings, spec, block=not args.no_wait,
                                progress=not args.quiet and sys.stderr.isatty())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, {}
    if report is None:
        print(f"wdiv.analyze: {len(todo)} checkpoint(s) in {len(jobs)} job(s): {' '.join(j.job_id for j in jobs)}; "
              f"logs in {spec.folder}; the same command without --no-wait collects them")
        return 0, {}
    errors = [t.error for t in targets if t.error] + [e for t in todo for e in report.failed.get(str(t.weights), [])]
    for line in dict.fromkeys(errors + report.errors):
        print(f"error: {line}", file=sys.stderr)
    skipped = len(targets) - len(todo) - sum(1 for t in targets if t.error) + len(report.skipped)
    if not args.quiet:
        print(f"wdiv.analyze: {len(report.analysed)} analysed, {skipped} up to date, "
              f"{len(report.failed) + sum(1 for t in targets if t.error)} failed"
              + (f" (job logs: {spec.folder})" if jobs else ""), file=sys.stderr)
    return (1 if errors or report.errors else 0), {w: lines[0] for w, lines in report.failed.items() if lines}


def _run_here(args, opts, targets: list[Target], todo: list[Target]) -> tuple[int, dict[str, str]]:
    """--executor local: this process (--jobs workers) -> as _submit."""
    done, refs = analyse_and_write(todo, opts, args.jobs, not args.quiet and sys.stderr.isatty(), args.plot,
                                   args.save_esd, bool(args.base))
    errors = [t.error for t in targets if t.error] + [e for _, _, lines in done for e in lines] + refs
    for line in dict.fromkeys(errors):
        print(f"error: {line}", file=sys.stderr)
    skipped = len(targets) - len(todo) - sum(1 for t in targets if t.error)
    if not args.quiet:
        print(f"wdiv.analyze: {sum(ok for _, ok, _ in done)} written, {skipped} up to date, "
              f"{len(set(errors))} error(s)", file=sys.stderr)
    return (1 if errors else 0), {str(t.weights): lines[0] for t, ok, lines in done if not ok and lines}


def _analyse_targets(args, opts) -> int:
    targets = discover(args.paths, args.out, snapshots=args.snapshots)
    if args.out and len(targets) > 1:
        print(f"error: --out: needs a single checkpoint, {args.paths[0]} holds {len(targets)}", file=sys.stderr)
        return 2
    if args.base:
        attach_bases(targets, args.base)
    todo = _todo(targets, opts, args.force, args.save_esd)
    code, failures = (_run_here if args.executor == "local" else _submit)(args, opts, targets, todo)
    if args.summary and code != 2:
        write_population(args.summary, targets, opts, population_root(args.paths), args.save_esd, failures)
    return code


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


if __name__ == "__main__":  # main() of wdiv.analyze, not of __main__: the job function is then pickled by name
    from wdiv.analyze import main as _main

    sys.exit(_main())
