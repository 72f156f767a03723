"""The thread-pool wake-up that precedes every CPU convolution."""
import numba
import numpy as np
import pytest

from nbconv.cpu import threads


@pytest.mark.parametrize("n_threads", [1, 2])
def test_wake_runs_one_region_over_the_threads(n_threads, monkeypatch):
    """One trivial parallel region with an element per thread; none with a single thread."""
    real, touched = threads._touch, []
    monkeypatch.setattr(threads, "_touch", lambda flags: touched.append(len(flags)) or real(flags))
    before = numba.get_num_threads()
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        threads.wake()
        assert touched == ([numba.get_num_threads()] if numba.get_num_threads() > 1 else [])
    finally:
        numba.set_num_threads(before)


def test_touch_writes_every_element():
    flags = np.full(3, -1, np.int64)
    threads._touch(flags)
    np.testing.assert_array_equal(flags, [0, 1, 2])
