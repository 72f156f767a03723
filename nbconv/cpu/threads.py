"""Waking the worker threads before a long parallel region.

Idle worker threads sleep. When the first parallel region after an idle spell is a long kernel, the
scheduler may queue the woken worker on the main thread's CPU, where it waits until the main thread
has run its whole share of the kernel: after an idle spell, a short call into a preallocated `out`
took many times as long as back to back. A trivial parallel region first lets the worker move to a
CPU of its own while the main thread waits for it at the region's end, which brings such a call level
with PyTorch's (docs/design.md). asv tracks it (benchmarks: AfterIdle).

Kernels whose threads claim their tasks as they go (`nbconv.cpu.tasks`) need no wake: the main thread
runs what the worker has not claimed. Only the plain loop nest, with equal prange shares, wakes first.
"""
import numpy as np
from numba import get_num_threads, prange

from nbconv.config import CACHE
from nbconv.cpu import parallel


def wake():
    """Run a trivial parallel region on every thread (a few microseconds when they are awake)."""
    n_threads = get_num_threads()
    if n_threads > 1:
        _touch(np.empty(n_threads, np.int64))


@parallel.kernel(cache=CACHE)
def _touch(flags):
    for i in prange(flags.shape[0]):
        flags[i] = i
