"""Register-blocked convolution: the micro-kernels of `microkernel` over runs of output pixels.

Work items are (output row (n, od, oh), group, block of V * LANES output channels), split across
threads. Along W the output pixels of a row fall into `q` residue classes (q = lhs / gcd(stride, lhs),
1 without input dilation): inside a class, consecutive pixels read inputs `x_step` pixels apart through
the same kernel taps, so input dilation skips its zeros for free. A class splits into runs of pixels
with the same valid taps (the interior, and single pixels near a padded edge); each run gets a tap
list of (x offset, packed-weight offset, length), with consecutive taps merged into one longer
reduction where x and the packed weights both continue (a dense stride-1 row reduces KW * Cin at once,
which is what makes Cin = 1 or 3 fast), and is computed in blocks of as many pixels as the
micro-kernel holds.

Dense and grouped convolutions broadcast one input value against V weight vectors (`fma_tile`);
depthwise ones multiply input and weight vectors lane by lane (`fma_channels`).
"""
from math import gcd

import numpy as np
from numba import njit, prange

from nbconv.config import CACHE
from nbconv.cpu.microkernel import MAX_PIXELS, fma_channels, fma_tile, lanes, pixel_block


def conv3d(x, w, bias, geometry, tables, out):
    """Dense and grouped: blocks of up to 4 vectors of one group's output channels."""
    width = lanes(x.dtype)
    cout_g = geometry.out_channels // geometry.groups
    vectors = min(4, -(-cout_g // width))
    packed = pack_weights(w, geometry.groups, vectors * width)
    _run(x, packed, _pad_bias(bias, geometry.groups, packed.shape[1] * packed.shape[4]), tables, out,
         geometry, vectors, False)


def depthwise_fits(geometry, dtype):
    """Depthwise with whole vectors of channels: every vector load of x stays inside its pixel."""
    return (geometry.in_channels == geometry.out_channels == geometry.groups
            and geometry.out_channels % lanes(dtype) == 0)


def conv3d_depthwise(x, w, bias, geometry, tables, out):
    """Depthwise (see `depthwise_fits`): channel vectors multiplied lane by lane."""
    channels = geometry.out_channels
    per_vector = channels // lanes(x.dtype)
    vectors = max(v for v in (4, 3, 2, 1) if per_vector % v == 0)
    block = vectors * lanes(x.dtype)
    # As one group of `channels` output channels in blocks of `block`: (1, blocks, taps, 1, block).
    packed = w.reshape(-1, channels // block, block).transpose(1, 0, 2)
    packed = np.ascontiguousarray(packed)[None, :, :, None]
    _run(x, packed, bias.reshape(1, -1), tables, out, geometry, vectors, True)


def _run(x, packed, bias, tables, out, geometry, vectors, depthwise):
    stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
    q = lhs // gcd(stride, lhs)
    # V travels as the type of a tuple of V zeros, so that each V compiles only its own micro-kernels.
    _conv_blocked(x, packed, bias, *tables, out, q, q * stride // lhs, (0,) * vectors, depthwise)


def pack_weights(w, groups, width):
    """(KD, KH, KW, Cin_g, Cout) -> (groups, channel blocks, taps, Cin_g, width), zero-padded: the
    micro-kernel reads `width` output channels of one (tap, input channel) as contiguous vectors."""
    *kernel, cin_g, cout = w.shape
    cout_g = cout // groups
    blocks = -(-cout_g // width)
    taps = int(np.prod(kernel))
    padded = np.zeros((taps, cin_g, groups, blocks * width), w.dtype)
    padded[..., :cout_g] = w.reshape(taps, cin_g, groups, cout_g)
    return np.ascontiguousarray(padded.reshape(taps, cin_g, groups, blocks, width).transpose(2, 3, 0, 1, 4))


def _pad_bias(bias, groups, padded):
    """(groups * Cout_g,) -> (groups, padded) with zeros: every vector the micro-kernel reads exists."""
    out = np.zeros((groups, padded), bias.dtype)
    out[:, :bias.size // groups] = bias.reshape(groups, -1)
    return out


@njit(parallel=True, error_model="numpy", cache=CACHE)
def _conv_blocked(x, packed, bias, idx_d, idx_h, idx_w, out, q, x_step, vectors, depthwise):
    """One output row (n, od, oh) per task; per run of pixels one tap list, shared by every group
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
                used = _tap_list(taps, idx_d[od], idx_h[oh], idx_w[r + q * j], strides, cin_g, width)
                # The run's first output pixel (flat) and its image in x: the tap offsets lead from there.
                first = (((n * n_od + od) * n_oh + oh) * n_ow + r + q * j, n * strides[0])
                _run_blocks(x, packed, bias, out, taps[:used], tile, first, end - j, q, x_step * strides[3],
                            vectors, depthwise)
                j = end


@njit(inline="always")
def _run_blocks(x, packed, bias, out, taps, tile, first, count, q, x_step, vectors, depthwise):
    """`count` output pixels, q apart from flat pixel first[0] (reading x from first[1]), for every
    group and channel block, in micro-kernel calls of as many pixels as each holds."""
    groups, blocks, n_taps, cin_g, width = packed.shape
    cout = out.shape[-1]
    cout_g = cout // groups
    flat_x, flat_w, flat_y, flat_b = x.reshape(-1), packed.reshape(-1), out.reshape(-1), bias.reshape(-1)
    for group in range(groups):
        for block in range(blocks):
            c_first = block * width if depthwise else group * cout_g + block * width
            c_count = min(width, cout - c_first) if depthwise else min(width, cout_g - block * width)
            x_base = first[1] + (c_first if depthwise else group * cin_g)
            w_base = (group * blocks + block) * n_taps * cin_g * width
            b_base = (group * blocks + block) * width
            # A partial channel block goes through `tile`: a full vector store would spill into the
            # next group's channels or past the end of `out`.
            full = c_count == width
            p = 0
            while p < count:
                pixels = pixel_block(len(vectors), count - p)
                x_at = x_base + p * x_step
                y_at = (first[0] + q * p) * cout + c_first
                y, y_base, y_step = (flat_y, y_at, q * cout) if full else (tile, 0, width)
                if depthwise:
                    fma_channels(vectors, pixels, flat_x, x_at, x_step, taps, flat_w, w_base, y, y_base, y_step,
                                 flat_b, b_base)
                else:
                    fma_tile(vectors, pixels, flat_x, x_at, x_step, taps, flat_w, w_base, y, y_base, y_step,
                             flat_b, b_base)
                if not full:
                    for i in range(pixels):
                        at = y_at + i * q * cout
                        flat_y[at:at + c_count] = tile[i * width:i * width + c_count]
                p += pixels


@njit(inline="always")
def _same_taps(idx_w, a, b):
    for k in range(idx_w.shape[1]):
        if (idx_w[a, k] >= 0) != (idx_w[b, k] >= 0):
            return False
    return True


@njit(inline="always")
def _tap_list(taps, row_d, row_h, row_w, strides, cin_g, width):
    """Fill taps[:count] with (x offset, packed-weight offset, length) of every valid tap for one
    output pixel, merging a tap into the previous one where both offsets continue; -> count.
    (Depthwise rows never merge: their pixels are a whole number of vectors, >= 8 channels, apart.)"""
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
                if (count > 0 and taps[last, 0] + taps[last, 2] == x_off
                        and taps[last, 1] + taps[last, 2] * width == w_off):
                    taps[last, 2] += cin_g
                else:
                    taps[count, 0], taps[count, 1], taps[count, 2] = x_off, w_off, cin_g
                    count += 1
    return count
