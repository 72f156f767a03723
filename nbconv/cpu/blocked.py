"""Register-blocked convolution: the micro-kernel (`fma_tile`) over runs of output pixels.

Work items are (output row (n, od, oh), group, block of V * LANES output channels), split across
threads. Along W the output pixels of a row fall into `q` residue classes (q = lhs / gcd(stride, lhs),
1 without input dilation): inside a class, consecutive pixels read inputs `x_step` apart through the
same kernel taps, so input dilation skips its zeros for free. A class splits into runs of pixels with
the same valid taps (the interior, and single pixels near a padded edge); each run gets a tap list of
(x offset, packed-weight offset, length), consecutive taps merged into one longer reduction where x
and the packed weights both continue (dense stride-1 rows: KW * Cin at once, which helps Cin = 1 or 3),
and is computed P pixels at a time, the remainder one by one.
"""
from math import gcd

import numpy as np
from numba import njit, prange

from nbconv.config import CACHE
from nbconv.cpu.microkernel import fma_tile, lanes

def vectors_for(geometry, dtype):
    """Vectors of output channels per work item: enough for the group, at most 4."""
    cout_g = geometry.out_channels // geometry.groups
    return min(4, -(-cout_g // lanes(np.dtype(dtype))))


def conv3d(x, w, bias, geometry, tables, out):
    v = vectors_for(geometry, x.dtype)
    packed = pack_weights(w, geometry.groups, v * lanes(x.dtype))
    stride, lhs = geometry.stride[2], geometry.lhs_dilation[2]
    q = lhs // gcd(stride, lhs)
    _conv_blocked(x, packed, bias, *tables, out, q, q * stride // lhs, v)


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


@njit(parallel=True, error_model="numpy", cache=CACHE)
def _conv_blocked(x, packed, bias, idx_d, idx_h, idx_w, out, q, x_step, vectors):
    pixels = _pixels(vectors)
    n_batch, n_od, n_oh, n_ow, cout = out.shape
    groups, blocks, n_taps, cin_g, width = packed.shape
    cout_g = cout // groups
    flat_x = x.reshape(-1)
    flat_w = packed.reshape(-1)
    strides = (x.shape[1] * x.shape[2] * x.shape[3] * x.shape[4], x.shape[2] * x.shape[3] * x.shape[4],
               x.shape[3] * x.shape[4], x.shape[4])
    for task in prange(n_batch * n_od * n_oh * groups * blocks):
        block = task % blocks
        group = (task // blocks) % groups
        row = task // (blocks * groups)
        n, od, oh = row // (n_od * n_oh), (row // n_oh) % n_od, row % n_oh
        tile = np.empty(pixels * width, out.dtype)
        taps = np.empty((n_taps, 3), np.int64)
        x_base = n * strides[0] + group * cin_g
        w_base = (group * blocks + block) * n_taps * cin_g * width
        c_first = group * cout_g + block * width
        c_count = min(width, cout_g - block * width)
        y = out[n, od, oh]
        for r in range(q):
            count = (n_ow - r + q - 1) // q
            j = 0
            while j < count:
                end = j + 1
                while end < count and _same_taps(idx_w, r + q * j, r + q * end):
                    end += 1
                used = _tap_list(taps, idx_d[od], idx_h[oh], idx_w[r + q * j], strides, cin_g, width)
                tap_list = taps[:used]
                p = j
                while p + pixels <= end:
                    _fma_tile(True, vectors, flat_x, x_base + (p - j) * x_step * strides[3], x_step * strides[3],
                              tap_list, flat_w, w_base, tile)
                    _store(y, tile, pixels, r + q * p, q, width, c_first, c_count, bias)
                    p += pixels
                while p < end:
                    _fma_tile(False, vectors, flat_x, x_base + (p - j) * x_step * strides[3], 0, tap_list, flat_w,
                              w_base, tile)
                    _store(y, tile, 1, r + q * p, q, width, c_first, c_count, bias)
                    p += 1
                j = end


@njit(inline="always")
def _pixels(vectors):
    """Output pixels per micro-kernel call for V vectors of output channels: the P * V accumulators
    and V weight vectors must fit in the 32 vector registers."""
    return 16 if vectors == 1 else 12 if vectors == 2 else 8 if vectors == 3 else 6


@njit(inline="always")
def _fma_tile(block, vectors, x, x_base, x_step, taps, w, w_base, tile):
    """fma_tile for a run-time V, over a block of _pixels(V) pixels or a single one: the literal
    arguments the intrinsic needs, chosen by a branch (Numba's `literally` would re-dispatch on every
    call of the caller, at milliseconds each)."""
    if vectors == 1:
        if block:
            fma_tile(16, 1, x, x_base, x_step, taps, w, w_base, tile)
        else:
            fma_tile(1, 1, x, x_base, x_step, taps, w, w_base, tile)
    elif vectors == 2:
        if block:
            fma_tile(12, 2, x, x_base, x_step, taps, w, w_base, tile)
        else:
            fma_tile(1, 2, x, x_base, x_step, taps, w, w_base, tile)
    elif vectors == 3:
        if block:
            fma_tile(8, 3, x, x_base, x_step, taps, w, w_base, tile)
        else:
            fma_tile(1, 3, x, x_base, x_step, taps, w, w_base, tile)
    else:
        if block:
            fma_tile(6, 4, x, x_base, x_step, taps, w, w_base, tile)
        else:
            fma_tile(1, 4, x, x_base, x_step, taps, w, w_base, tile)


@njit(inline="always")
def _same_taps(idx_w, a, b):
    for k in range(idx_w.shape[1]):
        if (idx_w[a, k] >= 0) != (idx_w[b, k] >= 0):
            return False
    return True


@njit(inline="always")
def _tap_list(taps, row_d, row_h, row_w, strides, cin_g, width):
    """Fill taps[:count] with (x offset, packed-weight offset, length) of every valid tap for one
    output pixel, merging a tap into the previous one where both offsets continue; -> count."""
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


@njit(inline="always")
def _store(y, tile, pixels, ow_first, q, width, c_first, c_count, bias):
    for p in range(pixels):
        for c in range(c_count):
            y[ow_first + q * p, c_first + c] = tile[p * width + c] + bias[c_first + c]
