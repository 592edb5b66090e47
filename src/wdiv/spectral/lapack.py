"""Symmetric eigenvalues (LAPACK dsyevd, no eigenvectors) called with the GIL released.

The Gram products of blocks are summed by BLAS dsyrk bound the same way (`gram_update`): numpy's
``x.T @ x`` is syrk too, but a sum of them needs a second M x M product per block.

Why not np.linalg.eigvalsh: numpy's linalg gufuncs keep the GIL for a single matrix below
about 512 x 512, so the eigensolver's per-core Python threads run one at a time there
(measured on 384 x 384 Gram matrices: 2 threads, 1.0x; through this module, 1.8x). This
module calls LAPACKE_dsyevd from the OpenBLAS that numpy itself loaded (found with
threadpoolctl) through ctypes, which releases the GIL for the whole call. Only names whose
integer width is certain are used, and the binding must reproduce np.linalg.eigvalsh on test
matrices before it is trusted; anywhere else (MKL or Accelerate builds of numpy, unknown
symbol names) `eigvalsh_inplace` is np.linalg.eigvalsh, with the same results, just less parallel.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import numpy as np

log = logging.getLogger(__name__)

_COL_MAJOR = 102
# (symbol, integer type): the 64_ suffix marks ILP64 (numpy's own OpenBLAS since numpy 2.0).
_SYMBOLS = (("scipy_LAPACKE_dsyevd64_", ctypes.c_int64), ("LAPACKE_dsyevd64_", ctypes.c_int64),
            ("scipy_LAPACKE_dsyevd", ctypes.c_int32))


@functools.lru_cache(maxsize=1)
def blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, built once (finding them costs ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _numpy_blas_paths() -> list[str]:
    return [lib.filepath for lib in blas_controller().select(user_api="blas").lib_controllers
            if "numpy" in lib.filepath.replace("\\", "/").lower()]


def _bind(path: str):
    lib = ctypes.CDLL(path)
    for name, int_t in _SYMBOLS:
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        fn.restype = int_t
        fn.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, int_t, ctypes.c_void_p, int_t, ctypes.c_void_p]
        return fn
    return None


def _call(fn, a: np.ndarray) -> np.ndarray:
    """dsyevd on a float64 symmetric matrix; `a` is overwritten (pass a copy you own)."""
    n = a.shape[0]
    w = np.empty(n, dtype=np.float64)
    info = fn(_COL_MAJOR, b"N", b"L", n, a.ctypes.data, max(1, n), w.ctypes.data)
    if info != 0:
        raise np.linalg.LinAlgError(f"LAPACK dsyevd failed (info={info})")
    return w


def _passes_self_check(fn) -> bool:
    rng = np.random.default_rng(0)
    for n in (1, 4, 67):
        x = rng.standard_normal((n + 3, n))
        gram = x.T @ x
        if not np.allclose(_call(fn, np.array(gram, order="F")), np.linalg.eigvalsh(gram), rtol=1e-10, atol=1e-12):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _dsyevd():
    """The GIL-free dsyevd binding, or None where none can be trusted."""
    return _first_trusted(_bind, _passes_self_check, "dsyevd")


def _first_trusted(bind, check, what: str):
    """The first binding from numpy's BLAS libraries that passes its self-check, or None."""
    try:
        for path in _numpy_blas_paths():
            fn = bind(path)
            if fn is not None and check(fn):
                return fn
    except Exception as exc:  # an unusual build must never break the analysis
        log.debug("no GIL-free %s binding: %s", what, exc)
    return None


# cblas_dsyrk, bound as dsyevd is (same library, same integer widths): C += A A^T without the GIL.
_SYRK_SYMBOLS = (("scipy_cblas_dsyrk64_", ctypes.c_int64), ("cblas_dsyrk64_", ctypes.c_int64),
                 ("scipy_cblas_dsyrk", ctypes.c_int32))
_LOWER, _NO_TRANS = 122, 111


def _bind_syrk(path: str):
    lib = ctypes.CDLL(path)
    for name, int_t in _SYRK_SYMBOLS:
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, ctypes.c_double, ctypes.c_void_p,
                       int_t, ctypes.c_double, ctypes.c_void_p, int_t]
        return fn
    return None


def _syrk_call(fn, gram: np.ndarray, x: np.ndarray) -> None:
    # x (lines, M) in C order is A = x^T (M, lines) in column-major order: A A^T = x^T x, into the
    # column-major lower triangle of gram (its upper triangle in C order), which dsyevd reads.
    lines, m = x.shape
    fn(_COL_MAJOR, _LOWER, _NO_TRANS, m, lines, 1.0, x.ctypes.data, max(1, m), 1.0, gram.ctypes.data, max(1, m))


def _syrk_passes_self_check(fn) -> bool:
    rng = np.random.default_rng(0)
    for n in (1, 5, 67):
        blocks = [rng.standard_normal((k, n)) for k in (3, n + 2)]
        gram = np.zeros((n, n))
        for x in blocks:
            _syrk_call(fn, gram, x)
        want = sum(x.T @ x for x in blocks)
        if not (np.allclose(np.triu(gram), np.triu(want), rtol=1e-12, atol=1e-12) and not np.tril(gram, -1).any()):
            return False
    return True


@functools.lru_cache(maxsize=1)
def _dsyrk():
    """The GIL-free dsyrk binding, or None; only beside the dsyevd binding (the triangle one writes
    is the one the other reads)."""
    if _dsyevd() is None:
        return None
    return _first_trusted(_bind_syrk, _syrk_passes_self_check, "dsyrk")


def gram_update(gram: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """gram + x^T x for a C-contiguous float64 (lines, M) block x; gram None: a new M x M matrix.

    With the binding: BLAS dsyrk adds into gram itself, with the GIL released, and writes only the
    triangle `eigvalsh_inplace` reads (upper in C order; `mirror_upper` completes it), so a sum
    over blocks never holds a second M x M product. Elsewhere: numpy's x.T @ x added (full matrix).
    """
    fn = _dsyrk()
    if fn is None:
        part = x.T @ x
        return part if gram is None else np.add(gram, part, out=gram)
    if gram is None:
        gram = np.zeros((x.shape[1], x.shape[1]))
    _syrk_call(fn, gram, x)
    return gram


def mirror_upper(gram: np.ndarray, rows: int = 512) -> np.ndarray:
    """Copy a square C-order matrix's upper triangle onto its lower, in place, a block of rows at a time."""
    m = gram.shape[0]
    for i in range(0, m, rows):
        j = min(m, i + rows)
        gram[j:, i:j] = gram[i:j, j:].T
        diag = gram[i:j, i:j]
        low = np.tril_indices(j - i, -1)
        diag[low] = diag.T[low]
    return gram


def gil_free() -> bool:
    """Whether `eigvalsh_inplace` runs without the GIL (numpy's own OpenBLAS was found and checked)."""
    return _dsyevd() is not None


def eigvalsh_inplace(gram: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of one exactly symmetric float64 matrix, destroying `gram`.

    `gram` is LAPACK's workspace when it is a contiguous float64 array (a symmetric matrix
    is its own transpose, so C order serves as Fortran order); otherwise it is copied first.
    """
    fn = _dsyevd()
    if fn is None:
        return np.linalg.eigvalsh(gram)
    a = gram if gram.dtype == np.float64 and (gram.flags.f_contiguous or gram.flags.c_contiguous) else \
        np.array(gram, dtype=np.float64, order="F")
    return _call(fn, a)
