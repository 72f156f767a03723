"""x copied into a volume of input channels per unit (`blocked._Blocking.volumes`), on every thread.

The copy runs through the parallel loop that every kernel shares (`launch.run`), as one small C
function per dtype: a `parallel=True` copy of its own would add its own parfor compile to the cold
first call (see `launch`). Each thread claims runs of rows (n, d, h) and writes each unit's part of a
row in order, from the row it has just read, 8 values a move (`_move`: a value at a time stays scalar,
and a parallel loop over 5-D indices works out each value's place on its own).
"""
from functools import cache

import numpy as np
from numba import carray, get_num_threads, njit

from nbconv import buffers
from nbconv.cpu import launch
from nbconv.cpu.tasks import claim


def group_inputs(x, units, per_unit):
    """x (N, D, H, W, Cin) with each unit's input channels in a volume of its own, (N * units, D, H, W,
    unit's channels): volume n * units + u is sample n's unit u, its channels in the order one
    reduction step reads them, its groups' interleaved (input channel, group)."""
    n, d, h, w, cin = x.shape
    out = buffers.empty((n * units, d, h, w, cin // units), x.dtype)
    rows = n * d * h
    workers = min(get_num_threads(), rows)
    meta = np.array((workers, rows, d * h, w, units, per_unit, cin // (units * per_unit)), np.int64)
    meta.flags.writeable = False
    arrays = launch.copy_arrays(x, out, meta)  # 5-D arrays and read-only meta, as the kernels' (`blocked.run`)
    # (the elements copied stand for the work that sizes Ctrl-C slices: one launch below 5e8)
    launch.run_tasks(launch.address(_entry(np.dtype(x.dtype))), workers, arrays, rows, x.size)
    return out


@cache
def _entry(dtype):
    """The compiled copy, called by the shared loop as the kernels' entries are (`blocked._entry`)."""
    digest = launch.LINKED_SOURCES

    def entry(x, _unused, _unused2, out, _d, _h, _w, counter, meta):
        digest  # noqa: B018 (a cell of the closure, which Numba's cache keys by)
        _copy(x, out, counter, meta)
    return launch.entry_point(entry, dtype)


@njit(inline="always")
def _copy(x_ptr, out_ptr, counter_ptr, meta_ptr):
    """One thread's share: runs of rows claimed from counter[0] until the slice's end. The data are
    indexed through their pointers, which Numba does not check for negative indices as it does an
    array's: those checks kept LLVM from merging a pixel's loads into vector moves."""
    workers, rows, rows_per_sample, width, units, per_unit, cin_g = carray(meta_ptr, (7,))
    counter = carray(counter_ptr, (3,))
    start, end = counter[1], counter[2]
    unit_cin = per_unit * cin_g
    row_size = width * units * unit_cin
    first, last = claim(counter, start, end, workers)
    while first < end:
        for row in range(first, last):
            n, r = row // rows_per_sample, row % rows_per_sample
            for u in range(units):
                to = ((n * units + u) * rows_per_sample + r) * width * unit_cin
                for p in range(width):
                    _unit_pixel(out_ptr, to + p * unit_cin, x_ptr, row * row_size + (p * units + u) * unit_cin,
                                per_unit, cin_g)
        first, last = claim(counter, last, end, workers)


@njit(inline="always")
def _unit_pixel(out, to, x, at, per_unit, cin_g):
    """One pixel's channels of one unit: out[to + i * per_unit + j] = x[at + j * cin_g + i], a plain
    copy where that is x's order (one group, or one channel a group)."""
    if per_unit == 1 or cin_g == 1:
        _move(out, to, x, at, per_unit * cin_g)
        return
    for j in range(per_unit):
        for i in range(cin_g):
            out[to + i * per_unit + j] = x[at + j * cin_g + i]


@njit(inline="always")
def _move(out, to, x, at, size):
    """out[to + i] = x[at + i] for i < size, 8 values at a time read before any is written: LLVM cannot
    tell that out and x do not overlap, so a loop of loads and stores in turn stays scalar (and a loop
    of a run-time length vectorises only from 32 values: grouped_g8's units have 8 channels)."""
    i = 0
    while i + 8 <= size:
        values = (x[at + i], x[at + i + 1], x[at + i + 2], x[at + i + 3], x[at + i + 4], x[at + i + 5],
                  x[at + i + 6], x[at + i + 7])
        for k in range(8):
            out[to + i + k] = values[k]
        i += 8
    for k in range(i, size):
        out[to + k] = x[at + k]
