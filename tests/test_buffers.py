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


# A fresh interpreter: glibc's thresholds depend on what the process has freed before. Two calls that
# free scratch arrays and then their result: a 96-channel 5x5x5 depthwise layer, whose two units copy
# x into volumes (with a 32 KiB L1, as on the machines that measured it), and a channels-first layer,
# whose x and result are moved.
_FAULTS = """
import resource, numpy as np, nbconv
from nbconv import buffers
from nbconv.cpu import target
buffers.MIN_BYTES = {min_bytes}
target.l1_bytes = lambda: 32 << 10
rng = np.random.default_rng(0)
if {channel_first}:
    x, w, groups = rng.standard_normal((1, 32, 1, 96, 96), np.float32), rng.standard_normal((1, 3, 3, 8, 64)), 4
else:
    x, w, groups = rng.standard_normal((1, 6, 30, 40, 96), np.float32), rng.standard_normal((5, 5, 5, 1, 96)), 96
w = w.astype(np.float32)
for _ in range(3):
    nbconv.conv3d(x, w, groups=groups, channel_first={channel_first})
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    y = nbconv.conv3d(x, w, groups=groups, channel_first={channel_first})
    del y
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5, x.nbytes // 4096)
"""


def _faults(channel_first, min_bytes):
    child = subprocess.run([sys.executable, "-c", _FAULTS.format(channel_first=channel_first, min_bytes=min_bytes)],
                           capture_output=True, text=True, check=True)
    return map(float, child.stdout.split())


@pytest.mark.skipif(sys.platform != "linux", reason="counts glibc's page faults")
@pytest.mark.parametrize("channel_first", [False, True])
def test_repeated_calls_fault_in_no_pages(channel_first):
    """Without kept buffers of these sizes (4 MiB and up only, as before) glibc trimmed the scratch
    arrays and the result each call and faulted their pages in again: 2-4 faults a call for every
    page of x. With them, none."""
    unkept, pages = _faults(channel_first, 4 << 20)
    assert unkept > pages, "glibc kept these pages: this test no longer shows what it guards against"
    kept, _ = _faults(channel_first, buffers.MIN_BYTES)
    assert kept < pages / 10
