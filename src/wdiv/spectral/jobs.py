"""A FIFO of jobs run by background threads and by the caller while it waits for one.

Why not a ThreadPoolExecutor with one thread per core: the caller is busy too (it computes the
metrics of finished layers), so a pool that size puts three busy threads on two cores, and the
context switches cost the eigensolver its cache (measured: 1.3-1.6 CPU-seconds for resnet50
against 1.0-1.1 without). Here there are cores - 1 background threads, and a caller waiting
for a result takes the oldest queued jobs and runs them itself, so every core stays busy with
exactly one thread. Jobs must release the GIL in their heavy parts (numpy BLAS, ctypes LAPACK).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable


class Job:
    """One call, run once by whichever thread takes it; result() waits for it (see JobQueue.wait)."""

    __slots__ = ("_fn", "_args", "_value", "_error", "_done")

    def __init__(self, fn: Callable, *args):
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # re-raised in the thread that reads the result
            self._error = exc
        finally:
            self._args = None  # drop the inputs (matrices) as soon as they are used
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def value(self):
        if self._error is not None:
            raise self._error
        return self._value


class JobQueue:
    """FIFO jobs for `threads` background threads plus the caller; a context manager."""

    def __init__(self, threads: int):
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"wdiv-eig-{i}", daemon=True) for i in range(threads)]

    def __enter__(self) -> "JobQueue":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._closed = True
            self._jobs.clear()  # an abandoned analysis leaves nothing running behind it
            self._cv.notify_all()
        for t in self._threads:
            t.join()

    def put(self, jobs: list[Job]) -> None:
        with self._cv:
            self._jobs.extend(jobs)
            self._cv.notify(len(jobs))

    def wait(self, job: Job):
        """job's value; meanwhile the caller runs queued jobs (oldest first) instead of idling."""
        while not job.done:
            with self._cv:
                other = self._jobs.popleft() if self._jobs else None
            if other is None:
                job._done.wait()
                break
            other.run()
        return job.value()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job = self._jobs.popleft()
            job.run()
