"""Register-blocked convolution: the micro-kernel of `microkernel` over runs of output pixels.

Output channels are cut into vectors of LANES. A group with half a vector of output channels or more
gets up to 4 vectors per micro-kernel call, each input value broadcast to all of them (K = 1).
Smaller groups are packed K to a vector (K * Cout_g <= LANES, lane l: group l % K), the V * K inputs
of one reduction step read side by side; depthwise with 16 channels is K = LANES, plain vector loads.
Such a "unit" (a group, or V * K groups) has its own input channels, packed weights and output lanes.

One output row (n, od, oh) per task. Along W the pixels of a row fall into `q` residue classes
(q = lhs / gcd(stride, lhs), 1 without input dilation): inside a class, consecutive pixels read inputs
`x_step` pixels apart through the same taps, so input dilation skips its zeros for free. A class
splits into runs of pixels with the same valid taps (the interior, and single pixels near a padded
edge); a run gets one list of (x offset, packed-weight offset, length) taps, with consecutive taps
merged where x and the weights both continue (a dense stride-1 row reduces KW * Cin at once, which
is what makes Cin = 1 or 3 fast), shared by every unit and channel block.
"""
from math import gcd

import numpy as np
from numba import njit, prange

from nbconv.config import CACHE
from nbconv.cpu.microkernel import MAX_PIXELS, fma_tile, lanes, pixel_block

# Output rows (in H) per task: consecutive rows share KH - 1 of their input rows, which a column of
# micro-kernel calls down the band then reads from L1 instead of L2 (depthwise: 2x less L2 traffic).
BAND = 8


def spread_for(geometry, dtype):
    """Groups per vector K: the most groups, dividing their number, whose output channels fit in one
    vector (1 once a group needs half a vector or more)."""
    width = lanes(dtype)
    cout_g = geometry.out_channels // geometry.groups
    return max(k for k in range(1, width // cout_g + 1) if geometry.groups % k == 0) if 2 * cout_g <= width else 1


def conv3d(x, w, bias, geometry, tables, out):
    width, k = lanes(x.dtype), spread_for(geometry, x.dtype)
    groups, cout_g = geometry.groups, geometry.out_channels // geometry.groups
    if k == 1:
        vectors = min(4, -(-cout_g // width))
    else:  # vectors of K groups each, as many as split the groups evenly: up to 4 when x is read as
        # whole vectors (K = LANES, FMA memory operands); else each pixel and vector needs a register
        # for its broadcast inputs, and beside 24 accumulators 4 vectors spill where 2 do not.
        vectors = max(v for v in (4, 3, 2, 1) if (groups // k) % v == 0 and (k == width or v <= 2))
    packed, channel_of_lane = pack_weights(w, groups, vectors, width, k)
    unit_first = np.arange(packed.shape[0]) * (geometry.out_channels // packed.shape[0])
    flat_bias = np.ascontiguousarray(bias[channel_of_lane.clip(0) + unit_first[:, None, None]])
    # Blocks whose lanes are consecutive output channels are stored straight into `out`, and so are
    # K > 1 vectors (the micro-kernel reorders them); a partial K = 1 block goes through a tile.
    in_order = (channel_of_lane == channel_of_lane[:, :1] + np.arange(channel_of_lane.shape[1])).all(axis=1)
    in_order |= k > 1
    stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
    q = lhs // gcd(stride, lhs)
    # V, K and G travel as the types of tuples of zeros: each combination compiles only its own code.
    _conv_blocked(group_inputs(x, groups, 1 if k == 1 else vectors * k), packed, flat_bias, channel_of_lane,
                  in_order, *tables, out, q, q * stride // lhs, (0,) * vectors, (0,) * k, (0,) * (cout_g if k > 1 else 1))


def pack_weights(w, groups, vectors, lanes_, k):
    """(KD, KH, KW, Cin_g, Cout) -> packed (units, blocks, taps, Cin_g, V * LANES), zero-padded, and
    the output channel (relative to the unit's first) of every (block, lane), -1 for padding: the
    micro-kernel reads the V vectors of one (tap, input channel) contiguously. A unit is one group
    (K = 1, in blocks of V vectors) or V * K groups (K > 1, one block)."""
    *kernel, cin_g, cout = w.shape
    taps, cout_g = int(np.prod(kernel)), cout // groups
    width = vectors * lanes_
    blocks = -(-cout_g // width) if k == 1 else 1
    per_unit = 1 if k == 1 else vectors * k
    # Channel c of group j (of the unit's groups) goes to lane (j // K) * LANES + c * K + j % K;
    # with K = 1 that is lane c of the blocks laid end to end.
    lane_channel = np.full(blocks * width, -1)
    c, j = np.meshgrid(np.arange(cout_g), np.arange(per_unit), indexing="ij")
    lane_channel[((j // k) * lanes_ + c * k + j % k).ravel()] = (j * cout_g + c).ravel()
    units = groups // per_unit
    by_unit = w.reshape(taps, cin_g, units, per_unit * cout_g)
    packed = np.zeros((taps, cin_g, units, blocks * width), w.dtype)
    valid = lane_channel >= 0
    packed[..., valid] = by_unit[..., lane_channel[valid]]
    packed = packed.reshape(taps, cin_g, units, blocks, width).transpose(2, 3, 0, 1, 4)
    return np.ascontiguousarray(packed), lane_channel.reshape(blocks, width)


def group_inputs(x, groups, per_unit):
    """x with the channels of every unit's groups interleaved (unit, input channel, group), so that
    one reduction step of a unit reads its inputs side by side."""
    cin_g = x.shape[-1] // groups
    if per_unit == 1 or cin_g == 1:
        return x
    regrouped = x.reshape(*x.shape[:-1], groups // per_unit, per_unit, cin_g).swapaxes(-1, -2)
    return np.ascontiguousarray(regrouped).reshape(x.shape)


@njit(parallel=True, error_model="numpy", cache=CACHE)
def _conv_blocked(x, packed, bias, channel_of_lane, in_order, idx_d, idx_h, idx_w, out, q, x_step, vectors,
                  spread, group):
    """BAND output rows (n, od, oh...) per task; per run of pixels one tap list per row, shared by
    every unit and channel block (its offsets are relative to them)."""
    n_batch, n_od, n_oh, n_ow, cout = out.shape
    n_taps, cin_g, width = packed.shape[2:]
    strides = (x.shape[1] * x.shape[2] * x.shape[3] * x.shape[4], x.shape[2] * x.shape[3] * x.shape[4],
               x.shape[3] * x.shape[4], x.shape[4])
    # How far x advances per reduction element (the micro-kernel's S).
    element = 1 if len(spread) == 1 else len(vectors) * len(spread)
    # Flat views made once: array views made inside the loop cost atomic reference counts, which
    # the two threads contend for.
    arrays = (x.reshape(-1), packed.reshape(-1), out.reshape(-1), bias.reshape(-1))
    bands = -(-n_oh // BAND)
    for task in prange(n_batch * n_od * bands):
        n, od, oh = task // (n_od * bands), (task // bands) % n_od, task % bands * BAND
        rows = min(BAND, n_oh - oh)
        taps = np.empty((BAND * n_taps, 3), np.int64)  # row i's list from i * n_taps
        used = np.empty(BAND, np.int64)
        tile = np.empty(MAX_PIXELS * width, out.dtype)
        for r in range(q):
            count = (n_ow - r + q - 1) // q
            j = 0
            while j < count:
                end = j + 1
                while end < count and _same_taps(idx_w, r + q * j, r + q * end):
                    end += 1
                for i in range(rows):
                    used[i] = _tap_list(taps, i * n_taps, idx_d, idx_h, idx_w, (od, oh + i, r + q * j), strides,
                                        cin_g, width, element)
                # The run's first output pixel (flat) and its image in x: the tap offsets lead from there.
                first = (((n * n_od + od) * n_oh + oh) * n_ow + r + q * j, n * strides[0])
                _run_units(arrays, packed.shape, channel_of_lane, in_order, (x.shape[-1], cout), taps, used[:rows],
                           tile, first, end - j, (q, x_step * strides[3], n_ow), vectors, spread, group)
                j = end


@njit(inline="always")
def _run_units(arrays, packed_shape, channel_of_lane, in_order, channels, taps, used, tile, first, count, steps,
               vectors, spread, group):
    """`count` output pixels of each of len(used) rows, q apart from flat pixel first[0] (reading x
    from first[1]), for every unit and channel block, in micro-kernel calls of as many pixels as each
    holds; the rows of one column of pixels in turn, so that they find their shared input rows in
    the L1 cache."""
    x, w, y, bias = arrays
    units, blocks, n_taps, cin_g, width = packed_shape
    cin, cout = channels
    q, x_step, n_ow = steps
    for unit in range(units):
        for block in range(blocks):
            x_base = first[1] + unit * (cin // units)
            w_base = (unit * blocks + block) * n_taps * cin_g * width
            b_base = (unit * blocks + block) * width
            y_first = first[0] * cout + unit * (cout // units)
            p = 0
            while p < count:
                pixels = pixel_block(len(vectors), count - p)
                for i in range(len(used)):
                    y_at = y_first + (i * n_ow + q * p) * cout
                    tap_range = (i * n_taps, used[i])
                    if in_order[block]:
                        fma_tile(vectors, spread, group, pixels, x, x_base + p * x_step, x_step, taps, tap_range, w,
                                 w_base, y, y_at + channel_of_lane[block, 0], q * cout, bias, b_base)
                    else:  # interleaved groups or a partial last block: through `tile`
                        fma_tile(vectors, spread, group, pixels, x, x_base + p * x_step, x_step, taps, tap_range, w,
                                 w_base, tile, 0, width, bias, b_base)
                        for k in range(pixels):
                            for lane in range(width):
                                if channel_of_lane[block, lane] >= 0:
                                    y[y_at + k * q * cout + channel_of_lane[block, lane]] = tile[k * width + lane]
                p += pixels


@njit(inline="always")
def _same_taps(idx_w, a, b):
    for k in range(idx_w.shape[1]):
        if (idx_w[a, k] >= 0) != (idx_w[b, k] >= 0):
            return False
    return True


@njit(inline="always")
def _tap_list(taps, start, idx_d, idx_h, idx_w, pixel, strides, cin_g, width, element):
    """Fill taps[start : start + count] with (x offset, packed-weight offset, length) of every valid
    tap for the output pixel (od, oh, ow), merging a tap into the previous one where both offsets
    continue (x advances `element` per reduction element, the packed weights `width`); -> count."""
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
                last = start + count - 1
                if (count > 0 and taps[last, 0] + taps[last, 2] * element == x_off
                        and taps[last, 1] + taps[last, 2] * width == w_off):
                    taps[last, 2] += cin_g
                else:
                    taps[last + 1, 0], taps[last + 1, 1], taps[last + 1, 2] = x_off, w_off, cin_g
                    count += 1
    return count
