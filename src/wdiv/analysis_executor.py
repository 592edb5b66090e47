"""`wdiv.analyze --executor slurm|submitit-local`: a population's checkpoints over a submitit job array.

The checkpoints still to do are cut into chunks of ``--per-job``; each job of the array analyses
its chunk with the same per-checkpoint atomic writes as the in-process path (the job function is
wdiv.analyze's, handed in, so this module knows nothing of how a checkpoint is analysed). What a
job finished is on disk, so a rerun of the same command submits only what is missing, failed or
out of date; a job that SLURM times out or preempts is requeued by submitit and skips what it
finished. ``local`` is not here: it is the in-process path (``--jobs``).

submitit is imported only where a job is submitted (the ``slurm`` extra).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wdiv.analysis_outputs import Target, read_record
from wdiv.analysis_targets import JOBS_FOLDER
from wdiv.errors import ConfigError

log = logging.getLogger("wdiv.analyze")

EXECUTORS = ("local", "submitit-local", "slurm")
PER_JOB = 8
TIME_MIN = 60
POLL_S = {"slurm": 10.0, "submitit-local": 0.5}  # how often the waiting command looks at its jobs


@dataclass
class ChunkReport:
    """What one job did with its chunk (weights paths as the command named them); also the merged
    account of every job once the command has waited for them."""

    analysed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # up to date when the job started (e.g. requeued)
    failed: dict[str, list[str]] = field(default_factory=dict)  # weights -> its error lines
    errors: list[str] = field(default_factory=list)  # other lines: failed layers of written tables, references

    def merge(self, other: "ChunkReport") -> None:
        self.analysed += other.analysed
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.errors += other.errors


@dataclass
class JobSpec:
    """Where and how the jobs run (the executor options of the command line)."""

    executor: str
    folder: Path
    per_job: int = PER_JOB
    time_min: int = TIME_MIN
    partition: str | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    gpus: int | None = None  # per job (SLURM --gpus-per-node: a job is one task on one node)
    max_parallel: int | None = None


def jobs_folder(paths: list[str], given: str | None) -> Path:
    """submitit's folder: --jobs-folder, else a fresh ``<PATH>/.wdiv-analyze-jobs/<time>-<pid>``
    (the current directory's when there are several PATHs or a file)."""
    if given:
        return Path(given)
    base = Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path(".")
    return base / JOBS_FOLDER / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def spec_from_args(args) -> JobSpec:
    return JobSpec(args.executor, jobs_folder(args.paths, args.jobs_folder), per_job=args.per_job or PER_JOB,
                   time_min=args.time_min or TIME_MIN, partition=args.partition, cpus=args.cpus,
                   mem_gb=args.mem_gb, gpus=args.gpus, max_parallel=args.max_parallel)


def split(todo: list[Target], per_job: int) -> list[list[Target]]:
    """Chunks of ``per_job``, targets ordered by their reference first (stable), so that runs
    sharing a --base reference fill as few chunks as they can. A reference shared by k chunks is
    analysed once, by the first of their jobs to reach it; the others wait for it and read it from
    the jobs folder (wdiv.analysis_reference_cache)."""
    ordered = sorted(todo, key=lambda t: str(t.base) if t.base is not None else "")
    return [ordered[i:i + per_job] for i in range(0, len(ordered), per_job)]


class ChunkJob:
    """The callable every job of the array runs: ``analyse(chunk, opts, settings)`` from the
    command's directory (relative paths stay valid on a compute node). ``checkpoint`` makes
    submitit requeue it after a timeout or preemption; the requeued job re-checks its chunk."""

    def __init__(self, analyse: Callable, opts, settings: dict):
        self.analyse, self.opts, self.settings = analyse, opts, dict(settings)
        self.cwd = os.getcwd()
        self.env: dict[str, str | None] = {}  # set (None: unset) in the job before it analyses

    def __call__(self, chunk: list[Target]) -> ChunkReport:
        os.chdir(self.cwd)
        for name, value in self.env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _log_info()
        return self.analyse(chunk, self.opts, self.settings)

    def checkpoint(self, chunk: list[Target]):
        """Requeued (timeout, preemption): the same chunk, without --force, so that what this job
        finished is skipped as up to date rather than redone on every requeue."""
        from submitit.helpers import DelayedSubmission

        again = ChunkJob(self.analyse, self.opts, {**self.settings, "force": False})
        again.cwd, again.env = self.cwd, dict(self.env)
        return DelayedSubmission(again, chunk)


def _log_info() -> None:
    """A job's stderr is its log: wdiv's INFO lines go there too (skipped, redone, a reference
    analysed or read from the jobs folder); submitit configures its own logger only."""
    wdiv = logging.getLogger("wdiv")
    if not wdiv.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        wdiv.addHandler(handler)
    wdiv.setLevel(logging.INFO)


def submit(job: ChunkJob, chunks: list[list[Target]], spec: JobSpec) -> list:
    """One job per chunk, as one SLURM array (or local subprocesses) -> submitit's jobs."""
    import submitit

    executor = submitit.AutoExecutor(folder=spec.folder, cluster="slurm" if spec.executor == "slurm" else "local")
    params = {"name": "wdiv-analyze", "timeout_min": spec.time_min}
    if spec.executor == "slurm":
        params.update(cpus_per_task=spec.cpus, mem_gb=spec.mem_gb, gpus_per_node=spec.gpus,
                      slurm_partition=spec.partition, slurm_array_parallelism=spec.max_parallel)
    else:  # submitit-local gives its jobs CUDA_VISIBLE_DEVICES='' (no GPU): they see the command's GPUs
        job.env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        return executor.map_array(job, chunks)
    except Exception as exc:  # sbatch refused it (partition, limits, ...): one line, nothing ran
        raise ConfigError(f"--executor {spec.executor}: the job array was not submitted ({_last_line(exc)})") from exc


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _job_report(job, chunk: list[Target], since: float) -> ChunkReport:
    """The job's own report; for a job that died (killed, out of memory, timed out for good),
    the targets of its chunk whose record it did not write are failed, naming its log."""
    exc = job.exception()
    if exc is None:
        return job.result()
    why = f"job {job.job_id} failed ({_last_line(exc)}); log {job.paths.stderr}"
    report = ChunkReport()
    for t in chunk:
        record = read_record(t.summary)[0]
        if record is not None and t.summary.stat().st_mtime >= since and not _record_errors(record):
            report.analysed.append(str(t.weights))
        elif record is not None and t.summary.stat().st_mtime >= since:  # its analysis failed, then the job died
            report.failed[str(t.weights)] = _record_errors(record)
        else:
            report.failed[str(t.weights)] = [f"{t.weights}: not analysed: {why}"]
    return report


def _record_errors(record: dict) -> list[str]:
    """The error lines a checkpoint's record holds (a failed analysis writes its record too)."""
    return [str(e) for e in ((record.get("wdiv") or {}).get("errors") or [])]


def wait(jobs: list, chunks: list[list[Target]], since: float, poll_s: float = 1.0,
         progress: bool = False) -> ChunkReport:
    """Wait for every job (submitted after ``since``) -> the merged report. An analysed checkpoint
    must have an intact record (read back, not taken on the job's word)."""
    from submitit.helpers import as_completed
    from tqdm.auto import tqdm

    owner = {job.job_id: chunk for job, chunk in zip(jobs, chunks)}
    total = ChunkReport()
    try:
        for job in tqdm(as_completed(jobs, poll_frequency=poll_s), total=len(jobs), desc="jobs", unit="job",
                        disable=not progress):
            total.merge(_job_report(job, owner[job.job_id], since))
    except KeyboardInterrupt:
        log.warning("stopped waiting: the jobs go on (%s); their logs: %s", " ".join(j.job_id for j in jobs),
                    jobs[0].paths.folder if jobs else "")
        raise
    summaries = {str(t.weights): t.summary for chunk in chunks for t in chunk}
    for weights in list(total.analysed):
        record, why = read_record(summaries[weights])
        if record is None or _record_errors(record):
            total.analysed.remove(weights)
            total.failed[weights] = _record_errors(record) if record is not None else [
                f"{summaries[weights]}: {why} after its job wrote it"]
    return total


def run_jobs(analyse: Callable, todo: list[Target], opts, settings: dict, spec: JobSpec,
             block: bool = True, progress: bool = False) -> tuple[list, ChunkReport | None]:
    """Submit ``todo`` in chunks -> (jobs, their merged report, or None without ``block``)."""
    chunks = split(todo, spec.per_job)
    if not chunks:
        return [], ChunkReport()
    spec.folder.mkdir(parents=True, exist_ok=True)
    started = time.time() - 1.0  # a record written by a job is newer (mtime granularity)
    jobs = submit(ChunkJob(analyse, opts, settings), chunks, spec)
    log.info("%d checkpoint(s) in %d job(s): %s", len(todo), len(jobs), spec.folder)
    return jobs, (wait(jobs, chunks, started, POLL_S[spec.executor], progress) if block else None)
