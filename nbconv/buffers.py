"""Results and scratch arrays whose memory is used again once nothing views them.

A fresh array costs page faults where it is first written, one per 4 KiB page, or long stalls when
NumPy's huge-page advice meets memory the kernel must first compact (a large result can take longer
to fault in than to compute). glibc hands freed blocks of 32 MB or more back to the kernel, and
smaller ones too whenever the free memory at the top of its heap outgrows twice the largest block it
has handed back: a call that frees a scratch array and then its result (a copy of x, and y) trims
both, from 128 KiB up, and faults all their pages in again on the next call. So arrays of MIN_BYTES
or more are views of a few buffers kept here; a buffer is handed out again only when no array views
it any more (every view's ``.base`` is the buffer, so its reference count tells).

Every result starts on a cache line, so that no vector store splits across two: NumPy puts an array's
data 16 bytes past one (glibc's malloc), where wide vector stores would split across two lines;
small ones are views of a fresh array one line longer.
"""
import sys
import threading
from math import prod

import numpy as np

MIN_BYTES = 128 << 10  # glibc's smallest threshold for handing memory back
KEPT = 8  # buffers kept at most, idle or not
MAX_KEPT_BYTES = 1 << 30
ALIGN = 64

_kept = []  # (buffer, offset of its first cache line), least recently handed out first
_lock = threading.Lock()


def empty(shape, dtype):
    """Like np.empty(shape, dtype), starting on a cache line; large arrays reuse the memory of dropped
    earlier results."""
    dtype = np.dtype(dtype)
    nbytes = prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return fresh(shape, dtype)
    with _lock:
        buffer, start = _take(nbytes + ALIGN)
    return np.ndarray(shape, dtype, buffer=buffer, offset=start)


def contiguous(a, dtype):
    """Like np.ascontiguousarray(a, dtype), a copy (where one is needed) from `empty`."""
    if a.flags.c_contiguous and a.dtype == dtype:
        return a
    copy = empty(a.shape, dtype)
    np.copyto(copy, a, casting="unsafe")
    return copy


def fresh(shape, dtype):
    """Like np.empty(shape, dtype), starting on a cache line, never kept here."""
    dtype = np.dtype(dtype)
    buffer, start = _aligned(np.empty(prod(shape) * dtype.itemsize + ALIGN, np.uint8))
    return np.ndarray(shape, dtype, buffer=buffer, offset=start)


def _aligned(buffer):
    """(buffer, the offset of its first cache-line-aligned byte)."""
    return buffer, -buffer.ctypes.data % ALIGN


def _take(size):
    """An idle kept buffer of `size` bytes and its first cache-line-aligned byte, else a new one, kept
    if there is room (an idle buffer of another size makes room)."""
    # Idle: only its entry in the list and getrefcount's argument refer to it.
    idle = [i for i in range(len(_kept)) if sys.getrefcount(_kept[i][0]) == 2]
    for i in idle:
        if _kept[i][0].nbytes == size:
            _kept.append(_kept.pop(i))
            return _kept[-1]
    entry = _aligned(np.empty(size, np.uint8))
    if len(_kept) >= KEPT and idle:
        del _kept[idle[0]]
    if len(_kept) < KEPT and sum(b.nbytes for b, _ in _kept) + size <= MAX_KEPT_BYTES:
        _kept.append(entry)
    return entry
