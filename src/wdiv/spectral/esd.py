"""Matrices -> eigenvalues of W^T W (squared singular values, no 1/N), in float64.

Why the Gram matrix and not an SVD: eigvalsh of the smaller M x M Gram matrix costs a
fraction of an SVD and, in float64, reproduces squared singular values to about
``M * eps * lambda_max`` absolute; tests/test_esd.py shows the eigenvalues the fits use and
the norm sums agree with an SVD to 1e-9 relative or better. What the Gram matrix cannot
resolve is the smallest end of a (nearly) rank-deficient matrix, which decides the hard
rank and so the matrix entropy; a matrix whose smallest Gram eigenvalue is below
``_SVD_BELOW * lambda_max`` is therefore redone with a float64 SVD (rare: random and trained
weights sit far above it).

Why numpy on CPU and torch on CUDA (wdiv.spectral.esd_torch, imported only for a CUDA device, so
the CPU engine runs in a process without torch): torch's CPU wheels link MKL, whose float64 GEMM and
syevd run 1.5-2x slower than numpy's OpenBLAS on AMD cores (measured on this project's
machine: 512 x 512 eigvalsh 16.2 vs 11.4 ms, the 1024 x 512 Gram product 12.8 vs 6.2 ms,
one thread each). Both calls run without the GIL (numpy's matmul; dsyevd through
wdiv.spectral.lapack), so one Python thread per core scales (1.8-1.9x on 2 cores).

Memory: a matrix's Gram matrix is summed over blocks of at most _BLOCK_ELEMS float64 elements,
and a large dense layer of a safetensors file is read a block at a time straight from the file by
the job that solves it (`EigenSolver.submit_streamed`), so no whole tensor is ever held: a job
holds its M x M Gram matrix (BLAS syrk adds each block into it) and one block. The streamed
blocks are the ones `gram_numpy` cuts from the whole matrix, in the same order and memory layout,
so both give the same bits.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import numpy as np

from .jobs import Job, JobQueue
from .lapack import blas_controller, eigvalsh_inplace, gram_update, mirror_upper

# Smallest/largest eigenvalue ratio below which the Gram result is not trusted (SVD redone).
_SVD_BELOW = 1e-10
# float64 elements of one row block of the Gram product (16 MB: big matrices cost little extra memory).
_BLOCK_ELEMS = 1 << 21


# ------------------------------------------------------------------ CPU: numpy / OpenBLAS


def as_array(w) -> np.ndarray:
    """Matrices as a numpy array: a numpy array as it is, a (CPU) torch tensor without a copy where
    numpy knows its dtype (bfloat16 widened to float32), without importing torch here."""
    if hasattr(w, "detach"):  # a torch tensor, from a caller that has torch loaded
        w = w.detach().cpu()
        if w.is_floating_point() and str(w.dtype) not in ("torch.float32", "torch.float64", "torch.float16"):
            w = w.float()
        return w.numpy()
    return np.asarray(w)


def is_cpu(device) -> bool:
    """Whether a device name ("cpu", "cuda", "cuda:1") is the CPU."""
    return str(device).split(":")[0] == "cpu"


def _lines_per_block(m: int, block_elems: int | None) -> int:
    return max(1, (block_elems or _BLOCK_ELEMS) // max(1, m))


def _gram_half(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """Sum of ``x.T @ x`` over (lines, M) C-contiguous float64 blocks; only the triangle that
    eigvalsh_inplace reads is certain (`mirror_upper` makes it whole).

    BLAS syrk (half the flops of a general product) adds each block into the sum itself
    (wdiv.spectral.lapack.gram_update), and a block is dropped before the next one is made, so
    the sum and one block are all that is held.
    """
    gram = None
    for x in blocks:
        gram = gram_update(gram, x)
        del x
    return gram


def _matrix_blocks(w: np.ndarray, block_elems: int | None) -> Iterator[np.ndarray]:
    """(N, M) matrix (transposed when N < M) -> float64 C-contiguous blocks of its rows."""
    if w.shape[0] < w.shape[1]:
        w = w.T
    n, m = w.shape
    rows = _lines_per_block(m, block_elems)
    return (np.asarray(w[i:i + rows], dtype=np.float64, order="C") for i in range(0, n, rows))


# read_lines(axis, lo, hi) -> rows (axis 0) or columns (axis 1) lo:hi of a stored 2-D matrix.
LinesFn = Callable[[int, int, int], np.ndarray]


def _file_blocks(read_lines: LinesFn, shape: tuple[int, int], block_elems: int | None) -> Iterator[np.ndarray]:
    """A stored (rows, cols) matrix read a block at a time -> the blocks `_matrix_blocks` cuts from it.

    With rows >= cols the Gram matrix is W^T W, a sum over blocks of rows; otherwise it is
    W W^T, a sum over blocks of columns, each transposed to a C-contiguous float64 block.
    """
    axis = 0 if shape[0] >= shape[1] else 1
    n, m = shape[axis], shape[1 - axis]
    lines = _lines_per_block(m, block_elems)
    for i in range(0, n, lines):
        raw = read_lines(axis, i, min(n, i + lines))
        x = np.asarray(raw if axis == 0 else raw.T, dtype=np.float64, order="C")
        del raw
        yield x
        del x  # before the next block is read


def gram_numpy(w: np.ndarray, *, block_elems: int | None = None) -> np.ndarray:
    """(N, M) matrix -> float64 Gram matrix of its smaller side, accumulated over blocks.

    Only one block is ever held in float64, so a float32 matrix never needs a full float64 copy.
    """
    return mirror_upper(_gram_half(_matrix_blocks(w, block_elems)))


def gram_streamed(read_lines: LinesFn, shape: tuple[int, int], *, block_elems: int | None = None) -> np.ndarray:
    """Stored (rows, cols) matrix read a block at a time -> float64 Gram matrix of its smaller side.

    The blocks are gram_numpy's, in the same order and layout: equal to gram_numpy(W), bit for bit.
    """
    return mirror_upper(_gram_half(_file_blocks(read_lines, shape, block_elems)))


def _eigs_numpy(w: np.ndarray) -> list[tuple[np.ndarray, bool, bool]]:
    """One matrix -> [(ascending eigenvalues of its Gram matrix, suspect, finite)]."""
    return _eigs_of_gram(_gram_half(_matrix_blocks(w, None)))


def _eigs_streamed(read_lines: LinesFn, shape: tuple[int, int]) -> list[tuple[np.ndarray, bool, bool]]:
    """A stored matrix read block by block -> [(ascending Gram eigenvalues, suspect, finite)]."""
    return _eigs_of_gram(_gram_half(_file_blocks(read_lines, shape, None)))


def _eigs_of_gram(gram: np.ndarray) -> list[tuple[np.ndarray, bool, bool]]:
    """A Gram matrix (its eigvalsh_inplace triangle; destroyed) -> [(ascending eigenvalues, suspect, finite)]."""
    if not np.isfinite(np.diagonal(gram)).all():  # diag = column sums of squares: finite iff W is
        return [(np.full(gram.shape[0], np.nan), False, False)]
    ev = eigvalsh_inplace(gram)
    return [(np.maximum(ev, 0.0), bool(ev[0] <= _SVD_BELOW * ev[-1]), True)]


# A stack of matrices this narrow (M <= SMALL_M) is one job: per-matrix Python overhead would
# cost more than the eigensolves (a ViT patch embedding is 256 matrices of 384 x 3).
SMALL_M = 64


def _eigs_numpy_small(stack: np.ndarray) -> list[tuple[np.ndarray, bool, bool]]:
    """(rf, N, M) stack of narrow (or short) matrices -> per-matrix results, in batched numpy calls."""
    x = np.asarray(stack, dtype=np.float64)
    if x.shape[1] < x.shape[2]:
        x = x.transpose(0, 2, 1)
    grams = np.matmul(x.transpose(0, 2, 1), x)
    finite = np.isfinite(np.diagonal(grams, axis1=1, axis2=2)).all(axis=1)
    grams[~finite] = 0.0
    evals = np.linalg.eigvalsh(grams)
    evals[~finite] = np.nan
    suspect = evals[:, 0] <= _SVD_BELOW * evals[:, -1]
    return [(np.maximum(ev, 0.0) if ok else ev, bool(sus), bool(ok)) for ev, sus, ok in zip(evals, suspect, finite)]


def _blas_threads(n: int):
    """Pin numpy's BLAS to n threads, so per-core workers do not oversubscribe the cores."""
    return blas_controller().limit(limits=n, user_api="blas")


def blas_threads() -> int:
    """How many threads numpy's BLAS runs (its default: the cores, or OMP/OPENBLAS_NUM_THREADS)."""
    libs = [info for info in blas_controller().info() if info.get("user_api") == "blas"]
    numpy_libs = [info for info in libs if "numpy" in info.get("filepath", "").replace("\\", "/").lower()]
    return max(1, max((info["num_threads"] for info in numpy_libs or libs), default=1))


# ------------------------------------------------------------------ the solver


class EigenSolver:
    """Gram eigenvalues of (rf, N, M) stacks, computed while the caller goes on.

    CPU: each matrix is one job in a JobQueue served by `threads` - 1 background threads and
    by the caller whenever it waits for a result (`threads`: the caller's CPU share, which
    ``--jobs`` divides; by default numpy's BLAS thread count), numpy's BLAS pinned to one thread per job. With one thread the jobs
    run when their result is asked for, BLAS keeping its own threads (one big matrix).
    CUDA: the stacks of one submit are one batched torch call (wdiv.spectral.esd_torch). `submit(stacks)` returns one
    handle per stack whose result() is (evals (rf, M) ascending, suspect (rf,), finite).
    Use as a context manager.
    """

    def __init__(self, device: str = "cpu", threads: int | None = None):
        self.device = device
        self.cpu = is_cpu(device)
        self.threads = threads or blas_threads()
        self._queue: JobQueue | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "EigenSolver":
        if self.cpu:
            if self.threads > 1:
                self._stack.enter_context(_blas_threads(1))
            self._queue = self._stack.enter_context(JobQueue(self.threads - 1))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._queue = None

    def submit(self, stacks: list[np.ndarray]) -> list:
        """Queue same-shape stacks; one handle per stack, whose result() is (evals, suspect, finite)."""
        if not self.cpu:
            from . import esd_torch  # torch only for a CUDA device

            return [_Done(r) for r in esd_torch.eigs_torch(stacks, self.device, _SVD_BELOW)]
        handles = []
        for x in stacks:
            a = as_array(x)
            jobs = [Job(_eigs_numpy_small, a)] if min(a.shape[-2:]) <= SMALL_M else [Job(_eigs_numpy, m) for m in a]
            handles.append(_Gathered(self._queue, jobs))
        self._queue.put([job for h in handles for job in h.jobs])
        return handles

    def submit_streamed(self, matrices: list[tuple[LinesFn, tuple[int, int]]]) -> list:
        """Queue stored 2-D matrices given as (read_lines, (rows, cols)); CPU only.

        Each is one job that reads its blocks and forms its Gram matrix when it runs, so a
        queued matrix holds no data; handles as `submit`'s, evals (1, M)."""
        if not self.cpu:
            raise ValueError("streamed Gram matrices are formed on the CPU only")
        handles = [_Gathered(self._queue, [Job(_eigs_streamed, read, tuple(shape))]) for read, shape in matrices]
        self._queue.put([h.jobs[0] for h in handles])
        return handles


def _collect(parts: list[tuple[np.ndarray, bool, bool]]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-matrix results of one stack -> (evals (rf, M), suspect (rf,), all finite)."""
    return np.stack([p[0] for p in parts]), np.array([p[1] for p in parts]), all(p[2] for p in parts)


class _Done:
    """A result computed at submit time (CUDA)."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


class _Gathered:
    """The per-matrix jobs of one stack, read back as one result."""

    def __init__(self, queue: JobQueue, jobs: list[Job]):
        self.queue, self.jobs = queue, jobs

    def result(self):
        return _collect([part for job in self.jobs for part in self.queue.wait(job)])


# ------------------------------------------------------------------ one-call helpers


def gram_eigenvalues(mats, *, device: str = "cpu", threads: int | None = None) -> np.ndarray:
    """(B, N, M) stack -> (B, min(N, M)) eigenvalues of each W^T W, ascending, float64.

    Matrices whose Gram result is suspect (nearly rank-deficient) come from an SVD instead.
    """
    mats = as_array(mats)
    if mats.ndim == 2:
        mats = mats[None]
    with EigenSolver(device, threads=threads if mats.shape[0] > 1 else 1) as solver:
        evals, suspect, _ = solver.submit([mats])[0].result()
    if suspect.any():
        evals[suspect] = svd_eigenvalues(mats[suspect], device=device)
    return evals


def svd_eigenvalues(mats, *, device: str = "cpu") -> np.ndarray:
    """Squared singular values from a float64 SVD, ascending (rank-deficient matrices, tests)."""
    mats = as_array(mats)
    if mats.ndim == 2:
        mats = mats[None]
    if not is_cpu(device):
        from . import esd_torch

        return esd_torch.svd_eigenvalues(mats, device)
    sv = np.linalg.svd(np.asarray(mats, dtype=np.float64), compute_uv=False)
    return (sv * sv)[..., ::-1].copy()


def pooled(evals: np.ndarray) -> np.ndarray:
    """(B, M) per-slice eigenvalues -> one sorted ESD (WeightWatcher's pooled conv layers)."""
    return np.sort(evals.reshape(-1))


def eigvals_fn(device: str = "cpu"):
    """A callable W -> sorted eigenvalues, for code that takes one (FARMS windows)."""

    def fn(w) -> np.ndarray:
        w = as_array(w)
        return gram_eigenvalues(w, device=device).reshape(-1) if w.ndim == 2 else pooled(gram_eigenvalues(w, device=device))

    return fn
