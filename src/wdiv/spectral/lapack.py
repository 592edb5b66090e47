"""Symmetric eigenvalues (LAPACK dsyevd, no eigenvectors) called with the GIL released.

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
    try:
        for path in _numpy_blas_paths():
            fn = _bind(path)
            if fn is not None and _passes_self_check(fn):
                return fn
    except Exception as exc:  # an unusual build must never break the analysis
        log.debug("no GIL-free LAPACK binding: %s", exc)
    return None


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
