"""Recycled result buffers: memory goes to a new result only once no array views the old one."""
import subprocess
import sys

import numpy as np
import pytest

import nbconv
from nbconv import buffers
from tests.support import assert_conv_close

LARGE = (buffers.MIN_BYTES // 4 + 1000,)


@pytest.fixture(autouse=True)
def no_kept_buffers():
    buffers._kept.clear()
    yield
    buffers._kept.clear()


@pytest.mark.parametrize("shape", [(3, 4), (0, 5), (1000, 3), LARGE])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_arrays_start_on_a_cache_line(shape, dtype):
    """Every array, small (fresh, never kept) or large (kept for reuse), starts on a cache line."""
    arrays = [buffers.empty(shape, dtype) for _ in range(4)]
    for a in arrays:
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % buffers.ALIGN == 0
    assert len(buffers._kept) == (len(arrays) if np.prod(shape) * np.dtype(dtype).itemsize >= buffers.MIN_BYTES else 0)
    assert all(buffers.fresh(shape, dtype).ctypes.data % buffers.ALIGN == 0 for _ in range(4))
    assert len(buffers._kept) == len(arrays) or not buffers._kept  # fresh arrays are never kept


def test_memory_is_reused_only_when_nothing_views_it():
    first = buffers.empty(LARGE, np.float32)
    first[:] = 1
    view = first[10:20]
    address = first.ctypes.data
    del first
    second = buffers.empty(LARGE, np.float32)  # `view` still holds the first buffer
    assert second.ctypes.data != address
    assert (view == 1).all()
    del view
    third = buffers.empty(LARGE, np.float32)
    assert third.ctypes.data == address
    assert third.ctypes.data != second.ctypes.data


def test_at_most_kept_buffers_are_kept():
    held = [buffers.empty((LARGE[0] + i,), np.float32) for i in range(buffers.KEPT + 2)]
    assert len(buffers._kept) == buffers.KEPT
    assert len({a.ctypes.data for a in held}) == len(held)
    del held
    sizes = [buffers.empty((LARGE[0] + 100 + i,), np.float32).nbytes for i in range(3)]
    assert len(buffers._kept) == buffers.KEPT and len(sizes) == 3  # idle buffers of other sizes made room


def test_results_in_recycled_memory_are_right():
    """Two results alive at once never share memory; a dropped one's memory serves the next call."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 32, 32, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4, 160)).astype(np.float32)
    a = nbconv.conv3d(x, w)
    assert a.nbytes >= buffers.MIN_BYTES
    b = nbconv.conv3d(2 * x, w)
    assert not np.shares_memory(a, b)
    assert_conv_close(a, x, w)
    assert_conv_close(b, 2 * x, w)
    address = a.ctypes.data
    del a
    c = nbconv.conv3d(-x, w)
    assert c.ctypes.data == address
    assert_conv_close(c, -x, w)
    assert_conv_close(b, 2 * x, w)


# A fresh interpreter: glibc's thresholds depend on what the process has freed before.
_FAULTS = """
import resource, numpy as np, nbconv
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 80, 72, 96), np.float32)  # 96 depthwise channels: 2 unit volumes
w = rng.standard_normal((3, 3, 1, 96), np.float32)
if {channel_first}:
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
for _ in range(3):
    nbconv.conv2d(x, w, groups=96, channel_first={channel_first})
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    y = nbconv.conv2d(x, w, groups=96, channel_first={channel_first})
    del y
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5, x.nbytes // 4096)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="counts glibc's page faults")
@pytest.mark.parametrize("channel_first", [False, True])
def test_repeated_calls_fault_in_no_pages(channel_first):
    """A call that frees scratch arrays (x copied into unit volumes, or into channels-last) and then
    its result: without kept buffers glibc trimmed them all and each call faulted their pages in
    again: about two faults a call for every page of x, here."""
    child = subprocess.run([sys.executable, "-c", _FAULTS.format(channel_first=channel_first)],
                           capture_output=True, text=True, check=True)
    faults, pages = map(float, child.stdout.split())
    assert faults < pages / 10
