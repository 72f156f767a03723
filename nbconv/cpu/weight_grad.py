"""The weight gradient of a convolution on the forward's micro-kernel: for each group and kernel tap,
dw[tap, i, o] = the sum over the batch and the output positions of x[position + tap, i] * dy[position, o].

That is the micro-kernel's product with the roles changed: its "pixels" are input channels i, its
vectors output channels o, its reduction the positions. One `fma_tile` call keeps P input channels x V
vectors of output channels of one tap in registers while it runs over a plane of positions, each step
broadcasting P values of x and loading V vectors of dy: the forward's register blocking, and the
forward's bodies (`microkernel`, K = 1). (Run as a forward convolution of x by dy instead, the same
work had 1-3 reduction steps per tap and a 3-pixel output row: 3.8x the forward's time on dense_c64.)
So that the P input channels of a position are one stride apart and a row's positions are
consecutive, x is transposed to rows of (phase, Cin, W / phases) per (n, d, h), and dy is packed into
blocks of V vectors, (group, block, n, od, oh, class, position, V * LANES).

Along W, a row's output positions ow fall into Q = l / gcd(s, l) classes (s the stride, l the input
dilation, as in the forward's `blocked._band`): within a class, consecutive positions through one tap
read inputs P = s / gcd(s, l) apart, or none (the tap falls on inserted zeros). x's W is therefore split
into P phases (w = j * P + phase) and dy's positions into Q classes (ow = m * Q + class), so that a tap
reads consecutive elements of both: a tap list entry is (x offset, dy offset, count) per row and class.

A task is one (group, block, kd, kh) and a run of input channels; it owns those entries of dw, so
tasks need no locks. It sums plane by plane (n, od): each plane's x and dy rows (a few hundred KiB)
stay in L2 while every kw and every tile of input channels reads them, and each tile's plane sum is
added into dw.
"""
from functools import lru_cache
from math import gcd

import numpy as np
from numba import carray, get_num_threads, njit, prange

from nbconv.config import CACHE
from nbconv.cpu import blocked, launch, parallel
from nbconv.cpu.microkernel import CACHED, TARGET, fma_tile, lanes
from nbconv.cpu.tasks import claim

# Tasks per thread to aim for when a layer has few (group, block, kd, kh) (a 1x1x1 kernel): its input
# channels are then split into runs, so that the threads finish close together.
TASKS_PER_THREAD = 4
# The most pixels of any micro-kernel body: a tile's plane sums are stored in a scratch of this many rows.
_MOST_PIXELS = max(max(counts) for counts in TARGET.blocking.pixels.values())


def usable(geometry, dtype):
    """Whether a group's output channels fill half a vector or more (K = 1: the micro-kernel's vectors are
    output channels of one group). Smaller groups (depthwise) would leave most lanes idle."""
    return blocked.spread_for(geometry, dtype) == 1


def weight_gradient(x, dy, geometry):
    """dw (KD, KH, KW, Cin / groups, Cout) of the convolution `geometry` of x (N, D, H, W, Cin) with the
    cotangent dy (N, OD, OH, OW, Cout); both channels-last, C-contiguous, of one float dtype."""
    entry, workers, meta, w_table, (phases, row_length, classes, positions) = _launch_args(
        geometry, x.dtype, get_num_threads())
    n, d, h, w, cin = x.shape
    rows = _transposed(x.reshape(n * d * h, w, cin), phases, row_length)
    packed = _packed(dy, geometry, blocked._blocking(geometry, x.dtype), classes, positions)
    dw = np.zeros((*geometry.kernel, cin // geometry.groups, geometry.out_channels), x.dtype)
    idx_d, idx_h, _ = geometry.tap_tables()
    arrays = (rows, packed, np.zeros(meta[12], x.dtype), dw, idx_d, idx_h, w_table,
              np.zeros(3, np.int64), meta)
    launch.run_tasks(entry, workers, arrays, meta[0], geometry.flops)
    return dw


def _transposed(x, phases, row_length):
    """x (rows, W, Cin) -> (rows, phases, Cin, row_length): element w of channel i at [w % phases, i,
    w // phases] (the ends of rows of other phases are never read)."""
    out = np.empty((x.shape[0], phases, x.shape[2], row_length), x.dtype)
    _transpose(x, phases, out)
    return out


@parallel.kernel(cache=CACHE)
def _transpose(x, phases, out):
    for row in prange(x.shape[0]):
        for w in range(x.shape[1]):
            for i in range(x.shape[2]):
                out[row, w % phases, i, w // phases] = x[row, w, i]


def _packed(dy, geometry, blocking, classes, positions):
    """dy (N, OD, OH, OW, Cout) -> (groups, blocks, N * OD * OH, classes, positions, V * LANES): position
    ow = m * classes + c of output channel g * Cout_g + b * V * LANES + j at [g, b, row, c, m, j], zero
    past the group's channels (the lanes of a partial block) and past the row's end. dy itself where
    that is its layout."""
    width = blocking.vectors * lanes(dy.dtype)
    groups, cout = geometry.groups, geometry.out_channels
    if groups == 1 and blocking.blocks == 1 and classes == 1 and cout == width:
        return dy
    n, od, oh, ow, _ = dy.shape
    out = np.empty((groups, blocking.blocks, n * od * oh, classes, positions, width), dy.dtype)
    _pack(dy.reshape(n * od * oh, ow, cout), cout // groups, out)
    return out


@parallel.kernel(cache=CACHE)
def _pack(dy, cout_g, out):
    groups, blocks, rows, classes, positions, width = out.shape
    for row in prange(rows):
        for g in range(groups):
            for b in range(blocks):
                for c in range(classes):
                    for m in range(positions):
                        ow = m * classes + c
                        for j in range(width):
                            channel = b * width + j
                            inside = ow < dy.shape[1] and channel < cout_g
                            out[g, b, row, c, m, j] = dy[row, ow, g * cout_g + channel] if inside else 0


@lru_cache(maxsize=64)
def _launch_args(geometry, dtype, threads):
    """The family's entry address, the threads to run it on, `_work`'s meta (read-only), the W tap
    table and the layout sizes (phases, row length, classes, positions per class), from the geometry."""
    dtype = np.dtype(dtype)
    blocking = blocked._blocking(geometry, dtype)
    n, od, oh, ow, cout = geometry.out_shape
    d, h, w = geometry.in_spatial
    kd, kh, kw = geometry.kernel
    stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
    classes, phases = lhs // gcd(stride, lhs), stride // gcd(stride, lhs)
    row_length, positions = -(-w // phases), -(-ow // classes)
    groups, cin = geometry.groups, geometry.in_channels
    cin_g, width = cin // groups, blocking.vectors * lanes(dtype)
    w_table = _w_table(geometry.tap_index(2), classes, phases, cin * row_length, positions, width)
    # Input channels per task: whole tiles of the largest body, fewer where there are few tasks.
    tile = TARGET.pixel_counts(blocking.vectors)[0]
    base = groups * blocking.blocks * kd * kh
    runs = max(1, min(-(-cin_g // tile), -(-TASKS_PER_THREAD * threads // base)))
    per_task = -(-cin_g // runs // tile) * tile
    runs = -(-cin_g // per_task)
    n_tasks = base * runs
    workers = min(threads, n_tasks)
    meta = np.array((n_tasks, workers, n, d, h, phases, cin, row_length, od, oh, classes, positions, width, kd,
                     kh, kw, groups, blocking.blocks, cin_g, cout // groups, cout, per_task, runs), np.int64)
    meta.flags.writeable = False
    layout = (phases, row_length, classes, positions)
    return launch.address(_entry(blocking.shape[0], dtype)), workers, meta, w_table, layout


def _w_table(idx_w, classes, phases, phase_length, positions, width):
    """(KW, classes, 3): per W tap and class, the x offset in a transposed row (phase * phase_length +
    the first element), the dy offset in a packed row ((class * positions + the first position) *
    width) and the count of positions (0: the tap reads only padding or inserted zeros there)."""
    table = np.zeros((idx_w.shape[1], classes, 3), np.int64)
    for k in range(idx_w.shape[1]):
        for c in range(classes):
            valid = np.flatnonzero(idx_w[c::classes, k] >= 0)  # an interval (see the module docstring)
            if valid.size:
                first = idx_w[c + classes * valid[0], k]
                table[k, c] = (first % phases * phase_length + first // phases,
                               (c * positions + valid[0]) * width, valid.size)
    table.flags.writeable = False
    return table


def _entry(vectors, dtype):
    """The compiled entry point of one family (V vectors, as a tuple of zeros, and a dtype), as
    `blocked._entry`; compiled (or loaded) once per process."""
    if (vectors, dtype) in ENTRIES:
        return ENTRIES[vectors, dtype]
    digest = launch.LINKED_SOURCES

    def entry(x, dy, zeros, dw, idx_d, idx_h, w_table, counter, meta):
        digest  # noqa: B018 (a cell of the closure, which Numba's cache keys by)
        _work(x, dy, zeros, dw, idx_d, idx_h, w_table, counter, meta, vectors)
    ENTRIES[vectors, dtype] = launch.entry_point(entry, dtype)
    return ENTRIES[vectors, dtype]


# (V as a tuple of zeros, dtype) -> compiled entry (`_entry`)
ENTRIES = {}
_META = 23


@njit(inline="always")
def _work(x_ptr, dy_ptr, zeros_ptr, dw_ptr, d_ptr, h_ptr, w_ptr, counter_ptr, meta_ptr, vectors):
    """One thread's share: runs of tasks claimed from counter[0] until the slice's end, on flat views
    of the arrays made once (see `blocked._work`)."""
    meta = carray(meta_ptr, (_META,))
    n_tasks, workers, n, d, h, phases, cin, row_length, od, oh, classes, positions, width = meta[:13]
    kd, kh, kw, groups, blocks, cin_g, cout_g, cout, per_task, runs = meta[13:]
    x = carray(x_ptr, (n * d * h * phases * cin * row_length,))
    dy = carray(dy_ptr, (groups * blocks * n * od * oh * classes * positions * width,))
    dw = carray(dw_ptr, (kd * kh * kw * cin_g * cout,))
    tables = (carray(d_ptr, (od, kd)), carray(h_ptr, (oh, kh)), carray(w_ptr, (kw, classes, 3)))
    zeros = carray(zeros_ptr, (width,))  # the bias the micro-kernel adds
    scratch = np.empty(_MOST_PIXELS * width, x.dtype)
    taps, counts = np.empty((kw, oh * classes, 3), np.int64), np.empty(kw, np.int64)
    sizes = (n, od, oh, d, h, phases * cin * row_length, classes * positions * width, row_length, width,
             blocks, cin_g, cout_g, cout, kh, kw)
    counter = carray(counter_ptr, (3,))
    start, end = counter[1], counter[2]
    first, last = claim(counter, start, end, workers)
    while first < end:
        for task in range(first, last):
            run, rest = task % runs, task // runs
            place = (rest // (blocks * kd * kh), rest // (kd * kh) % blocks, rest // kh % kd, rest % kh)
            channels = (run * per_task, min(cin_g, (run + 1) * per_task))
            _task(x, dy, zeros, scratch, dw, tables, (taps, counts), sizes, place, channels, vectors)
        first, last = claim(counter, last, end, workers)


@njit(inline="always")
def _task(x, dy, zeros, scratch, dw, tables, tap_lists, sizes, place, channels, vectors):
    """dw for the taps (kd, kh, every kw) of group g, block b, input channels channels[0]...[1] - 1:
    plane by plane (n, od), a tap list per kw, micro-kernel tiles of input channels."""
    n, od, oh, d, h, x_row, dy_row, row_length, width, blocks, cin_g, cout_g, cout, kh, kw = sizes
    g, b, i_kd, i_kh = place
    idx_d, (taps, counts) = tables[0], tap_lists
    stored = min(width, cout_g - b * width)
    for i_n in range(n):
        for i_od in range(od):
            i_d = idx_d[i_od, i_kd]
            if i_d < 0:
                continue
            _tap_lists(taps, counts, tables, sizes, place, i_n, i_od, i_d)
            i = channels[0]
            while i < channels[1]:  # a tile of input channels through every kw, while its rows are in L1
                pixels = 0
                for i_kw in range(kw):
                    if counts[i_kw] == 0:
                        continue
                    pixels = fma_tile(vectors, (0,), (0,), (0,), channels[1] - i, x,
                                      ((g * cin_g + i) * row_length, row_length), taps[i_kw], counts[i_kw], dy, (0, 0),
                                      zeros, scratch, (0, width, width, CACHED))
                    out = (((i_kd * kh + i_kh) * kw + i_kw) * cin_g + i) * cout + g * cout_g + b * width
                    for p in range(pixels):
                        for j in range(stored):
                            dw[out + p * cout + j] += scratch[p * width + j]
                if pixels == 0:  # no kw reads this plane
                    break
                i += pixels


@njit(inline="always")
def _tap_lists(taps, counts, tables, sizes, place, i_n, i_od, i_d):
    """taps[kw, :counts[kw]] = (x offset, dy offset, count) of the rows and classes of plane (n, od)
    through (kd, kh, kw), for every kw."""
    n, od, oh, d, h, x_row, dy_row, row_length, width, blocks, cin_g, cout_g, cout, kh, kw = sizes
    g, b, i_kd, i_kh = place
    idx_h, w_table = tables[1], tables[2]
    counts[:] = 0
    for i_kw in range(kw):
        for i_oh in range(oh):
            i_h = idx_h[i_oh, i_kh]
            if i_h < 0:
                continue
            x_at = ((i_n * d + i_d) * h + i_h) * x_row
            dy_at = ((((g * blocks + b) * n + i_n) * od + i_od) * oh + i_oh) * dy_row
            for c in range(w_table.shape[1]):
                if w_table[i_kw, c, 2] > 0:
                    count = counts[i_kw]
                    taps[i_kw, count, 0] = x_at + w_table[i_kw, c, 0]
                    taps[i_kw, count, 1] = dy_at + w_table[i_kw, c, 1]
                    taps[i_kw, count, 2] = w_table[i_kw, c, 2]
                    counts[i_kw] = count + 1
