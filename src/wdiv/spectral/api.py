"""`analyze(weights, **options) -> DataFrame`: the per-layer loop of the spectral engine.

stream tensor -> (rf, N, M) matrices -> float64 eigenvalues (queued on an EigenSolver: one
single-threaded BLAS per core on CPU, same-shape layers in one batched call on CUDA) ->
WeightWatcher-named metrics (wdiv.spectral.metrics), plus optional
randomised ESD and FARMS alpha. A layer that cannot be analysed (NaN/Inf weights, a failed
fit) becomes a row with status=failed; the other layers are still analysed.

Memory: on CPU a dense layer of a safetensors file (M > 64) is *streamed*: its job reads the
tensor a block at a time and accumulates the Gram matrix (wdiv.spectral.esd.gram_streamed), so
no whole tensor is held. The dense path (whole tensor read, then queued) stays for what needs W
itself or cannot be sliced: randomize and FARMS (they permute or window W), the SVD redo of a
nearly rank-deficient layer (rare), conv kernels (small), in-memory and PyTorch-file tensors
(already held by their state dict), narrow layers (batched with the small-M solver) and CUDA.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import deque
from dataclasses import dataclass
from itertools import chain
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .esd import SMALL_M, EigenSolver, eigvals_fn, gram_eigenvalues, is_cpu, pooled, svd_eigenvalues
from .options import AnalyzeOptions
from .weights import LayerSpec, WeightSource, open_weights, select_layers, to_matrices

log = logging.getLogger(__name__)

ID_COLUMNS = ["layer_id", "name", "longname", "N", "M", "Q", "rf", "num_evals"]
# Columns that describe the layer, not its spectrum: never turned into deltas.
NOT_METRICS = set(ID_COLUMNS) | {"slice_id"}
INFLIGHT_BATCHES = 2  # layers queued on the eigensolver, in units of opts.batch_bytes


@dataclass
class LayerResult:
    """One analysed layer (or conv slice): its table row and the spectra behind it (for plots)."""

    row: dict
    evals: np.ndarray | None
    rand_evals: np.ndarray | None = None
    error: str | None = None  # the layer could not be analysed at all (not merely a failed fit)


def analyze(weights, *, progress: bool = False, threads: int | None = None, **options) -> pd.DataFrame:
    """Analyse every WeightWatcher-selected layer of `weights` (path, state dict or nn.Module).

    Options are those of `AnalyzeOptions` (fit, xmax, fix_fingers, mp_fit, randomize, seed,
    farms, farms_window..., pool, include, exclude, min_evals, max_evals, max_N, device);
    threads: the eigensolver's CPU threads (default: numpy's BLAS thread count).
    Returns one row per layer (per slice with pool=False), ordered by layer_id.
    """
    opts = AnalyzeOptions.from_kwargs(**options)
    with open_weights(weights) as source:
        rows = [r.row for r in iter_layer_results(source, opts, progress=progress, threads=threads)]
    return results_frame(rows)


def results_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows)
    if df.empty:
        return pd.DataFrame(columns=ID_COLUMNS + ["status"])
    sort_cols = ["layer_id"] + (["slice_id"] if "slice_id" in df else [])
    return df.sort_values(sort_cols, kind="stable").reset_index(drop=True)


def iter_layer_results(source: WeightSource, opts: AnalyzeOptions, *, progress: bool = False,
                       desc: str | None = None, threads: int | None = None) -> Iterator[LayerResult]:
    """Yield LayerResults, layer by layer in the order their eigenvalues were queued.

    Layers are read and queued on the EigenSolver a batch of same-shape layers at a time
    (one batched call on CUDA); while its workers solve the queued layers this thread
    computes the metrics of the finished ones, so the fits cost little wall time beyond the
    eigenvalues. Memory: what the queued layers hold (a streamed layer its Gram matrix, to be
    formed when its job runs; any other its tensor) is capped at INFLIGHT_BATCHES *
    opts.batch_bytes plus the newest layer, plus per thread one Gram matrix, one block product
    and one block.
    """
    specs = select_layers(source, pool=opts.pool, min_evals=opts.min_evals, max_evals=opts.max_evals,
                          max_N=opts.max_N, include=opts.include, exclude=opts.exclude)
    budget = INFLIGHT_BATCHES * opts.batch_bytes
    streamed = {spec.key for spec in specs if _streams(spec, source, opts)}

    def nbytes(spec: LayerSpec) -> int:
        return _layer_bytes(spec, spec.key in streamed)

    bar = tqdm(total=len(specs), desc=desc or source.label, unit="layer", disable=not progress, leave=False)
    try:
        with EigenSolver(opts.device, threads) as solver:
            queued: deque = deque()
            queued_bytes = 0
            for batch in chain(_shape_batches(specs, opts.batch_bytes, nbytes), [None]):  # None: drain
                if batch is not None:
                    queued.extend(_submit(batch, streamed, source, solver))
                    queued_bytes += sum(nbytes(spec) for spec in batch)
                # drain the oldest while the layers before the newest exceed the budget: a layer
                # bigger than the budget still has the next one read and queued beside it
                while queued and (queued_bytes - nbytes(queued[-1][0]) > budget or batch is None):
                    spec, mats, handle = queued.popleft()
                    queued_bytes -= nbytes(spec)
                    yield from _finish_layer(spec, mats, handle.result(), opts, source)
                    bar.update(1)
    finally:
        bar.close()


def _streams(spec: LayerSpec, source: WeightSource, opts: AnalyzeOptions) -> bool:
    """Whether a layer's Gram matrix is read block by block from its file (see the module doc)."""
    return (spec.kind == "dense" and is_cpu(opts.device) and not (opts.randomize or opts.farms)
            and min(spec.shape) > SMALL_M and source.can_stream(spec.key))


def _submit(batch: list[LayerSpec], streamed: set[str], source: WeightSource, solver: EigenSolver) -> list[tuple]:
    """Queue a batch of same-shape layers -> [(spec, matrices or None when streamed, handle)], in batch order."""
    dense = [spec for spec in batch if spec.key not in streamed]
    stacks = [to_matrices(spec, source.tensor(spec.key)) for spec in dense]
    handles = dict(zip((spec.key for spec in dense), zip(stacks, solver.submit(stacks)) if dense else []))
    lazy = [spec for spec in batch if spec.key in streamed]
    if lazy:
        readers = [(functools.partial(source.read_lines, spec.key), spec.shape) for spec in lazy]
        handles.update({spec.key: (None, h) for spec, h in zip(lazy, solver.submit_streamed(readers))})
    return [(spec, *handles[spec.key]) for spec in batch]


def _finish_layer(spec: LayerSpec, mats: np.ndarray | None, solved, opts: AnalyzeOptions,
                  source: WeightSource) -> list[LayerResult]:
    """A solved layer -> its LayerResults (NaN layer: failed; nearly rank-deficient: via SVD).
    mats is None for a streamed layer: its tensor is read whole only for the SVD redo."""
    ev, suspect, finite = solved
    if not finite:
        return _failed_rows(spec, opts, "weights contain NaN or Inf (or overflow when squared)")
    if suspect.any():  # nearly rank-deficient: the SVD decides the small end
        if mats is None:
            mats = to_matrices(spec, source.tensor(spec.key))
        ev = svd_eigenvalues(mats, device=opts.device)
    return _analyse_layer(spec, mats if opts.randomize or opts.farms else None, ev, opts)


def layer_results(spec: LayerSpec, mats: np.ndarray | None, evals: np.ndarray,
                  opts: AnalyzeOptions) -> list[LayerResult]:
    """A layer's LayerResults from eigenvalues computed elsewhere ((rf, M) ascending per matrix;
    wdiv.spectral.lora's low-rank factors); mats: its matrices, needed for randomize / FARMS."""
    if not np.isfinite(evals).all():
        return _failed_rows(spec, opts, "weights contain NaN or Inf (or overflow when squared)")
    return _analyse_layer(spec, mats, evals, opts)


def _layer_bytes(spec: LayerSpec, streamed: bool = False) -> int:
    """What a queued layer holds: a streamed layer its float64 Gram matrix (formed when its job
    runs, from one block at a time); any other its float32 matrices or float64 Gram matrices."""
    n, m = spec.matrix_shape
    return 8 * m * m * spec.rf if streamed else max(8 * m * m, 4 * n * m) * spec.rf


def _shape_batches(specs: list[LayerSpec], batch_bytes: int, nbytes=_layer_bytes) -> Iterator[list[LayerSpec]]:
    """Group layers by matrix shape; cap each group's bytes (`nbytes` of each layer)."""
    groups: dict[tuple[int, int], list[LayerSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.matrix_shape, []).append(spec)
    for group in groups.values():
        batch, size = [], 0
        for spec in group:
            nbytes_ = nbytes(spec)
            if batch and size + nbytes_ > batch_bytes:
                yield batch
                batch, size = [], 0
            batch.append(spec)
            size += nbytes_
        if batch:
            yield batch


def conv2d_scale(spec: LayerSpec, pool: bool) -> float:
    """WeightWatcher's conv2d_norm on eigenvalues: W * sqrt(count/2), count = 1 pooled, rf per slice."""
    if spec.kind != "conv2d":
        return 1.0
    return (1.0 if pool else spec.rf) / 2.0


def _base_row(spec: LayerSpec, num_evals: int, slice_id: int | None) -> dict:
    n, m = spec.matrix_shape
    row = {"layer_id": spec.layer_id, "name": spec.name, "longname": spec.longname,
           "N": n, "M": m, "Q": n / m, "rf": spec.rf, "num_evals": num_evals}
    if slice_id is not None:
        row["slice_id"] = slice_id
    return row


def _failed_rows(spec: LayerSpec, opts: AnalyzeOptions, why: str) -> list[LayerResult]:
    log.warning("%s: layer failed: %s", spec.longname, why)
    slices = [None] if opts.pool else list(range(spec.rf))
    m = spec.matrix_shape[1]
    return [LayerResult({**_base_row(spec, m * (spec.rf if opts.pool else 1), s),
                         "status": "failed", "warning": why}, None, error=why) for s in slices]


def _analyse_layer(spec: LayerSpec, mats: np.ndarray | None, evals: np.ndarray,
                   opts: AnalyzeOptions) -> list[LayerResult]:
    scale = conv2d_scale(spec, opts.pool)
    if opts.pool:
        parts = [(None, mats, pooled(evals) * scale)]
    else:
        parts = [(i if spec.kind == "conv2d" else None, None if mats is None else mats[i:i + 1], evals[i] * scale)
                 for i in range(evals.shape[0])]
    out = []
    for slice_id, w, ev in parts:
        rand_evals = _random_evals(spec, w, scale, opts, slice_id) if opts.randomize else None
        row = _base_row(spec, len(ev), slice_id if not opts.pool else None)
        if not opts.pool and "slice_id" not in row:
            row["slice_id"] = 0
        metrics, error = _metrics(ev, spec, opts, rand_evals)
        row.update(metrics)
        if opts.farms:
            row["alpha_farms"] = _farms_alpha(w, scale, spec, opts, slice_id)
        out.append(LayerResult(row, ev, rand_evals, error))
    return out


def _metrics(ev: np.ndarray, spec: LayerSpec, opts: AnalyzeOptions, rand_evals) -> tuple[dict, str | None]:
    from . import metrics  # the numerics' module; imported late so weights/esd work alone

    n, m = spec.matrix_shape
    try:
        return metrics.layer_metrics(ev, N=n, M=m, rf=spec.rf, fit=opts.fit,
                                     xmax=opts.xmax, fix_fingers=opts.fix_fingers, mp_fit=opts.mp_fit,
                                     rand_evals=rand_evals), None
    except Exception as exc:  # one bad layer never sinks the checkpoint
        log.warning("%s: metrics failed: %s", spec.longname, exc)
        why = f"metrics failed: {type(exc).__name__}: {exc}"
        return {"status": "failed", "warning": why}, why


def _layer_rng(spec: LayerSpec, opts: AnalyzeOptions, slice_id: int | None, salt: int) -> np.random.Generator:
    # Seeded per (seed, layer, slice, purpose): results do not depend on layer order or --jobs.
    return np.random.default_rng([opts.seed & ((1 << 63) - 1), spec.layer_id,
                                  0 if slice_id is None else slice_id + 1, salt])


def _random_evals(spec: LayerSpec, w: np.ndarray, scale: float, opts: AnalyzeOptions,
                  slice_id: int | None) -> np.ndarray:
    """ESD of W with its elements permuted (each slice on its own), seeded."""
    flat = w.reshape(w.shape[0], -1)
    shuffled = _layer_rng(spec, opts, slice_id, salt=1).permuted(flat, axis=1).reshape(w.shape)
    return pooled(gram_eigenvalues(shuffled, device=opts.device)) * scale


def _farms_alpha(w: np.ndarray, scale: float, spec: LayerSpec, opts: AnalyzeOptions,
                 slice_id: int | None) -> float:
    """alpha_farms of a layer (wdiv.spectral.farms, the reference's procedure): a dense W as
    stored (out x in), a conv layer's kernel slices (conv_norm, not `scale`, as the reference)."""
    from . import farms

    try:
        x = np.asarray(w, dtype=np.float32)
        if spec.kind == "dense":
            x = x[0].T if spec.shape[0] < spec.shape[1] else x[0]  # to_matrices put N >= M: undo
        fit = farms.farms_fit(x, opts.farms_options.settings(), conv=spec.kind == "conv2d",
                              eigvals=eigvals_fn(opts.device))
        return float(fit["alpha"])
    except Exception as exc:
        log.warning("%s: FARMS failed: %s", spec.longname, exc)
        return math.nan


def add_deltas(df: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Add delta_<metric> = fine-tuned minus reference for numeric metrics, matched on longname."""
    keys = ["longname"] + (["slice_id"] if "slice_id" in df and "slice_id" in base else [])
    metrics_cols = [c for c in df.columns if c in base.columns and c not in NOT_METRICS
                    and pd.api.types.is_numeric_dtype(df[c]) and pd.api.types.is_numeric_dtype(base[c])]
    ref = base[keys + metrics_cols].drop_duplicates(keys).rename(columns={c: f"{c}__base" for c in metrics_cols})
    joined = df[keys].merge(ref, on=keys, how="left")
    out = df.copy()
    # an adapter's table (wdiv.spectral.lora): only its merged W + dW rows compare with the base W
    unlike = (df["matrix"] != "merged").to_numpy() if "matrix" in df else None
    for c in metrics_cols:
        delta = df[c].to_numpy() - joined[f"{c}__base"].to_numpy()
        out[f"delta_{c}"] = delta if unlike is None else np.where(unlike, np.nan, delta)
    return out
