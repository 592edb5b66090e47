"""Helpers shared by the benchmark scripts: best-of-N timing and silencing chatty libraries."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings


def best_time(fn, repeat: int) -> float:
    """Fastest of ``repeat`` calls of ``fn`` (seconds): the least disturbed by other processes."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@contextlib.contextmanager
def silenced():
    """Swallow stdout, stderr, warnings and logging (WeightWatcher prints per layer)."""
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
