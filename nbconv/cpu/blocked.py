"""Register-blocked convolution: the micro-kernel of `microkernel` over runs of output pixels.

Output channels are cut into vectors of LANES (the compile target's: `nbconv.cpu.target`). A group
with half a vector of output channels or more gets up to the target's most vectors per micro-kernel
call (4 with 32 registers, 2 with 16), each input value broadcast to all of them (K = 1). Smaller
groups are packed K to a vector (K * Cout_g <= LANES, lane c * K + j: channel c of group j), the
V * K inputs of one reduction step side by side in x (`group_inputs` interleaves them); depthwise
with LANES channels or more is K = LANES, plain vector loads, as many vectors as make up to
`target.WHOLE_VECTOR_BYTES` of channels (so that a stride-1 row's taps merge and slide). Where K (a
power of two) divides the group's input channels, a vector is one group instead, lane c * K + j
summing channel c over inputs j, j + K... (input phases, added up at the store): as many lanes busy,
and x read as it is. Such a "unit" (a group, V * K groups, or V groups with phases) has its own input
channels, packed weights and output channels; where x is copied anyway, or several units have short
taps, each unit's inputs are copied into a volume of their own, so that a row's taps merge with
several units as with one (`_Blocking.volumes`).

A task is a band of up to BAND output rows (n, od, oh...), fewer where bands are few or their input
rows large, or a segment along W of a one-row band (a 1-D signal; `_split`); the threads claim runs
of tasks as they go
(`nbconv.cpu.tasks`), a plane's bands in turn or, where the input planes that consecutive planes share
leave L2 before they are read again, a band's planes in turn (`_planes_first`). Along W the pixels of a
row fall into `q` residue classes (q = lhs / gcd(stride, lhs), 1 without input dilation): inside a
class, consecutive pixels read inputs `x_step` pixels apart through the same taps, so input dilation
skips its zeros for free. A class splits into runs of pixels with the same valid taps (the interior,
and single pixels near a padded edge); a run gets one list of (x offset, packed-weight offset, length)
taps per stretch of rows with the same taps (all of a band but those at a padded H edge; rows fall into
classes along H as pixels do along W, and a stretch is rows of one class: input dilation's rows
alternate their taps), with consecutive taps merged where x and the weights both continue (a dense or
depthwise stride-1 row reduces KW * Cin at once, which is what makes Cin = 1 or 3 fast), shared by
every unit and channel block. Micro-kernel pixels run along W; a run shorter than its stretch (a padded
W edge) runs down H instead.
"""
from functools import cache, lru_cache
from math import gcd, prod
from typing import NamedTuple

import numpy as np
from numba import carray, get_num_threads, njit

from nbconv.config import CACHE
from nbconv.cpu import launch
from nbconv.cpu.emitter import CACHED, PREFETCHED, STREAMED
from nbconv.cpu.microkernel import TARGET, fma_lines_at, lanes, lines_address, store_fence
from nbconv.cpu.regroup import group_inputs
from nbconv.cpu.target import CACHE_LINE, l2_bytes
from nbconv.cpu.tasks import claim
from nbconv.geometry import dilated

# Output rows (in H) per task, at most: consecutive rows share KH - 1 of their input rows, which a column
# of micro-kernel calls down the band then reads from L1 instead of L2. Fewer where the input rows of a
# band outgrow half of one core's L2 (wide rows of many channels: a 2-D layer of 256 channels on 64
# pixels ran 10-15% faster in bands of 2-4 rows than of 8), so that they stay there beside the weights
# while every block of channels reads them (`_split`).
BAND = 8
# Where bands of one row are still fewer than TASKS_PER_THREAD a thread (1-D signals: one row a sample),
# each is cut along W into segments of MIN_SEGMENT output pixels or more, so that the threads balance
# (a segment recomputes its runs' tap lists: negligible beside that many pixels' products). Bands of
# fewer rows come first (`_split`): ResNet-50's 3x3 and 1x1 layers on one 56x56 image ran 12-30%
# faster in 8 bands of 7 rows than in 14 half-rows of 8 (docs/design.md).
TASKS_PER_THREAD = 4
MIN_SEGMENT = 64
# Taps of fewer reduction steps than this (a group's input channels) cost more in their overheads than a
# copy of x into a volume per unit costs, which makes them merge along a row (`_blocking`'s volumes).
SHORT_TAP = 16
# How the micro-kernel stores a result too large to stay in the caches between calls (`_store_mode`),
# so that it does not wait for the result's lines to be read before it overwrites them. Results larger
# than one core's L2 (`target.l2_bytes`) are streamed past the caches (non-temporal stores) where each
# call stores whole lines of every pixel: a line written in parts streams as slow partial writes
# (96-byte pixels stored three apart, for one). Results of PREFETCH_OUT_BYTES or more that are not
# streamed have their lines prefetched for writing first (`emitter.Emitter.prefetch_out`), so that the
# stores find them owned; smaller results wait less for their lines, and there the prefetches cost
# more than they hide (docs/design.md). The cost of streaming: whoever reads a streamed result next
# finds it in memory, not in the L3 cache.
PREFETCH_OUT_BYTES = 4 << 20
# Weights of this many bytes or more are packed on every thread (`_packed`). Whole calls, AVX2 forced on a
# Zen 4, parallel against NumPy's packing: 1.5 KB of weights 0.97x, 36 KB 0.93x, 64 KB 1.25x, 147 KB
# 1.62x (natively, with fewer and longer blocks: 0.90x, 1.01x, 1.00x, 1.01x; at 4dbe072).
PARALLEL_PACK_BYTES = 64 << 10


def spread_for(geometry, dtype):
    """Slots per vector K: the most groups, dividing their number, whose output channels fit in one
    vector (1 once a group needs half a vector or more). Where that leaves fewer than 4 channels in a
    vector (groups = 1 with Cout < 4, as the input gradient of an RGB or single-channel layer), the
    most input phases instead (a power of two dividing the group's input channels, see `_blocking`)."""
    width = lanes(dtype)
    cout_g, cin_g = geometry.out_channels // geometry.groups, geometry.in_channels // geometry.groups
    if 2 * cout_g > width:
        return 1
    k = max(k for k in range(1, width // cout_g + 1) if geometry.groups % k == 0)
    if k * cout_g >= 4:
        return k
    return max(k for k in range(1, width // cout_g + 1) if k & (k - 1) == 0 and cin_g % k == 0)


def run(x, w, bias, geometry, tables, out, final):
    """Fill `out` with conv(x, w) + bias on the register-blocked micro-kernels (channels-last arrays);
    `final`: whether `out` is what the caller gets (`conv.compute`)."""
    blocking, weight_index, bias_index = _packing(geometry, x.dtype)
    inputs = group_inputs(x, blocking.units, blocking.per_unit) if blocking.volumes else x
    weights = _packed(w, blocking, weight_index)
    entry, workers, meta = _launch_args(geometry, x.dtype, get_num_threads(), _store_mode(out, blocking, final))
    # Bands of output rows (n, od, oh...) or their segments (`_split`), claimed by the threads
    # (`launch.run_tasks`).
    arrays = (inputs, weights, _gather(bias, bias_index), out, *tables, np.zeros(3, np.int64), meta)
    launch.run_tasks(entry, workers, arrays, meta[0], geometry.valid_flops)


def _store_mode(out, blocking, final):
    """How the micro-kernel stores `out` (`emitter.CACHED`...): see PREFETCH_OUT_BYTES. Never streamed
    where nbconv reads it back at once (not `final`): a channels-first call's result, moved from the
    caches, ran 1.3x faster than from memory (a 1.6 MB image, at d97e316)."""
    if final and out.nbytes >= l2_bytes() and _whole_lines(out, blocking):
        return STREAMED
    return PREFETCHED if out.nbytes >= PREFETCH_OUT_BYTES else CACHED


def _whole_lines(out, blocking):
    """Whether each micro-kernel call stores whole cache lines of every pixel: `out` starts on one
    and every block of a unit's channels spans whole lines (blocks and vectors then follow at
    multiples of the vector size)."""
    unit_bytes = out.shape[-1] // blocking.units * out.itemsize
    block_bytes = blocking.vectors * TARGET.vector_bytes if blocking.blocks > 1 else unit_bytes
    return out.__array_interface__["data"][0] % CACHE_LINE == 0 and unit_bytes % CACHE_LINE == 0 \
        and block_bytes % CACHE_LINE == 0


class _Blocking(NamedTuple):
    """How one geometry's channels map to micro-kernel vectors (see `_blocking`)."""

    vectors: int
    spread: int  # K
    phases: int  # K when the K lanes of a channel are input phases, else 1
    per_unit: int  # groups per unit: 1, V * K, or V with phases
    units: int  # groups // per_unit
    blocks: int  # blocks of V vectors per unit
    steps: tuple  # (q, x_step) along W and q_h along H, see `_band`
    volumes: bool  # x copied into a volume per unit (`regroup.group_inputs`), else read as it is
    # V, K, G and D (Cin_g with input phases, else 1) as the types of tuples of zeros: each combination
    # compiles only its own code.
    shape: tuple


def _blocking(geometry, dtype):
    """The vectors and W and H steps of a geometry (asked once per geometry and dtype, by `_packing`)."""
    width, k = lanes(dtype), spread_for(geometry, dtype)
    groups, cout_g = geometry.groups, geometry.out_channels // geometry.groups
    # K lanes per channel as input phases of one group fill as many lanes as K groups, and leave x
    # as it is (K groups need theirs interleaved, a copy of x): when K divides the group's inputs.
    # (K = LANES groups are whole-vector inputs instead; K slots that do not divide the groups are
    # phases by `spread_for`.)
    cin_g = geometry.in_channels // groups
    phases = k if (k < width or groups % k) and k & (k - 1) == 0 and cin_g % k == 0 else 1
    if k == 1:  # the group's vectors in blocks of one of the target's sizes: the fewest vectors
        # computed (of zero weights too), then the fewest blocks. 6 vectors are 2 blocks of 3, not 4 + 2
        # with two of zeros (96 channels on AVX-512); 3 on AVX2 one block of 3, not 2 + 2. One
        # vector a call loads an input per FMA: only for groups of one vector.
        needed = -(-cout_g // width)
        sizes = [v for v in TARGET.blocking.pixels if v > 1 or needed == 1]
        vectors = min(sizes, key=lambda v: (-(-needed // v) * v, -(-needed // v)))
    else:  # vectors of K groups (or one group) each, as many as split the groups evenly: with whole-
        # vector inputs (K = LANES, FMA memory operands) up to the target's `whole_vectors`; else each
        # pixel and vector needs a register for its broadcast inputs, and beside 24 accumulators 4
        # vectors spill where 2 do not.
        per_vector = 1 if phases > 1 else k
        steps = prod(geometry.kernel) * cin_g // phases  # a vector's weights
        most = TARGET.whole_vectors(steps) if k == width else min(2, TARGET.max_vectors)
        vectors = max(v for v in range(most, 0, -1) if (groups // per_vector) % v == 0)
    # Residue classes along H and W: rows fall into them as pixels do (input dilation alternates their taps).
    q_h, q = (lhs // gcd(stride, lhs) for stride, lhs in zip(geometry.stride[1:], geometry.lhs_dilation[1:]))
    per_unit = 1 if k == 1 else vectors if phases > 1 else vectors * k
    units = groups // per_unit
    # A volume per unit where x is copied anyway (a unit's groups interleaved), and where several units
    # have short taps: a unit's pixels are then its channels apart, so that a stride-1 row's taps
    # continue in x and merge (depthwise rows slide). The copy pays for itself only where taps are
    # shorter than SHORT_TAP: longer taps' overheads weigh less than it (docs/design.md).
    volumes = phases == 1 and ((per_unit > 1 and cin_g > 1) or (units > 1 and cin_g < SHORT_TAP))
    return _Blocking(vectors, k, phases, per_unit, units, -(-cout_g // (vectors * width)) if k == 1 else 1,
                     (q, q * geometry.stride[2] // geometry.lhs_dilation[2], q_h), volumes,
                     ((0,) * vectors, (0,) * k, (0,) * (cout_g if k > 1 else 1), (0,) * (cin_g if phases > 1 else 1)))


def pack_weights(w, blocking):
    """(KD, KH, KW, Cin_g, Cout) -> (units, blocks, taps, steps, V * LANES), zero-padded: the micro-kernel
    reads the V vectors of one (tap, reduction step) contiguously. A unit is one group (K = 1: channel c
    in lane c of its blocks laid end to end; a step is an input channel), V * K groups (K > 1, one
    block: channel c of the unit's group j in lane c * K + j % K of vector j // K) or V groups (K input
    phases: channel c of group v, input channel s * K + j, in lane c * K + j of vector v at step s)."""
    *kernel, cin_g, _ = w.shape
    v, k, lanes_ = blocking.vectors, blocking.spread, lanes(w.dtype)
    packed = _packed_shape(prod(kernel), cin_g, blocking, lanes_)
    units, blocks, taps, steps, width = packed
    if blocking.phases > 1:  # each vector's channels side by side, phase by phase
        rows = w.reshape(taps, steps, k, units, v, -1).transpose(0, 1, 3, 4, 5, 2).reshape(taps, steps, units, v, -1)
    elif k > 1:  # each vector's K groups side by side, channel by channel
        rows = w.reshape(taps, cin_g, units, v, k, -1).swapaxes(-1, -2).reshape(taps, cin_g, units, v, -1)
    else:
        rows = w.reshape(taps, cin_g, units, 1, -1)
    fill = lanes_ if k > 1 else blocks * v * lanes_
    if rows.shape[-1] < fill:
        padded = np.zeros((*rows.shape[:-1], fill), w.dtype)
        padded[..., :rows.shape[-1]] = rows
        rows = padded
    # A transpose of size-1 axes for a dense convolution: no copy.
    return np.ascontiguousarray(rows.reshape(taps, steps, units, blocks, width).transpose(2, 3, 0, 1, 4))


def _packed(w, blocking, weight_index):
    """`pack_weights(w, blocking)`, for this call. Where the blocks of each (tap, reduction step) are
    whole (K = 1, no zero padding), they are cut apart by regroup's copy of a unit's channels, on
    every thread: NumPy's copy of the transpose moves one block at a time (64 bytes with 2 AVX2
    vectors), serially, and ResNet-50's 128-channel weights took 0.2-1.3 ms so, as long as the
    convolution (the most after another call, while its threads still spin beside the copy). Weights
    under PARALLEL_PACK_BYTES stay with NumPy, whose copy costs less than a launch there."""
    if weight_index is not None:
        return _gather(w, weight_index)
    parts = blocking.units * blocking.blocks
    if (parts == 1 or w.shape[-1] != parts * blocking.vectors * lanes(w.dtype) or not w.flags.c_contiguous
            or w.nbytes < PARALLEL_PACK_BYTES):
        return pack_weights(w, blocking)
    rows = w.reshape(1, 1, -1, 1, w.shape[-1])  # (tap, step) rows, each of `parts` blocks
    *kernel, cin_g, _ = w.shape
    return group_inputs(rows, parts, 1).reshape(_packed_shape(prod(kernel), cin_g, blocking, lanes(w.dtype)))


def _packed_shape(taps, cin_g, blocking, lanes_):
    """The shape `pack_weights` gives (taps, Cin_g) weights: (units, blocks, taps, steps, V * LANES)."""
    return blocking.units, blocking.blocks, taps, cin_g // blocking.phases, blocking.vectors * lanes_


@lru_cache(maxsize=64)
def _packing(geometry, dtype):
    """A geometry's `_blocking`, and where `pack_weights` puts each weight and bias value: its flat
    index plus one (0 for the zero padding), in integers as wide as the values, so that they fill as
    many lanes. One lookup per call. The weights of K > 1 are packed by this gather (NumPy's copies
    of those transposes, with K-element inner axes, pay their iterator's overhead every K values);
    with K = 1, a reshape and NumPy's copies or a parallel one of whole blocks (`_packed`), faster
    than a gather: None."""
    dtype = np.dtype(dtype)
    blocking, cout, integers = _blocking(geometry, dtype), geometry.out_channels, f"i{dtype.itemsize}"
    weight_index = None
    if blocking.spread > 1:
        w_shape = (*geometry.kernel, geometry.in_channels // geometry.groups, cout)
        weight_index = pack_weights(np.arange(1, prod(w_shape) + 1, dtype=integers).reshape(w_shape), blocking)
    # The bias as a 1-tap kernel (with input phases: in phase 0, none in the others).
    bias_taps = np.zeros((1, 1, 1, blocking.phases, cout), integers)
    bias_taps[..., 0, :] = np.arange(1, cout + 1)
    return blocking, weight_index, pack_weights(bias_taps, blocking)


@njit(cache=CACHE)
def _gather(values, index):
    """values.flat[index - 1], 0 where index is 0, in index's shape."""
    flat, where = values.reshape(-1), index.reshape(-1)
    out = np.empty(where.size, values.dtype)
    for i in range(where.size):
        out[i] = flat[where[i] - 1] if where[i] > 0 else 0
    return out.reshape(index.shape)


@lru_cache(maxsize=64)
def _launch_args(geometry, dtype, threads, mode):
    """The entry address, the threads to run it on, and `_work`'s meta: everything it needs besides the
    arrays' data, in the order it unpacks them, from the geometry alone (one lookup per call; the
    array is shared by concurrent calls, so it is read-only)."""
    blocking = _packing(geometry, dtype)[0]
    n_batch, n_od, n_oh, n_ow, cout = geometry.out_shape
    vectors, spread, group, phased = blocking.shape
    # How far x advances per reduction element (the micro-kernel's S).
    element = 1 if len(spread) == 1 else len(spread) if len(phased) > 1 else len(vectors) * len(spread)
    band, segments = _split(geometry, dtype, threads)
    bands = -(-n_oh // band)
    n_tasks = n_batch * n_od * bands * segments
    width = lanes(dtype)
    packed = _packed_shape(prod(geometry.kernel), geometry.in_channels // geometry.groups, blocking, width)
    bias_size = prod(_packed_shape(1, blocking.phases, blocking, width))
    tables = (size for axis in zip(geometry.out_spatial, geometry.kernel) for size in axis)
    workers = min(threads, n_tasks)
    meta = np.array((n_tasks, workers, n_od, bands, n_oh, n_ow, cout, element, *blocking.steps, mode,
                     bias_size, lines_address(blocking.shape, dtype), _planes_first(geometry, dtype), band, segments,
                     *_x_layout(geometry, blocking), *geometry.in_spatial, geometry.in_channels, *packed, *tables),
                    np.int64)
    meta.flags.writeable = False
    return launch.address(_entry(np.dtype(dtype))), workers, meta


def _split(geometry, dtype, threads):
    """(rows a band, segments a band along W): see BAND and TASKS_PER_THREAD. The rows: at most BAND,
    and fewer where the input rows a band reads outgrow half of one core's L2. Where that leaves fewer
    than TASKS_PER_THREAD bands a thread, the count of rows that makes the busiest thread read the
    fewest input rows (it claims the most bands), the most rows on a tie: 56 rows of one image are 8
    bands of 7 (4 a thread), not 7 of 8 (4 and 3)."""
    planes, (n_oh, n_ow) = geometry.batch * geometry.out_spatial[0], geometry.out_spatial[1:]
    span, stride = dilated(geometry.kernel[1], geometry.rhs_dilation[1]), geometry.stride[1]
    row_bytes = geometry.kernel[0] * geometry.in_spatial[2] * geometry.in_channels * np.dtype(dtype).itemsize

    def read(band):  # input rows of a band of each plane it reads
        return (band - 1) * stride + span

    def busiest(band):
        return -(-planes * -(-n_oh // band) // threads) * read(band)
    most = min(BAND, n_oh)
    while most > 1 and read(most) * row_bytes > l2_bytes() // 2:
        most -= 1
    wanted = TASKS_PER_THREAD * threads
    band = most if planes * -(-n_oh // most) >= wanted else min(range(most, 0, -1), key=busiest)
    bands = planes * -(-n_oh // band)
    if band > 1 or bands >= wanted:
        return band, 1
    segments = max(1, min(-(-wanted // bands), n_ow // MIN_SEGMENT))
    return band, -(-n_ow // -(-n_ow // segments))  # as many as their length leaves none empty


def _x_layout(geometry, blocking):
    """(pixel, unit): how far apart in x consecutive pixels and units start (`_Blocking.volumes`)."""
    unit = geometry.in_channels // blocking.units
    return (unit, prod(geometry.in_spatial) * unit) if blocking.volumes else (geometry.in_channels, unit)


def _planes_first(geometry, dtype):
    """Whether consecutive tasks take one band's output planes (od) in turn, not one plane's bands. Plane
    od + 1 reads KD - 1 of the input planes that od reads: from L2 when it is the next task, but with
    the bands in turn only if all KD input planes stay there meanwhile (not where they outgrow one core's
    L2, `target.l2_bytes`). Where they fit, the bands in turn write the result in order (planes in turn
    jump a plane apart from task to task, which ran slower)."""
    _, height, width = geometry.in_spatial
    planes = geometry.kernel[0] * height * width * geometry.in_channels * np.dtype(dtype).itemsize
    return geometry.kernel[0] > 1 and planes > l2_bytes()


@cache
def _entry(dtype):
    """The compiled entry point of the blocked kernel: a C function of the data pointers of (x, packed,
    bias, out, idx_d, idx_h, idx_w, counter, meta), so that one parallel loop, compiled once
    (`launch.run`), runs it and the weight gradient's. The same for every family (meta says which
    micro-kernel it calls: `microkernel.lines_address`); compiled (or loaded) once per process and dtype."""
    digest = launch.LINKED_SOURCES

    def entry(x, packed, bias, out, idx_d, idx_h, idx_w, counter, meta):
        digest  # noqa: B018 (referenced, so that it is a cell of the closure, which Numba's cache keys by)
        _work(x, packed, bias, out, idx_d, idx_h, idx_w, counter, meta)
    return launch.entry_point(entry, dtype)


@njit(inline="always")
def _work(x_ptr, packed_ptr, bias_ptr, out_ptr, d_ptr, h_ptr, w_ptr, counter_ptr, meta_ptr):
    """One thread's share: runs of tasks claimed from counter[0] until the slice's end. The arrays
    are rebuilt from their data pointers and `meta` (`_launch_args`) as flat views, made once: views
    made inside the loop would cost atomic reference counts, which the threads contend for."""
    meta = carray(meta_ptr, (_META,))
    n_tasks, workers, n_od, bands, n_oh, n_ow, cout, element, q, x_step, q_h, mode, n_bias, family = meta[:14]
    planes_first, band, segments, x_pixel, x_unit = meta[14:19]
    d, h, w, cin, units, blocks, n_taps, cin_g, width, od_rows, kd, oh_rows, kh, ow_rows, kw = meta[19:]
    n_batch = n_tasks // (n_od * bands * segments)
    segment = -(-n_ow // segments)
    strides = (d * h * w * cin, h * w * x_pixel, w * x_pixel, x_pixel)
    counter = carray(counter_ptr, (3,))
    start, end = counter[1], counter[2]
    arrays = (carray(x_ptr, (n_batch * d * h * w * cin,)),
              carray(packed_ptr, (units * blocks * n_taps * cin_g * width,)),
              carray(bias_ptr, (n_bias,)), carray(out_ptr, (n_batch * n_od * n_oh * n_ow * cout,)))
    tables = (carray(d_ptr, (od_rows, kd)), carray(h_ptr, (oh_rows, kh)), carray(w_ptr, (ow_rows, kw)))
    packed_shape = (units, blocks, n_taps, cin_g, width)
    taps = np.empty((n_taps, 3), np.int64)
    tap_args = (taps, tables[0], tables[1], tables[2], strides, cin_g, width, element)
    first, last = claim(counter, start, end, workers)
    while first < end:
        for task in range(first, last):
            n, od, oh = _task_rows(task // segments, n_od, bands, band, planes_first)
            ow = task % segments * segment
            _band(tap_args, (n, od, oh), min(band, n_oh - oh), (ow, min(ow + segment, n_ow)), (q, q_h),
                  (x_step * strides[3], q * cout), n_ow * cout, arrays, packed_shape, (x_unit, cout), family, mode)
        first, last = claim(counter, last, end, workers)
    if mode == STREAMED:  # this thread's non-temporal stores, visible before the call returns
        store_fence()


# meta's length: 17 values, x's layout (2), x's sizes after N, packed's 5, the 3 tables' 2 each
_META = 17 + 2 + 4 + 5 + 6


@njit(inline="always")
def _task_rows(task, n_od, bands, band, planes_first):
    """(n, od, oh): where a task's band starts; a band's planes in turn or a plane's bands (`_planes_first`)."""
    n, rest = task // (n_od * bands), task % (n_od * bands)
    if planes_first:
        return n, rest % n_od, rest // n_od * band
    return n, rest // bands, rest % bands * band


@njit(inline="always")
def _band(tap_args, band, rows, columns, classes, w_steps, y_row, arrays, packed_shape, in_out, family, mode):
    """Output pixels columns = (ow, end) of rows oh... oh + rows - 1 of (n, od), band = (n, od, oh):
    each of the q residue classes along W cut into runs of pixels with the same taps, each run into
    stretches of rows of one of the q_h classes along H with the same taps (classes = (q, q_h): input
    dilation alternates the taps from row to row, as along W); one tap list per stretch and run, shared
    by every unit and channel block (its offsets are relative to them). A W class's consecutive pixels
    are w_steps = (x, y) apart, rows y_row in y."""
    taps, idx_w = tap_args[0], tap_args[3]
    q, q_h = classes
    for r in range(q):
        # the class's pixels r + q * j inside the columns
        j, count = max(0, (columns[0] - r + q - 1) // q), max(0, (columns[1] - r + q - 1) // q)
        while j < count:
            end = j + 1
            while end < count and _same_taps(idx_w, r + q * j, r + q * end):
                end += 1
            run = (band[0], band[1], band[2], r + q * j)
            for row_class in range(q_h):
                i = row_class
                while i < rows:
                    used, lines, first, pixels, steps, i = _plan(tap_args, run, (i, rows, q_h), end - j, w_steps,
                                                                 y_row)
                    _run_units(arrays, packed_shape, in_out, family, mode, taps, used, lines, first, pixels, steps)
            j = end


@njit(error_model="numpy", cache=CACHE)
def _plan(tap_args, run, rows, count, w_steps, y_row):
    """The micro-kernel lines for a run of `count` pixels along W, from row `i` of the band through
    the rows i + q_h, i + 2 q_h... after it with the same taps, rows = (i, the band's rows, q_h) (one
    tap list serves them all, each row reading `_row_step` further in x): pixels along W, one line per
    row; or, for runs shorter than that stretch (at a padded W edge), pixels down H, one line per W
    pixel. W pixels are w_steps = (x, y) apart, rows y_row in y. -> (taps filled, lines, first, pixels
    per line, (x_step, y_step, x_line, y_line), the class's next row after the stretch)."""
    taps, idx_d, idx_h, idx_w, strides, cin_g, width, element = tap_args
    n, od, oh, ow = run
    i, band_rows, q_h = rows
    n_oh, n_ow = idx_h.shape[0], idx_w.shape[0]
    end = i + q_h
    while end < band_rows and _same_taps(idx_h, oh + i, oh + end):
        end += q_h
    stretch = (end - i) // q_h
    used = _tap_list(taps, idx_d, idx_h, idx_w, (od, oh + i, ow), strides, cin_g, width, element)
    # The run's first output pixel (flat) and its image in x: the tap offsets lead from there.
    first = ((n * idx_d.shape[0] + od) * n_oh + oh + i) * n_ow + ow, n * strides[0]
    h_step, row_step = _row_step(idx_h, oh + i, q_h) * strides[2], q_h * y_row
    if count >= stretch:
        return used, stretch, first, count, (w_steps[0], w_steps[1], h_step, row_step), end
    return used, count, first, stretch, (h_step, row_step, w_steps[0], w_steps[1]), end


@njit(error_model="numpy", cache=CACHE)
def _row_step(idx_h, oh, q_h):
    """How far apart in x (in input rows) rows oh and oh + q_h read, given that they use the same taps
    (0 when they use none)."""
    for k in range(idx_h.shape[1]):
        if idx_h[oh, k] >= 0 and oh + q_h < idx_h.shape[0]:
            return idx_h[oh + q_h, k] - idx_h[oh, k]
    return 0


@njit(inline="always")
def _run_units(arrays, packed_shape, in_out, family, mode, taps, used, lines, first, count, steps):
    """`lines` lines of `count` output pixels from flat pixel first[0] (reading x from first[1]),
    pixels (x_step, y_step) apart and lines (x_line, y_line), reducing over the first `used` taps,
    for every unit and channel block, by the family's micro-kernel loop at address `family`
    (`microkernel.over_lines`). `mode`: how it stores (`_store_mode`)."""
    x, w, bias, y = arrays
    units, blocks, n_taps, cin_g, width = packed_shape
    x_step, y_step, x_line, y_line = steps
    x_unit, cout = in_out
    unit_cout = cout // units
    for unit in range(units):
        for block in range(blocks):
            x_first = first[1] + unit * x_unit
            y_first = first[0] * cout + unit * unit_cout + block * width
            stored = min(width, unit_cout - block * width)  # a partial last block stores fewer
            w_at = ((unit * blocks + block) * n_taps * cin_g * width, (unit * blocks + block) * width)
            fma_lines_at(family, lines, count, x, (x_first, x_step, x_line), taps, used, w, w_at, bias, y,
                         (y_first, y_step, y_line, stored, mode))


@njit(error_model="numpy", cache=CACHE)
def _same_taps(idx, a, b):
    """Whether output positions a and b of one axis use the same kernel taps."""
    for k in range(idx.shape[1]):
        if (idx[a, k] >= 0) != (idx[b, k] >= 0):
            return False
    return True


@njit(error_model="numpy", cache=CACHE)
def _tap_list(taps, idx_d, idx_h, idx_w, pixel, strides, cin_g, width, element):
    """Fill taps[:count] with (x offset, packed-weight offset, length) of every valid tap for the
    output pixel (od, oh, ow), merging a tap into the previous one where both offsets continue
    (x advances `element` per reduction element, the packed weights `width`); -> count."""
    od, oh, ow = pixel
    n_kh, n_kw = idx_h.shape[1], idx_w.shape[1]
    count = 0
    for kd in range(idx_d.shape[1]):
        for kh in range(n_kh):
            for kw in range(n_kw):
                i_d, i_h, i_w = idx_d[od, kd], idx_h[oh, kh], idx_w[ow, kw]
                if i_d < 0 or i_h < 0 or i_w < 0:
                    continue
                x_off = i_d * strides[1] + i_h * strides[2] + i_w * strides[3]
                w_off = ((kd * n_kh + kh) * n_kw + kw) * cin_g * width
                last = count - 1
                if (count > 0 and taps[last, 0] + taps[last, 2] * element == x_off
                        and taps[last, 1] + taps[last, 2] * width == w_off):
                    taps[last, 2] += cin_g
                else:
                    taps[count, 0], taps[count, 1], taps[count, 2] = x_off, w_off, cin_g
                    count += 1
    return count
