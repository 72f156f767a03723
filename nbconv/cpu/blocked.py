"""Register-blocked convolution: the micro-kernel of `microkernel` over runs of output pixels.

Output channels are cut into vectors of LANES. A group with half a vector of output channels or more
gets up to 4 vectors per micro-kernel call, each input value broadcast to all of them (K = 1).
Smaller groups are packed K to a vector (K * Cout_g <= LANES, lane l: group l % K), the K inputs of
one reduction step read side by side; depthwise with 16 channels is K = LANES, plain vector loads.
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
    else:  # up to 4 vectors of K groups each, as long as they split the groups evenly
        vectors = max(v for v in (4, 3, 2, 1) if (groups // k) % v == 0)
    packed, channel_of_lane = pack_weights(w, groups, vectors, width, k)
    unit_first = np.arange(packed.shape[0]) * (geometry.out_channels // packed.shape[0])
    flat_bias = np.ascontiguousarray(bias[channel_of_lane.clip(0) + unit_first[:, None, None]])
    # Blocks whose lanes are consecutive output channels are stored straight into `out`.
    in_order = (channel_of_lane == channel_of_lane[:, :1] + np.arange(channel_of_lane.shape[1])).all(axis=1)
    stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
    q = lhs // gcd(stride, lhs)
    # How far apart in x the K groups of consecutive vectors start (0: the vectors share inputs).
    x_vector = k * geometry.in_channels // groups if k > 1 else 0
    # V and K travel as the types of tuples of zeros: each combination compiles only its own code.
    _conv_blocked(group_inputs(x, groups, k), packed, flat_bias, channel_of_lane, in_order, *tables, out, q,
                  q * stride // lhs, x_vector, (0,) * vectors, (0,) * k)


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


def group_inputs(x, groups, k):
    """x with the channels of every K groups interleaved (unit, input channel, group), so that one
    reduction step of a unit reads its K inputs side by side."""
    cin_g = x.shape[-1] // groups
    if k == 1 or cin_g == 1:
        return x
    regrouped = x.reshape(*x.shape[:-1], groups // k, k, cin_g).swapaxes(-1, -2)
    return np.ascontiguousarray(regrouped).reshape(x.shape)


@njit(parallel=True, error_model="numpy", cache=CACHE)
def _conv_blocked(x, packed, bias, channel_of_lane, in_order, idx_d, idx_h, idx_w, out, q, x_step, x_vector,
                  vectors, spread):
    """One output row (n, od, oh) per task; per run of pixels one tap list, shared by every unit
    and channel block (its offsets are relative to them)."""
    n_batch, n_od, n_oh, n_ow, cout = out.shape
    n_taps, cin_g, width = packed.shape[2:]
    strides = (x.shape[1] * x.shape[2] * x.shape[3] * x.shape[4], x.shape[2] * x.shape[3] * x.shape[4],
               x.shape[3] * x.shape[4], x.shape[4])
    for row in prange(n_batch * n_od * n_oh):
        n, od, oh = row // (n_od * n_oh), (row // n_oh) % n_od, row % n_oh
        taps = np.empty((n_taps, 3), np.int64)
        tile = np.empty(MAX_PIXELS * width, out.dtype)
        for r in range(q):
            count = (n_ow - r + q - 1) // q
            j = 0
            while j < count:
                end = j + 1
                while end < count and _same_taps(idx_w, r + q * j, r + q * end):
                    end += 1
                used = _tap_list(taps, idx_d[od], idx_h[oh], idx_w[r + q * j], strides, cin_g, width,
                                 len(spread))
                # The run's first output pixel (flat) and its image in x: the tap offsets lead from there.
                first = (((n * n_od + od) * n_oh + oh) * n_ow + r + q * j, n * strides[0])
                _run_units(x, packed, bias, channel_of_lane, in_order, out, taps[:used], tile, first, end - j,
                           q, (x_step * strides[3], x_vector), vectors, spread)
                j = end


@njit(inline="always")
def _run_units(x, packed, bias, channel_of_lane, in_order, out, taps, tile, first, count, q, x_steps, vectors,
               spread):
    """`count` output pixels, q apart from flat pixel first[0] (reading x from first[1]), for every
    unit and channel block, in micro-kernel calls of as many pixels as each holds."""
    units, blocks, n_taps, cin_g, width = packed.shape
    cout = out.shape[-1]
    unit_channels = cout // units
    flat_x, flat_w, flat_y, flat_b = x.reshape(-1), packed.reshape(-1), out.reshape(-1), bias.reshape(-1)
    for unit in range(units):
        for block in range(blocks):
            lane_channels = channel_of_lane[block]
            # Interleaved groups and a partial last block go through `tile`.
            direct = in_order[block]
            c_first = unit * unit_channels
            x_base = first[1] + unit * (x.shape[-1] // units)
            w_base = (unit * blocks + block) * n_taps * cin_g * width
            b_base = (unit * blocks + block) * width
            p = 0
            while p < count:
                pixels = pixel_block(len(vectors), count - p)
                y_at = (first[0] + q * p) * cout + c_first
                y, y_base, y_step = (flat_y, y_at + lane_channels[0], q * cout) if direct else (tile, 0, width)
                fma_tile(vectors, spread, pixels, flat_x, x_base + p * x_steps[0], x_steps, taps, flat_w, w_base,
                         y, y_base, y_step, flat_b, b_base)
                if not direct:
                    for i in range(pixels):
                        for lane in range(width):
                            if lane_channels[lane] >= 0:
                                flat_y[y_at + i * q * cout + lane_channels[lane]] = tile[i * width + lane]
                p += pixels


@njit(inline="always")
def _same_taps(idx_w, a, b):
    for k in range(idx_w.shape[1]):
        if (idx_w[a, k] >= 0) != (idx_w[b, k] >= 0):
            return False
    return True


@njit(inline="always")
def _tap_list(taps, row_d, row_h, row_w, strides, cin_g, width, spread):
    """Fill taps[:count] with (x offset, packed-weight offset, length) of every valid tap for one
    output pixel, merging a tap into the previous one where both offsets continue (x advances
    `spread` per reduction element, the packed weights `width`); -> count."""
    n_kh, n_kw = row_h.shape[0], row_w.shape[0]
    count = 0
    for kd in range(row_d.shape[0]):
        for kh in range(n_kh):
            for kw in range(n_kw):
                i_d, i_h, i_w = row_d[kd], row_h[kh], row_w[kw]
                if i_d < 0 or i_h < 0 or i_w < 0:
                    continue
                x_off = i_d * strides[1] + i_h * strides[2] + i_w * strides[3]
                w_off = ((kd * n_kh + kh) * n_kw + kw) * cin_g * width
                last = count - 1
                if (count > 0 and taps[last, 0] + taps[last, 2] * spread == x_off
                        and taps[last, 1] + taps[last, 2] * width == w_off):
                    taps[last, 2] += cin_g
                else:
                    taps[count, 0], taps[count, 1], taps[count, 2] = x_off, w_off, cin_g
                    count += 1
    return count
