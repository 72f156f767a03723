"""The weight gradient of a convolution on the forward's micro-kernel: for each group and kernel tap,
dw[tap, i, o] = the sum over the batch and the output positions of x[position + tap, i] * dy[position, o].

That is the micro-kernel's product with the roles changed: its "pixels" are input channels i, its
vectors output channels o, its reduction the positions. One `fma_tile` call keeps P input channels x V
vectors of output channels of one tap in registers while it runs over a plane of positions, each step
broadcasting P values of x and loading V vectors of dy: the forward's register blocking, and the
forward's bodies (`microkernel`, K = 1). (Run as a forward convolution of x by dy instead, the same
work had 1-3 reduction steps per tap and a 3-pixel output row, so overheads outweighed the FMAs.)
So that the P input channels of a position are one stride apart and a row's positions are
consecutive, x is transposed to rows of (phase, Cin, W / phases) per (n, d, h) (a group of fewer input
channels than the largest tile padded with zero channels to the next tile's size), and dy is packed
into blocks of V vectors, (group, block, n, od, oh, class, position, V * LANES).

Along W, a row's output positions ow fall into Q = l / gcd(s, l) classes (s the stride, l the input
dilation, as in the forward's `blocked._band`): within a class, consecutive positions through one tap
read inputs P = s / gcd(s, l) apart, or none (the tap falls on inserted zeros). x's W is therefore split
into P phases (w = j * P + phase) and dy's positions into Q classes (ow = m * Q + class), so that a tap
reads consecutive elements of both: a tap list entry is (x offset, dy offset, count) per row and class.

With 1-3 input channels (one group, no W dilation) that gives 1-3 pixels, so the W taps join them
instead ("folded rows"): pixel j = kw * Cin + i of a channels-last row zero-padded to every position a
W tap reads, one element apart, the reduction stepping stride * Cin (K = 1's step D, a constant of the
family); one tap entry per row, all of W at once (video_c3: 9 pixels instead of 3). The zero padding
forms 0 * dy, an exact 0 where dy is finite; where dy has an Inf or NaN at a position with a W tap on
the padding, transposed rows are taken instead, so that no NaN appears where JAX forms no product.

A task is (n, a run of planes od, group, block, kd): every kh, kw and tile of input channels of those
planes, so that dy, the largest operand of a layer with few input channels (video_c3's 33 MB), is read
from memory once, not once per tap (tasks of (group, block, kd, kh) over every plane read it 9 times
and ran slower). Each thread sums into a dw of its own, added up at the end. While a run's dy rows (a
few tens of KiB) stay in L2, every tile of input channels reads them, each tile goes through every kw
while its x rows are in L1 (not reading them again from L2 per kw), and each tile's sum is added into
the thread's dw.
"""
from functools import cache, lru_cache
from math import gcd

import numpy as np
from numba import carray, get_num_threads, njit, prange

from nbconv import buffers
from nbconv.config import CACHE
from nbconv.cpu import blocked, launch, parallel
from nbconv.cpu.emitter import CACHED
from nbconv.cpu.microkernel import TARGET, fma_lines_at, lanes, lines_address
from nbconv.cpu.tasks import claim, fetch_add

# Tasks per thread to aim for: a layer with few planes takes shorter runs of them, so that the threads
# finish close together.
TASKS_PER_THREAD = 4
# Positions summed per micro-kernel call, at least (whole planes (n, od) of them): small planes are
# taken a few at a time, so that the call's setup and its sum into dw weigh less (grouped_g8's 16 x 16).
PLANE_POSITIONS = 1024
# The most pixels of any micro-kernel body: a tile's plane sums are stored in a scratch of this many rows.
_MOST_PIXELS = max(max(counts) for counts in TARGET.blocking.pixels.values())


def usable(geometry, dtype):
    """Whether a group's output channels fill half a vector or more (K = 1: the micro-kernel's vectors are
    output channels of one group). Smaller groups (depthwise) would leave most lanes idle."""
    return blocked._packing(geometry, dtype)[0].spread == 1


def weight_gradient(x, dy, geometry):
    """dw (KD, KH, KW, Cin / groups, Cout) of the convolution `geometry` of x (N, D, H, W, Cin) with the
    cotangent dy (N, OD, OH, OW, Cout); both channels-last, C-contiguous, of one float dtype."""
    folded = _foldable(geometry, x.dtype) and _finite_at_w_edges(dy, geometry)
    entry, workers, meta, w_table, layout = _launch_args(geometry, x.dtype, get_num_threads(), folded)
    n, d, h, w, cin = x.shape
    rows = x.reshape(n * d * h, w, cin)
    rows = _padded_rows(rows, geometry, meta[5]) if folded else _transposed(rows, geometry.groups, *layout[:3])
    packed = _packed(dy, geometry, blocked._packing(geometry, x.dtype)[0], *layout[3:])
    sums = np.zeros((workers, *geometry.kernel, cin // geometry.groups, geometry.out_channels), x.dtype)
    idx_d, idx_h, _ = geometry.tap_tables()
    # The arrays as 5-D and 2-D views, like the forward's (`blocked.run`), so that `launch.run` is
    # compiled once for both (each other tuple type would compile it again, parfor passes and all).
    values = (a.reshape(1, 1, 1, 1, -1) for a in (rows, packed, np.zeros(meta[13], x.dtype), sums))
    arrays = (*values, idx_d, idx_h, w_table.reshape(1, -1), np.zeros(4, np.int64), meta)
    launch.run_tasks(entry, workers, arrays, meta[0], geometry.valid_flops)
    return sums[0] if workers == 1 else sums.sum(axis=0)


@lru_cache(maxsize=64)
def _foldable(geometry, dtype):
    """Whether dw takes folded rows: one group of fewer input channels than the largest tile (an RGB or
    single-channel layer: 1-3 tiles' pixels with transposed rows), plain along W (no W dilation)."""
    vectors = blocked._packing(geometry, dtype)[0].vectors
    return (geometry.groups == 1 and geometry.kernel[2] > 1 and geometry.lhs_dilation[2] == 1
            and geometry.rhs_dilation[2] == 1 and geometry.in_channels < TARGET.pixel_counts(vectors)[0])


def _finite_at_w_edges(dy, geometry):
    """Whether dy is finite where folded rows would multiply it by their zero padding (the positions
    with a W tap on padding): there 0 * dy is 0 and the sums are exact; an Inf or NaN would make NaN
    where JAX forms no product, so such a dy takes transposed rows."""
    return bool(np.isfinite(dy[:, :, :, _w_edges(geometry)]).all())


@lru_cache(maxsize=64)
def _w_edges(geometry):
    """The output positions along W with a tap on padding."""
    edges = np.flatnonzero((geometry.tap_tables()[2] < 0).any(axis=1))
    edges.flags.writeable = False  # shared by every call with this geometry
    return edges


def _padded_rows(x, geometry, x_row):
    """x (rows, W, Cin) -> (rows, x_row / Cin, Cin), position j holding x[row, j - lo] (zeros outside x):
    every position a W tap of the output reads."""
    out = buffers.empty((x.shape[0], x_row // x.shape[2], x.shape[2]), x.dtype)
    _pad(x, geometry.pads[2][0], out)
    return out


@parallel.kernel(cache=CACHE)
def _pad(x, lo, out):
    for row in prange(x.shape[0]):
        for j in range(out.shape[1]):
            for i in range(x.shape[2]):
                out[row, j, i] = x[row, j - lo, i] if 0 <= j - lo < x.shape[1] else 0


def _transposed(x, groups, rows_g, phases, row_length):
    """x (rows, W, Cin) -> (rows, phases, groups * rows_g, row_length): element w of channel i of group
    g at [w % phases, g * rows_g + i, w // phases]; channels rows_g > Cin / groups are zeros (the ends of
    rows of other phases are never read)."""
    out = buffers.empty((x.shape[0], phases, groups * rows_g, row_length), x.dtype)
    _transpose(x, groups, rows_g, phases, out)
    return out


@parallel.kernel(cache=CACHE)
def _transpose(x, groups, rows_g, phases, out):
    cin_g = x.shape[2] // groups
    for row in prange(x.shape[0]):
        for w in range(x.shape[1]):
            for g in range(groups):
                for i in range(cin_g):
                    out[row, w % phases, g * rows_g + i, w // phases] = x[row, w, g * cin_g + i]
                for i in range(cin_g, rows_g):
                    out[row, w % phases, g * rows_g + i, w // phases] = 0


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
    out = buffers.empty((groups, blocking.blocks, n * od * oh, classes, positions, width), dy.dtype)
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
def _launch_args(geometry, dtype, threads, folded):
    """The entry's address, the threads to run it on, `_work`'s meta (read-only), the W tap
    table and the layout's sizes: (a group's rows, phases, row length, classes, positions per class)."""
    dtype = np.dtype(dtype)
    blocking = blocked._packing(geometry, dtype)[0]
    n, od, oh, ow, cout = geometry.out_shape
    d, h, w = geometry.in_spatial
    kd, kh, kw = geometry.kernel
    groups, cin = geometry.groups, geometry.in_channels
    cin_g, width = cin // groups, blocking.vectors * lanes(dtype)
    counts = TARGET.pixel_counts(blocking.vectors)
    if folded:  # pixels j = kw * Cin + i one element apart, the reduction stride * Cin: all of W's taps at once
        step, pixels, taps_w = geometry.stride[2] * cin, kw * cin, 1
        x_row, row_length = ((ow - 1) * geometry.stride[2] + kw) * cin, 1
        w_table = np.array([[[0, 0, ow]]], np.int64)
        layout = (pixels, 1, 1, 1, ow)
    else:
        stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
        classes, phases = lhs // gcd(stride, lhs), stride // gcd(stride, lhs)
        row_length, positions = -(-w // phases), -(-ow // classes)
        # A group with fewer input channels than the largest body's pixels gets zero channels up to the
        # next body's (their sums are dropped): 5 channels are one 6-pixel tile, not 4 + 1.
        rows_g = cin_g if cin_g >= counts[0] else min(c for c in counts if c >= cin_g)
        step, pixels, taps_w, x_row = 1, rows_g, kw, phases * groups * rows_g * row_length
        w_table = _w_table(geometry.tap_tables()[2], classes, phases, groups * rows_g * row_length, positions, width)
        layout = (rows_g, phases, row_length, classes, positions)
    family = (blocking.shape[0], (0,), (0,), (0,) * step)  # K = 1 stepping `step` elements (its D)
    body_pixels = (*counts, *[1] * (_BODIES - len(counts)))
    # A task is (n, a run of planes, group, block, kd), the runs as long as make PLANE_POSITIONS positions
    # but short enough for TASKS_PER_THREAD tasks per thread where the layer has few.
    base = n * groups * blocking.blocks * kd
    planes = max(1, min(-(-PLANE_POSITIONS // (oh * ow)), od * base // (TASKS_PER_THREAD * threads)))
    plane_runs = -(-od // planes)
    n_tasks = base * plane_runs
    workers = min(threads, n_tasks)
    meta = np.array((n_tasks, workers, n, d, h, x_row, n * d * h * x_row, row_length, pixels, od, oh, w_table.shape[1],
                     layout[4], width, kd, kh, taps_w, groups, blocking.blocks, cin_g if not folded else pixels,
                     cout // groups, cout, plane_runs, planes, lines_address(family, dtype), *body_pixels), np.int64)
    meta.flags.writeable = w_table.flags.writeable = False  # (both read-only, as the forward's: one launch.run)
    return launch.address(_entry(dtype)), workers, meta, w_table, layout


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
    return table


@cache
def _entry(dtype):
    """The compiled entry point of the weight gradient, as `blocked._entry`: the same for every family
    (meta says which micro-kernel); compiled (or loaded) once per process and dtype."""
    digest = launch.LINKED_SOURCES

    def entry(x, dy, zeros, dw, idx_d, idx_h, w_table, counter, meta):
        digest  # noqa: B018 (a cell of the closure, which Numba's cache keys by)
        _work(x, dy, zeros, dw, idx_d, idx_h, w_table, counter, meta)
    return launch.entry_point(entry, dtype)


# The most pixel counts of a family (`target.Blocking.pixels`), and meta's length
_BODIES = max(len(counts) for counts in TARGET.blocking.pixels.values())
_META = 25 + _BODIES


@njit(inline="always")
def _work(x_ptr, dy_ptr, zeros_ptr, dw_ptr, d_ptr, h_ptr, w_ptr, counter_ptr, meta_ptr):
    """One thread's share: runs of tasks claimed from counter[0] until the slice's end, summed into
    this thread's own dw (the thread's number: counter[3], counted up as threads enter), on flat views
    of the arrays made once (see `blocked._work`)."""
    meta = carray(meta_ptr, (_META,))
    n_tasks, workers, n, d, h, x_row, x_size, row_length, rows_g, od, oh, classes, positions, width = meta[:14]
    kd, kh, kw, groups, blocks, cin_g, cout_g, cout, plane_runs, planes, lines_of = meta[14:25]
    body_pixels = meta[25:]
    counter = carray(counter_ptr, (4,))
    worker = fetch_add(counter[3:], np.int64(1)) % workers
    x = carray(x_ptr, (x_size,))
    dy = carray(dy_ptr, (groups * blocks * n * od * oh * classes * positions * width,))
    size = kd * kh * kw * cin_g * cout
    dw = carray(dw_ptr, (workers * size,))[worker * size:(worker + 1) * size]
    tables = (carray(d_ptr, (od, kd)), carray(h_ptr, (oh, kh)), carray(w_ptr, (kw, classes, 3)))
    zeros = carray(zeros_ptr, (width,))  # the bias the micro-kernel adds
    scratch = np.empty(_MOST_PIXELS * width, x.dtype)
    taps, counts = np.empty((kw, planes * oh * classes, 3), np.int64), np.empty(kw, np.int64)
    sizes = (n, od, oh, d, h, x_row, classes * positions * width, row_length, width, blocks, (cin_g, rows_g),
             cout_g, cout, kh, kw)
    start, end = counter[1], counter[2]
    first, last = claim(counter, start, end, workers)
    while first < end:
        for task in range(first, last):
            # (n, a run of planes, group, block, kd): consecutive tasks share their dy rows
            i_kd, rest = task % kd, task // kd
            i_b, rest = rest % blocks, rest // blocks
            g, rest = rest % groups, rest // groups
            i_n, run = rest // plane_runs, rest % plane_runs
            first_plane = run * planes
            for i_kh in range(kh):
                _tap_lists(taps, counts, tables, sizes, (g, i_b, i_kd, i_kh), i_n,
                           (first_plane, min(od, first_plane + planes)))
                _tiles(x, dy, zeros, scratch, dw, (taps, counts), sizes, (g, i_b, i_kd, i_kh), (lines_of, body_pixels))
        first, last = claim(counter, last, end, workers)


@njit(inline="always")
def _tiles(x, dy, zeros, scratch, dw, tap_lists, sizes, place, family):
    """Add to dw the sums over the tap lists of (kd, kh, every kw) of group g, block b: micro-kernel tiles
    over the group's input channels (pixels), each through every kw while its x rows are in L1. `family`:
    the address of its micro-kernel loop and its pixel counts (`_launch_args`)."""
    n, od, oh, d, h, x_row, dy_row, row_length, width, blocks, (cin_g, rows_g), cout_g, cout, kh, kw = sizes
    g, b, i_kd, i_kh = place
    taps, counts = tap_lists
    lines_of, body_pixels = family
    stored = min(width, cout_g - b * width)
    if counts.max() == 0:  # no kw reads these planes
        return
    i = 0
    while i < rows_g:
        pixels = _most_pixels(body_pixels, rows_g - i)
        for i_kw in range(kw):
            if counts[i_kw] == 0:
                continue
            # (one call: `pixels` is one of the family's pixel counts)
            fma_lines_at(lines_of, 1, pixels, x, ((g * rows_g + i) * row_length, row_length, 0), taps[i_kw],
                         counts[i_kw], dy, (0, 0), zeros, scratch, (0, width, 0, width, CACHED))
            out = (((i_kd * kh + i_kh) * kw + i_kw) * cin_g + i) * cout + g * cout_g + b * width
            for p in range(min(pixels, cin_g - i)):  # (not the zero channels')
                for j in range(stored):
                    dw[out + p * cout + j] += scratch[p * width + j]
        i += pixels


@njit(inline="always")
def _most_pixels(body_pixels, remaining):
    """The largest of a family's pixel counts (largest first, the last 1) that `remaining` allows."""
    for pixels in body_pixels:
        if pixels <= remaining:
            return pixels
    return 1


@njit(inline="always")
def _tap_lists(taps, counts, tables, sizes, place, i_n, planes):
    """taps[kw, :counts[kw]] = (x offset, dy offset, count) of the rows and classes of the planes (n, od),
    od in range(*planes), through (kd, kh, kw), for every kw."""
    n, od, oh, d, h, x_row, dy_row, row_length, width, blocks, _, cout_g, cout, kh, kw = sizes
    g, b, i_kd, i_kh = place
    idx_d, idx_h, w_table = tables
    counts[:] = 0
    for i_od in range(planes[0], planes[1]):
        i_d = idx_d[i_od, i_kd]
        for i_oh in range(oh):
            i_h = idx_h[i_oh, i_kh]
            if i_d < 0 or i_h < 0:
                continue
            x_at = ((i_n * d + i_d) * h + i_h) * x_row
            dy_at = ((((g * blocks + b) * n + i_n) * od + i_od) * oh + i_oh) * dy_row
            for i_kw in range(kw):
                for c in range(w_table.shape[1]):
                    if w_table[i_kw, c, 2] > 0:
                        count = counts[i_kw]
                        taps[i_kw, count, 0] = x_at + w_table[i_kw, c, 0]
                        taps[i_kw, count, 1] = dy_at + w_table[i_kw, c, 1]
                        taps[i_kw, count, 2] = w_table[i_kw, c, 2]
                        counts[i_kw] = count + 1
