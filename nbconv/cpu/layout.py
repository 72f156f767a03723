"""Arrays moved between the caller's channels-first layout and the kernels' channels-last one, on every
thread.

NumPy copies a moved axis one value at a time in the order of the result, jumping through the
source: (2, 64, 16, 32, 32) float32 (8 MB) took 6 ms to move, a tenth of dense_c64's convolution, and
a 1.6 MB image 0.23-0.42 ms, twice the depthwise convolution of it. Here each sample's (R, Q) matrix
becomes (Q, R) in blocks of 8 x 8 values, 8 rows loaded whole, transposed in registers and stored
whole (`_block`), tile by tile (64 x 64 values); the threads claim tiles as the kernels claim their tasks,
through the parallel loop that every kernel shares (`launch.run`, as `regroup`).
"""
from functools import cache

import numpy as np
from llvmlite import ir
from numba import carray, get_num_threads, njit, types
from numba.extending import intrinsic

from nbconv import buffers, call
from nbconv.cpu import launch, nojit
from nbconv.cpu.tasks import claim

# Values a side of a block transposed in registers: 8 float32 fill an AVX2 register, 8 float64 two.
BLOCK = 8
# A tile (a task) is up to TILE x TILE values: 32 KB of float64 read and 32 KB written.
TILE = 64


def to_kernel_layout(a, conv_call, dtype):
    """`call.to_kernel_layout`: a channels-first array of `dtype` moved here, anything else there."""
    if not (conv_call.channel_first and _movable(a, dtype)):
        return call.to_kernel_layout(a, conv_call, dtype)
    a5 = a if conv_call.batched else a[None]
    n, c, *spatial = a5.shape
    return swapped(a5.reshape(n, c, -1)).reshape(n, *spatial, c)


def to_caller_layout(y, conv_call, out=None, dtype=None):
    """`call.to_caller_layout`: a channels-last result moved here (into `out` when given) where the
    caller wants it channels-first in its own dtype, anything else there."""
    dtype = np.dtype(conv_call.result_dtype if dtype is None else dtype)
    if not (conv_call.channel_first and _movable(y, dtype)):
        return call.to_caller_layout(y, conv_call, out, dtype)
    n, *spatial, c = y.shape
    into = None if out is None else out.reshape(n, c, -1)
    moved = swapped(y.reshape(n, -1, c), into).reshape(n, c, *spatial)
    return out if out is not None else moved if conv_call.batched else moved[0]


def _movable(a, dtype):
    """Whether `swapped` can move `a` into `dtype`: a C-contiguous NumPy array of it, not empty."""
    return isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous and a.size > 0


def swapped(a, out=None):
    """a (N, R, Q), C-contiguous, as (N, Q, R), C-contiguous: into `out` when given, else from
    `buffers.empty`."""
    n, rows, cols = a.shape
    out = buffers.empty((n, cols, rows), a.dtype) if out is None else out
    tile_rows, tile_cols = _tile(rows, cols)
    across = -(-cols // tile_cols)
    per_sample = -(-rows // tile_rows) * across
    workers = min(get_num_threads(), n * per_sample)
    meta = np.array((workers, rows, cols, tile_rows, tile_cols, across), np.int64)
    meta.flags.writeable = False
    # (5-D arrays, as the kernels'; the values moved stand for the work that sizes Ctrl-C slices)
    arrays = launch.copy_arrays(a.reshape(n, rows, cols, 1, 1), out.reshape(n, cols, rows, 1, 1), meta)
    launch.run_tasks(launch.address(_entry(a.dtype)), workers, arrays, n * per_sample, a.size)
    return out


def _tile(rows, cols):
    """(rows, columns) of a tile: TILE x TILE, or TILE * TILE values across an axis shorter than a
    block (3 channels), which moves value by value."""
    if rows < BLOCK:
        return rows, TILE * TILE // rows
    if cols < BLOCK:
        return TILE * TILE // cols, cols
    return TILE, TILE


@cache
def _entry(dtype):
    """The compiled move, called by the shared loop as the kernels' entries are (`blocked._entry`)."""
    digest = launch.LINKED_SOURCES

    def entry(a, _unused, _unused2, out, _d, _h, _w, counter, meta):
        digest  # noqa: B018 (a cell of the closure, which Numba's cache keys by)
        _move_tiles(a, out, counter, meta)
    return launch.entry_point(entry, dtype)


@njit(inline="always")
def _move_tiles(a, out, counter_ptr, meta_ptr):
    """One thread's share: runs of tiles claimed from counter[0] until the slice's end, tile t of
    sample t // per_sample, row of tiles by row. Indexed through the data pointers, as `regroup._copy`."""
    workers, rows, cols, tile_rows, tile_cols, across = carray(meta_ptr, (6,))
    counter = carray(counter_ptr, (3,))
    per_sample = -(-rows // tile_rows) * across
    start, end = counter[1], counter[2]
    first, last = claim(counter, start, end, workers)
    while first < end:
        for task in range(first, last):
            base, tile = task // per_sample * rows * cols, task % per_sample
            r0, c0 = tile // across * tile_rows, tile % across * tile_cols
            r1, c1 = min(r0 + tile_rows, rows), min(c0 + tile_cols, cols)
            r_blocks, c_blocks = r0 + (r1 - r0) // BLOCK * BLOCK, c0 + (c1 - c0) // BLOCK * BLOCK
            for r in range(r0, r_blocks, BLOCK):
                for c in range(c0, c_blocks, BLOCK):
                    _block(a, base + r * cols + c, cols, out, base + c * rows + r, rows)
            _by_value(a, out, base, rows, cols, r0, r_blocks, c_blocks, c1)  # the tile's edges
            _by_value(a, out, base, rows, cols, r_blocks, r1, c0, c1)
        first, last = claim(counter, last, end, workers)


@njit(inline="always")
def _by_value(a, out, base, rows, cols, r0, r1, c0, c1):
    """out[c, r] = a[r, c] for r0 <= r < r1, c0 <= c < c1, of the sample at `base`."""
    for r in range(r0, r1):
        for c in range(c0, c1):
            out[base + c * rows + r] = a[base + r * cols + c]


def _block_python(source, at, step, target, to, target_step):
    for i in range(BLOCK):
        for j in range(BLOCK):
            target[to + j * target_step + i] = source[at + i * step + j]


@nojit.python_twin(_block_python)
@intrinsic
def _block(typingctx, source, at, step, target, to, target_step):
    """target[to + j * target_step + i] = source[at + i * step + j] for i, j < BLOCK (pointers): BLOCK
    rows loaded as vectors, transposed by three rounds of two-vector shuffles (rows i and i + s swap
    their off-diagonal s x s blocks, s = 1, 2, 4), and stored as vectors."""
    def codegen(context, builder, signature, args):
        source, at, step, target, to, target_step = args
        vector = ir.VectorType(source.type.pointee, BLOCK)
        align = context.get_abi_sizeof(source.type.pointee)

        def address(pointer, first, stride, i):
            index = builder.add(first, builder.mul(stride, ir.Constant(stride.type, i)))
            return builder.bitcast(builder.gep(pointer, [index]), vector.as_pointer())
        rows = [builder.load(address(source, at, step, i), align=align) for i in range(BLOCK)]
        size = 1
        while size < BLOCK:
            # lanes of rows i (and, from BLOCK on, i + size) that rows i and i + size take
            low = [k if not k & size else BLOCK + k - size for k in range(BLOCK)]
            high = [k + size if not k & size else BLOCK + k for k in range(BLOCK)]
            masks = [ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), lanes) for lanes in (low, high)]
            swapped_rows = list(rows)
            for i in (i for i in range(BLOCK) if not i & size):
                for row, mask in zip((i, i + size), masks):
                    swapped_rows[row] = builder.shuffle_vector(rows[i], rows[i + size], mask)
            rows, size = swapped_rows, 2 * size
        for j, row in enumerate(rows):
            builder.store(row, address(target, to, target_step, j), align=align)
        return context.get_dummy_value()
    if isinstance(source, types.CPointer) and source == target and at == step == to == target_step == types.int64:
        return types.void(source, at, step, target, to, target_step), codegen
    return None
