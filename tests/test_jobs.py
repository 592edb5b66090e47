"""The eigensolver's job queue and its GIL-free LAPACK binding."""

import threading

import numpy as np
import pytest

from wdiv.spectral import lapack
from wdiv.spectral.jobs import Job, JobQueue


def test_every_job_runs_once_in_background_or_in_the_waiting_caller():
    ran = []
    lock = threading.Lock()

    def work(i):
        with lock:
            ran.append((i, threading.current_thread().name))
        return i * i

    with JobQueue(1) as queue:
        jobs = [Job(work, i) for i in range(200)]
        queue.put(jobs)
        assert [queue.wait(j) for j in jobs] == [i * i for i in range(200)]
    assert sorted(i for i, _ in ran) == list(range(200))
    with JobQueue(0) as queue:  # no background thread: the caller runs everything when it asks
        jobs = [Job(work, i) for i in range(5)]
        queue.put(jobs)
        assert not any(j.done for j in jobs)
        assert queue.wait(jobs[-1]) == 16 and all(j.done for j in jobs)  # oldest first


def test_a_failing_job_raises_in_the_reader_and_the_others_still_run():
    def work(i):
        if i == 3:
            raise ValueError("bad matrix")
        return i

    with JobQueue(1) as queue:
        jobs = [Job(work, i) for i in range(6)]
        queue.put(jobs)
        with pytest.raises(ValueError, match="bad matrix"):
            queue.wait(jobs[3])
        assert queue.wait(jobs[5]) == 5


def test_leaving_with_queued_jobs_drops_them_and_joins_the_threads():
    gate = threading.Event()
    with JobQueue(1) as queue:
        queue.put([Job(gate.wait, 5)] + [Job(lambda: None) for _ in range(100)])
        threads = list(queue._threads)
        gate.set()
    assert not any(t.is_alive() for t in threads)


def _numpy_uses_its_own_openblas() -> bool:
    from threadpoolctl import ThreadpoolController

    return any("numpy" in lib.filepath.lower() and lib.internal_api == "openblas"
               for lib in ThreadpoolController().select(user_api="blas").lib_controllers)


@pytest.mark.parametrize("n", [1, 2, 50, 300])
def test_lapack_binding_equals_numpy_eigvalsh(n):
    x = np.random.default_rng(n).standard_normal((n + 7, n))
    gram = x.T @ x
    expected = np.linalg.eigvalsh(gram)
    for layout in (np.array(gram, order="C"), np.array(gram, order="F"), gram[::1, ::1].T.copy()):
        np.testing.assert_allclose(lapack.eigvalsh_inplace(layout), expected, rtol=1e-12, atol=1e-12 * expected[-1])
    strided = np.zeros((2 * n, 2 * n))
    strided[::2, ::2] = gram  # not contiguous: copied, not overwritten
    view = strided[::2, ::2]
    np.testing.assert_allclose(lapack.eigvalsh_inplace(view), expected, rtol=1e-12, atol=1e-12 * expected[-1])
    np.testing.assert_array_equal(view, gram)


@pytest.mark.skipif(not _numpy_uses_its_own_openblas(), reason="numpy is not linked to its bundled OpenBLAS here")
def test_lapack_binding_is_found_for_numpy_wheels():
    assert lapack.gil_free()
