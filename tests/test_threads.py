"""The thread-pool wake-up that precedes the loop nest, and GNU OpenMP's spin before a thread sleeps."""
import os
import subprocess
import sys

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


@pytest.mark.parametrize("given, expected", [
    ({}, "10000"),  # nbconv's short spin (nbconv.cpu.parallel.GOMP_SPINCOUNT)
    ({"GOMP_SPINCOUNT": "7"}, "7"),  # the user's, as set
    ({"OMP_WAIT_POLICY": "active"}, None),  # the user's policy, which a spin count would override
])
def test_gnu_openmp_spins_briefly_unless_the_user_says_otherwise(given, expected):
    """After an idle spell, a woken worker queued behind the main thread's spin made a short call last
    the whole spin: nbconv shortens it, before GNU OpenMP reads it (at the first parallel launch)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = "import os, nbconv; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == [str(expected)]
