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

Groups narrower than half a vector are packed K to a vector as the forward packs them (`_lanes`): a
"unit" of V * K groups, lane c * K + j of a vector holding channel c of its group j, x's K values of a
pixel the same input channel of the K groups, side by side (the forward's families of K groups, D = 1).
Along a stride-1 W their pixels are the W taps of one input channel ("tap tiles"): the folded rows of
a unit, one row per input channel, one position (K values) apart, so that the micro-kernel slides a
window along them; a tile has a body's pixel count, the taps past KW dropped. Where the folded rows
are x's rows with zero margins, each thread pads the planes its tasks read as it goes (`_pad_planes`).

A task is (n, a run of planes od, unit, block, kd): every kh, kw and tile of input channels of those
planes, so that dy, the largest operand of a layer with few input channels (video_c3's 33 MB), is read
from memory once, not once per tap (tasks of (group, block, kd, kh) over every plane read it 9 times
and ran slower). Each thread sums into a dw of its own, added up at the end. While a run's dy rows (a
few tens of KiB) stay in L2, every tile of input channels reads them, each tile goes through every kw
while its x rows are in L1 (not reading them again from L2 per kw), and each tile's sum is added into
the thread's dw.
"""
from functools import cache, lru_cache
from math import gcd
from typing import NamedTuple

import numpy as np
from numba import carray, get_num_threads, njit, prange

from nbconv import buffers
from nbconv.config import CACHE
from nbconv.cpu import blocked, launch, layout, parallel
from nbconv.cpu.emitter import CACHED
from nbconv.cpu.microkernel import TARGET, fma_lines_at, lanes, lines_address
from nbconv.cpu.tasks import claim, fetch_add

# Tasks per thread to aim for: a layer with few planes takes shorter runs of them, so that the threads
# finish close together.
TASKS_PER_THREAD = 4
# Positions summed per micro-kernel call, at least (whole planes (n, od) of them): small planes are
# taken a few at a time, so that the call's setup and its sum into dw weigh less (grouped_g8's 16 x 16).
PLANE_POSITIONS = 1024
# The most vectors of a unit of groups packed K to a vector (`_lanes`): each count compiles a family of
# its own, so the counts are bounded.
MOST_VECTORS = 16
# The most pixels of any micro-kernel body: a tile's plane sums are stored in a scratch of this many rows.
_MOST_PIXELS = max(max(counts) for counts in TARGET.blocking.pixels.values())


def usable(geometry, dtype):
    """Whether dw runs here: a group's output channels fill half a vector or more, or several groups'
    fill one (`_lanes`)."""
    return _lanes(geometry, np.dtype(dtype)) is not None


class _Lanes(NamedTuple):
    """How dw's output channels lie in the micro-kernel's vectors (`_lanes`)."""

    vectors: int  # V
    spread: int  # K groups side by side in a vector (1: the channels of one group)
    per_unit: int  # groups per unit: V * K. A unit has its own input rows and its own output channels
    blocks: int  # blocks of V vectors per unit
    channels: int  # output channels of one block: V * LANES, or the unit's V * K * G


@lru_cache(maxsize=64)
def _lanes(geometry, dtype):
    """Where the forward has a group's channels in vectors of their own (K = 1, a group of half a vector
    of output channels or more), its vectors and blocks.
    Narrower groups (G output channels, down to depthwise's 1) are packed K to a vector as the forward
    packs them (`blocked._blocking`), lane c * K + j holding channel c of group j: K the most groups,
    dividing their number, whose channels fit a vector; None where that is one group. A pixel's K
    inputs are then the same input channel of the K groups, side by side in x (`_transposed`), so
    the forward's families of K groups (D = 1) serve unchanged; not its input phases, which add up
    the very sums dw keeps apart."""
    width, groups = lanes(dtype), geometry.groups
    cout_g = geometry.out_channels // groups
    blocking = blocked._packing(geometry, dtype)[0]
    if blocking.spread == 1:
        return _Lanes(blocking.vectors, 1, 1, blocking.blocks, blocking.vectors * width)
    k = max(k for k in range(1, width // cout_g + 1) if groups % k == 0)
    if k == 1:
        return None
    # All groups in one unit where that is at most MOST_VECTORS (the micro-kernel takes them a few at a
    # time: `emitter.Emitter.together`), so that x's rows need no unit of their own (`_pad_planes`) and
    # dy's positions are whole rows: 5-15% faster than the forward's 2 vectors (K < LANES) or
    # `target.WHOLE_VECTOR_BYTES`, and 17% on a 96-channel depthwise layer (AVX-512, in-process A/B).
    vectors = max(v for v in range(min(MOST_VECTORS, groups // k), 0, -1) if groups // k % v == 0)
    return _Lanes(vectors, k, vectors * k, 1, vectors * k * cout_g)


def weight_gradient(x, dy, geometry):
    """dw (KD, KH, KW, Cin / groups, Cout) of the convolution `geometry` of x (N, D, H, W, Cin) with the
    cotangent dy (N, OD, OH, OW, Cout); both channels-last, C-contiguous, of one float dtype."""
    folded = _foldable(geometry, x.dtype) and finite_at_w_edges(dy, geometry)
    entry, workers, meta, w_table, (x_layout, dy_layout, (bias, rings)) = _launch_args(
        geometry, x.dtype, get_num_threads(), folded)
    n, d, h, w, cin = x.shape
    rows = x.reshape(n * d * h, w, cin)
    if x_layout is not None:  # (None: the threads pad x's planes as they go, `_pad_planes`)
        rows = _padded_rows(rows, geometry.pads[2][0], *x_layout) if folded else _transposed(rows, *x_layout)
    packed = _packed(dy, *_lane_channels(geometry, x.dtype), *dy_layout)
    sums = np.zeros((workers, *geometry.kernel, cin // geometry.groups, geometry.out_channels), x.dtype)
    # The micro-kernel's zero bias, then each thread's ring of padded planes
    work = np.empty(bias + rings, x.dtype)
    work[:bias] = 0
    idx_d, idx_h, _ = geometry.tap_tables()
    # The arrays as 5-D and 2-D views, like the forward's (`blocked.run`), so that `launch.run` is
    # compiled once for both (each other tuple type would compile it again, parfor passes and all).
    values = (a.reshape(1, 1, 1, 1, -1) for a in (rows, packed, work, sums))
    arrays = (*values, idx_d, idx_h, w_table.reshape(1, -1), np.zeros(4, np.int64), meta)
    launch.run_tasks(entry, workers, arrays, meta[0], geometry.valid_flops)
    return sums[0] if workers == 1 else sums.sum(axis=0)


@lru_cache(maxsize=64)
def _foldable(geometry, dtype):
    """Whether dw takes folded rows, plain along W (no input dilation there): one group of fewer input
    channels than the largest tile (an RGB or single-channel layer: 1-3 tiles' pixels with transposed
    rows) and no W dilation; or groups packed K to a vector (depthwise, channel multipliers, small
    groups) along a stride-1 W, a tile's pixels the W taps of one input channel (with transposed rows,
    one pixel a tile)."""
    lanes_ = _lanes(geometry, dtype)
    if geometry.kernel[2] == 1 or geometry.lhs_dilation[2] > 1:
        return False
    if lanes_.spread == 1:
        return (geometry.groups == 1 and geometry.rhs_dilation[2] == 1
                and geometry.in_channels < TARGET.pixel_counts(lanes_.vectors)[0])
    return geometry.stride[2] == 1


def finite_at_w_edges(dy, geometry):
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


def _padded_rows(x, lo, units, rows_u, positions):
    """x (rows, W, Cin) -> (rows, units, rows_u, positions, E = Cin / (units * rows_u)): row i of unit u
    holds at [j, s] channel (u * E + s) * rows_u + i of x[row, j - lo] (zeros outside x): every position
    a W tap of the output reads. (Where that is x's rows with zero margins, rows_u = 1 in one unit, the
    threads pad x's planes themselves instead: `_pad_planes`.)"""
    out = buffers.empty((x.shape[0], units, rows_u, positions, x.shape[2] // (units * rows_u)), x.dtype)
    _pad(x, lo, out)
    return out


@parallel.kernel(cache=CACHE)
def _pad(x, lo, out):
    _, units, rows_u, positions, per_row = out.shape
    for row in prange(x.shape[0]):
        for u in range(units):
            for i in range(rows_u):
                for j in range(positions):
                    for s in range(per_row):
                        inside = 0 <= j - lo < x.shape[1]
                        out[row, u, i, j, s] = x[row, j - lo, (u * per_row + s) * rows_u + i] if inside else 0


def _transposed(x, groups, per_unit, rows_g, phases, row_length):
    """x (rows, W, Cin) -> (rows, phases, units * rows_g, row_length, per_unit): element w of input
    channel i of group u * per_unit + s at [w % phases, u * rows_g + i, w // phases, s]; channels
    rows_g > Cin / groups are zeros (the ends of rows of other phases are never read). x itself where
    that is its layout (depthwise in one unit, W in one phase)."""
    units = groups // per_unit
    if phases == 1 and units * rows_g == 1:
        return x
    if phases == 1 and per_unit == 1 and units * rows_g == x.shape[2]:  # each row's (W, Cin) transposed:
        # the channels-first move's register blocks, 2.5x faster than the loop below (grouped_c16's x)
        return layout.swapped(x).reshape(x.shape[0], 1, x.shape[2], x.shape[1], 1)
    out = buffers.empty((x.shape[0], phases, units * rows_g, row_length, per_unit), x.dtype)
    _transpose(x, rows_g, phases, out)
    return out


@parallel.kernel(cache=CACHE)
def _transpose(x, rows_g, phases, out):
    per_unit = out.shape[4]
    units = out.shape[2] // rows_g
    cin_g = x.shape[2] // (units * per_unit)
    for row in prange(x.shape[0]):
        for w in range(x.shape[1]):
            for u in range(units):
                for i in range(rows_g):
                    for s in range(per_unit):
                        inside = i < cin_g
                        out[row, w % phases, u * rows_g + i, w // phases, s] = \
                            x[row, w, (u * per_unit + s) * cin_g + i] if inside else 0


def _packed(dy, channels, runs, classes, positions):
    """dy (N, OD, OH, OW, Cout) -> (units, blocks, N * OD * OH, classes, positions, V * LANES): position
    ow = m * classes + c of the output channel channels[u, b, j] (`_lane_channels`) at [u, b, row, c,
    m, j], zero where that is -1 (lanes of no channel) and past the row's end; a block whose `runs`
    entry is (first, count) holds channels first... first + count - 1 and then zeros, copied as a run
    (2-2.5x faster than channel by channel, lhs_dilated_2's dy). dy itself where that is
    its layout."""
    units, blocks, width = channels.shape
    n, od, oh, ow, cout = dy.shape
    if units * blocks == 1 and classes == 1 and width == cout and (channels[0, 0] == np.arange(cout)).all():
        return dy
    out = buffers.empty((units, blocks, n * od * oh, classes, positions, width), dy.dtype)
    _pack(dy.reshape(n * od * oh, ow, cout), channels, runs, out)
    return out


@parallel.kernel(cache=CACHE)
def _pack(dy, channels, runs, out):
    units, blocks, rows, classes, positions, width = out.shape
    length = dy.shape[1]
    for row in prange(rows):
        for u in range(units):
            for b in range(blocks):
                first, count = runs[u, b, 0], runs[u, b, 1]
                for c in range(classes):
                    for m in range(positions):
                        ow = m * classes + c
                        if first >= 0 and ow < length:
                            for j in range(count):
                                out[u, b, row, c, m, j] = dy[row, ow, first + j]
                            for j in range(count, width):
                                out[u, b, row, c, m, j] = 0
                            continue
                        for j in range(width):
                            channel = channels[u, b, j]
                            inside = ow < length and channel >= 0
                            out[u, b, row, c, m, j] = dy[row, ow, channel] if inside else 0


@lru_cache(maxsize=64)
def _lane_channels(geometry, dtype):
    """((units, blocks, V * LANES): the output channel of each lane of a unit's packed blocks of dy, -1
    for a lane of none; (units, blocks, 2): each block's (first channel, count) where its channels are
    consecutive, (-1, 0) where not). K = 1: block b of group u holds its channels b * V * LANES...,
    a run; K > 1: lane l of vector v holds channel l // K of the unit's group v * K + l % K (`_lanes`)."""
    lanes_, width = _lanes(geometry, dtype), lanes(dtype)
    cout_g, k = geometry.out_channels // geometry.groups, lanes_.spread
    units = geometry.groups // lanes_.per_unit
    unit, block, vector, lane = np.ogrid[:units, :lanes_.blocks, :lanes_.vectors, :width]
    if k == 1:
        group, channel = unit, (block * lanes_.vectors + vector) * width + lane
    else:
        group, channel = unit * lanes_.per_unit + vector * k + lane % k, lane // k
    channels = np.where(channel < cout_g, group * cout_g + channel, -1).reshape(units, lanes_.blocks, -1)
    runs = np.full((units, lanes_.blocks, 2), (-1, 0))
    if k == 1:
        runs[..., 0] = channels[..., 0]
        runs[..., 1] = (channels >= 0).sum(axis=-1)
    for table in (channels, runs):
        table.flags.writeable = False  # shared by every call with this geometry
    return channels, runs


@lru_cache(maxsize=64)
def _launch_args(geometry, dtype, threads, folded):
    """The entry's address, the threads to run it on, `_work`'s meta (read-only), the W tap table and
    the layout's sizes: (x's rows' (`_padded_rows`' or `_transposed`'s arguments after x; None where
    the threads pad x's planes themselves), dy's (classes, positions per class), the lengths of the
    micro-kernel's zero bias and of the threads' rings of padded planes)."""
    dtype = np.dtype(dtype)
    lanes_ = _lanes(geometry, dtype)
    n, od, oh, ow, cout = geometry.out_shape
    d, h, w = geometry.in_spatial
    kd, kh, kw = geometry.kernel
    groups, cin, k = geometry.groups, geometry.in_channels, lanes_.spread
    cin_g, width, units = cin // groups, lanes_.vectors * lanes(dtype), groups // lanes_.per_unit
    counts = TARGET.pixel_counts(lanes_.vectors, whole=k == lanes(dtype))
    per_unit, r_w = lanes_.per_unit, geometry.rhs_dilation[2]
    # How the tiles lie (`_tiles`): (rows, pixels of a tap tile (0: tiles of rows), pixels kept, x from a
    # row to the next, x from a pixel to the next, dw from a pixel to the next, dw's KW, dw's Cin / groups)
    if folded and k == 1:  # pixels j = kw * Cin + i one element apart, the reduction stride * Cin: all W taps at once
        step, taps_w, rows = geometry.stride[2] * cin, 1, kw * cin
        tiles = (rows, 0, rows, 1, 1, cout, 1, rows)
        positions, rows_u = (ow - 1) * geometry.stride[2] + kw, 1
    elif folded:  # pixels = W taps (r apart), one row per input channel; pixels past KW, to fill a body, dropped
        step, taps_w, rows_u = 1, 1, cin_g
        pixels = min((c for c in counts if c >= kw), default=kw)
        positions = ow + (pixels - 1) * r_w
        tiles = (cin_g, pixels, kw, positions * per_unit, r_w * per_unit, cin_g * cout, kw, cin_g)
    if folded:
        unit_pitch = positions * cin // units  # (rows_u rows of positions x the unit's groups)
        w_table = np.array([[[0, 0, ow]]], np.int64)
        layout = ((units, rows_u, positions), (1, ow))
    else:
        stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
        classes, phases = lhs // gcd(stride, lhs), stride // gcd(stride, lhs)
        row_length, positions = -(-w // phases), -(-ow // classes)
        # A group with fewer input channels than the largest body's pixels gets zero channels up to the
        # next body's (their sums are dropped): 5 channels are one 6-pixel tile, not 4 + 1.
        rows_g = cin_g if cin_g >= counts[0] else min(c for c in counts if c >= cin_g)
        step, taps_w = 1, kw
        tiles = (rows_g, 0, cin_g, row_length * per_unit, row_length * per_unit, cout, kw, cin_g)
        unit_pitch = rows_g * row_length * per_unit
        w_table = _w_table(geometry.tap_tables()[2], classes, phases, units * rows_g * row_length, positions,
                           (per_unit, width))
        layout = ((groups, per_unit, rows_g, phases, row_length), (classes, positions))
    x_row = unit_pitch * units * (1 if folded else phases)
    # K = 1 stepping `step` elements (its D), or K groups of G channels (D = 1)
    family = ((0,) * lanes_.vectors, (0,) * k, (0,) * (cout // groups if k > 1 else 1), (0,) * step)
    body_pixels = (*counts, *[1] * (_BODIES - len(counts)))
    # A task is (n, a run of planes, unit, block, kd), the runs as long as make PLANE_POSITIONS positions
    # but short enough for TASKS_PER_THREAD tasks per thread where the layer has few.
    base = n * units * lanes_.blocks * kd
    planes = max(1, min(-(-PLANE_POSITIONS // (oh * ow)), od * base // (TASKS_PER_THREAD * threads)))
    plane_runs = -(-od // planes)
    n_tasks = base * plane_runs
    workers = min(threads, n_tasks)
    # Folded rows of a row of x each (one unit of one row: x's rows with zero margins) are padded by each
    # thread as its tasks reach their planes, into a ring of as many planes as a run of tasks reads
    # (`_pad_planes`): not copied whole first, which read and wrote all of x through memory once more.
    ring = 0
    if folded and units * layout[0][1] == 1:
        ring = (planes - 1) * geometry.stride[0] + (kd - 1) * geometry.rhs_dilation[0] + 1
    x_size = n * d * h * (w * cin if ring else x_row)
    layout = (None if ring else layout[0], layout[1], (width, workers * ring * h * x_row))
    meta = np.array((n_tasks, workers, n, d, h, x_row, x_size, od, oh, w_table.shape[1], layout[1][1],
                     width, kd, kh, taps_w, units, lanes_.blocks, cout // units, cout, plane_runs, planes,
                     lines_address(family, dtype), lanes_.channels, unit_pitch, *tiles, ring,
                     geometry.pads[2][0], w, cin, *body_pixels), np.int64)
    meta.flags.writeable = w_table.flags.writeable = False  # (both read-only, as the forward's: one launch.run)
    return launch.address(_entry(dtype)), workers, meta, w_table, layout


def _w_table(idx_w, classes, phases, phase_length, positions, widths):
    """(KW, classes, 3): per W tap and class, the x offset in a transposed row ((phase * phase_length +
    the first element) * the unit's groups), the dy offset in a packed row ((class * positions + the
    first position) * V * LANES) and the count of positions (0: the tap reads only padding or inserted
    zeros there). widths: (the unit's groups, V * LANES)."""
    table = np.zeros((idx_w.shape[1], classes, 3), np.int64)
    for k in range(idx_w.shape[1]):
        for c in range(classes):
            valid = np.flatnonzero(idx_w[c::classes, k] >= 0)  # an interval (see the module docstring)
            if valid.size:
                first = idx_w[c + classes * valid[0], k]
                table[k, c] = ((first % phases * phase_length + first // phases) * widths[0],
                               (c * positions + valid[0]) * widths[1], valid.size)
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
_META = 36 + _BODIES


@njit(inline="always")
def _work(x_ptr, dy_ptr, zeros_ptr, dw_ptr, d_ptr, h_ptr, w_ptr, counter_ptr, meta_ptr):
    """One thread's share: runs of tasks claimed from counter[0] until the slice's end, summed into
    this thread's own dw (the thread's number: counter[3], counted up as threads enter), on flat views
    of the arrays made once (see `blocked._work`)."""
    meta = carray(meta_ptr, (_META,))
    n_tasks, workers, n, d, h, x_row, x_size, od, oh, classes, positions, width, kd, kh, taps_w = meta[:15]
    units, blocks, unit_cout, cout, plane_runs, planes, lines_of, channels, unit_pitch = meta[15:24]
    tiles, (ring, lo, w, cin), body_pixels = meta[24:32], meta[32:36], meta[36:]
    counter = carray(counter_ptr, (4,))
    worker = fetch_add(counter[3:], np.int64(1)) % workers
    x = carray(x_ptr, (x_size,))
    dy = carray(dy_ptr, (units * blocks * n * od * oh * classes * positions * width,))
    size = kd * kh * tiles[6] * tiles[7] * cout
    dw = carray(dw_ptr, (workers * size,))[worker * size:(worker + 1) * size]
    tables = (carray(d_ptr, (od, kd)), carray(h_ptr, (oh, kh)), carray(w_ptr, (taps_w, classes, 3)))
    # The bias the micro-kernel adds (zeros), then this thread's ring of padded planes (tagged by plane)
    ring_size = ring * h * x_row
    zeros = carray(zeros_ptr, (width + workers * ring_size,))
    padded, tags = zeros[width + worker * ring_size:width + (worker + 1) * ring_size], np.full(ring, -1, np.int64)
    source = padded if ring else x
    scratch = np.empty(_MOST_PIXELS * width, x.dtype)
    taps, counts = np.empty((taps_w, planes * oh * classes, 3), np.int64), np.empty(taps_w, np.int64)
    sizes = (n, od, oh, d, h, x_row, classes * positions * width, width, blocks, (unit_cout, channels, unit_pitch),
             cout, kh, taps_w, ring)
    start, end = counter[1], counter[2]
    first, last = claim(counter, start, end, workers)
    while first < end:
        for task in range(first, last):
            # (n, a run of planes, unit, block, kd): consecutive tasks share their dy rows
            i_kd, rest = task % kd, task // kd
            i_b, rest = rest % blocks, rest // blocks
            u, rest = rest % units, rest // units
            i_n, run = rest // plane_runs, rest % plane_runs
            first_plane = run * planes
            run_planes = (first_plane, min(od, first_plane + planes))
            if ring:
                _pad_planes(x, (padded, tags), tables[0], (i_n, i_kd, run_planes), (d, h, w, cin, lo))
            for i_kh in range(kh):
                _tap_lists(taps, counts, tables, sizes, (u, i_b, i_kd, i_kh), i_n, run_planes)
                _tiles(source, dy, zeros, scratch, dw, (taps, counts), sizes, (u, i_b, i_kd, i_kh),
                       (lines_of, body_pixels, tiles))
        first, last = claim(counter, last, end, workers)


@njit(inline="always")
def _tiles(x, dy, zeros, scratch, dw, tap_lists, sizes, place, family):
    """Add to dw the sums over the tap lists of (kd, kh, every kw) of unit u, block b: micro-kernel tiles
    over the unit's rows, each through every kw while its x rows are in L1. A tile's pixels are rows
    (input channels, or the folded rows' (kw, input channel)) or W taps of one row (`_launch_args`).
    `family`: the address of its micro-kernel loop, its pixel counts, and how the tiles lie."""
    n, od, oh, d, h, x_row, dy_row, width, blocks, (unit_cout, channels, unit_pitch), cout, kh, taps_w, _ = sizes
    u, b, i_kd, i_kh = place
    taps, counts = tap_lists
    lines_of, body_pixels, (rows, tap_pixels, kept, row_pitch, pixel_step, pixel_out, kw_out, cin_g) = family
    stored = min(channels, unit_cout - b * channels)
    if counts.max() == 0:  # no kw reads these planes
        return
    r = 0
    while r < rows:
        pixels = tap_pixels if tap_pixels else _most_pixels(body_pixels, rows - r)
        for i_kw in range(taps_w):
            if counts[i_kw] == 0:
                continue
            # (one call: `pixels` is one of the family's pixel counts)
            fma_lines_at(lines_of, 1, pixels, x, (u * unit_pitch + r * row_pitch, pixel_step, 0), taps[i_kw],
                         counts[i_kw], dy, (0, 0), zeros, scratch, (0, width, 0, width, CACHED))
            out = (((i_kd * kh + i_kh) * kw_out + i_kw) * cin_g + r) * cout + u * unit_cout + b * channels
            # (not the zero channels', nor the taps past KW)
            for p in range(min(pixels, kept if tap_pixels else kept - r)):
                for j in range(stored):
                    dw[out + p * pixel_out + j] += scratch[p * width + j]
        r += 1 if tap_pixels else pixels


@njit(inline="always")
def _pad_planes(x, ring, idx_d, place, sizes):
    """Pad the input planes that the task's planes od read through kd (place = (n, kd, (first od, end)))
    into the thread's ring of planes (ring = (planes, tags): slot plane % its size, tagged with the
    plane, so that the next tasks of its run find the planes they share padded already); each row
    as `_padded_rows` pads it: position j holds x[row, j - lo], zeros outside x."""
    padded, tags = ring
    i_n, i_kd, (first, end) = place
    d, h, w, cin, lo = sizes
    row_in, x_row = w * cin, padded.size // (tags.size * h)
    start = min(x_row, max(0, lo) * cin)
    inside = start, max(start, min(x_row, (w + lo) * cin))  # the elements of a padded row that x fills
    for i_od in range(first, end):
        i_d = idx_d[i_od, i_kd]
        plane = i_n * d + i_d
        slot = plane % tags.size
        if i_d < 0 or tags[slot] == plane:
            continue
        tags[slot] = plane
        for i_h in range(h):
            at, source = (slot * h + i_h) * x_row, (plane * h + i_h) * row_in - lo * cin
            padded[at:at + inside[0]] = 0
            padded[at + inside[0]:at + inside[1]] = x[source + inside[0]:source + inside[1]]
            padded[at + inside[1]:at + x_row] = 0


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
    n, od, oh, d, h, x_row, dy_row, width, blocks, _, cout, kh, taps_w, ring = sizes
    u, b, i_kd, i_kh = place
    idx_d, idx_h, w_table = tables
    counts[:] = 0
    for i_od in range(planes[0], planes[1]):
        i_d = idx_d[i_od, i_kd]
        for i_oh in range(oh):
            i_h = idx_h[i_oh, i_kh]
            if i_d < 0 or i_h < 0:
                continue
            plane = i_n * d + i_d
            x_at = ((plane % ring if ring else plane) * h + i_h) * x_row  # (a ring: `_pad_planes`)
            dy_at = ((((u * blocks + b) * n + i_n) * od + i_od) * oh + i_oh) * dy_row
            for i_kw in range(taps_w):
                for c in range(w_table.shape[1]):
                    if w_table[i_kw, c, 2] > 0:
                        count = counts[i_kw]
                        taps[i_kw, count, 0] = x_at + w_table[i_kw, c, 0]
                        taps[i_kw, count, 1] = dy_at + w_table[i_kw, c, 1]
                        taps[i_kw, count, 2] = w_table[i_kw, c, 2]
                        counts[i_kw] = count + 1
