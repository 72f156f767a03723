"""Tasks claimed by the threads as they go (`nbconv.cpu.tasks`)."""
import numba
import numpy as np
import pytest
from numba import njit, prange

from nbconv.cpu.tasks import claim


@pytest.mark.parametrize("n_tasks, workers", [(1, 1), (1, 2), (7, 2), (128, 2), (100, 3), (5, 8)])
def test_claims_in_any_order_cover_every_task_once(n_tasks, workers):
    """Workers asking in an arbitrary order get disjoint runs that together are range(n_tasks);
    the first runs take a share of all tasks, the later ones shrink (never below one task)."""
    rng = np.random.default_rng(n_tasks * workers)
    counter = np.zeros(1, np.int64)
    done, runs = [0] * workers, []
    while True:
        worker = int(rng.integers(workers))
        first, last = claim(counter, done[worker], n_tasks, workers)
        if first >= n_tasks:
            break
        assert last > first
        runs.append((first, last))
        done[worker] = last
    assert sorted(t for first, last in runs for t in range(first, last)) == list(range(n_tasks))
    assert runs[0][1] - runs[0][0] == max(1, n_tasks // (2 * workers))


@njit(parallel=True)
def _count_claims(n_tasks, workers):
    """How often each task is run when `workers` threads claim them (each visit adds 1)."""
    visits = np.zeros(n_tasks, np.int64)
    counter = np.zeros(1, np.int64)
    for _ in prange(workers):
        first, last = claim(counter, 0, n_tasks, workers)
        while first < n_tasks:
            for task in range(first, last):
                visits[task] += 1
            first, last = claim(counter, last, n_tasks, workers)
    return visits


@pytest.mark.parametrize("n_tasks", [1, 3, 128, 1000])
def test_threads_claiming_at_once_run_every_task_once(n_tasks):
    workers = numba.get_num_threads()
    np.testing.assert_array_equal(_count_claims(n_tasks, workers), np.ones(n_tasks, np.int64))
