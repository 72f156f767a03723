"""General direct convolution: any stride, padding, dilation and groups, driven by tap tables; the
fallback for what the register-blocked kernel does not take (a few output channels per vector).

The tables (``ConvGeometry.tap_index``) map an output index and a kernel tap to the input index it
reads, or -1 for padding and for zeros inserted by input dilation; those taps are skipped, which is
also how ``jax.lax.conv_general_dilated`` treats a NaN weight over padding. Arrays are channels-last
and C-contiguous; the output rows are accumulated in place, so no buffer beyond the output is used.
"""
from numba import njit, prange

from nbconv.config import CACHE, FASTMATH
from nbconv.cpu import parallel


@parallel.kernel(fastmath=FASTMATH, error_model="numpy", cache=CACHE)
def conv_grouped(x, w, bias, idx_d, idx_h, idx_w, out, first, end):
    """Output rows (n, od, oh) first... end - 1, flat; output channels innermost within each group:
    vectorises when a group has many of them."""
    _, n_od, n_oh, n_ow, cout = out.shape
    n_kd, n_kh, n_kw, cin_g, _ = w.shape
    groups = x.shape[4] // cin_g
    cout_g = cout // groups
    for row in prange(first, end):
        n, od, oh = _row_position(row, n_od, n_oh)
        y = out[n, od, oh]
        _fill_bias(y, bias)
        for kd in range(n_kd):
            i_d = idx_d[od, kd]
            for kh in range(n_kh):
                i_h = idx_h[oh, kh]
                if i_d < 0 or i_h < 0:
                    continue
                xr = x[n, i_d, i_h]
                wk = w[kd, kh]
                for ow in range(n_ow):
                    for kw in range(n_kw):
                        i_w = idx_w[ow, kw]
                        if i_w < 0:
                            continue
                        for g in range(groups):
                            for ci in range(cin_g):
                                xv = xr[i_w, g * cin_g + ci]
                                for co in range(g * cout_g, (g + 1) * cout_g):
                                    y[ow, co] += xv * wk[kw, ci, co]


@njit(inline="always")
def _row_position(row, n_od, n_oh):
    per_image = n_od * n_oh
    rest = row % per_image
    return row // per_image, rest // n_oh, rest % n_oh


@njit(inline="always")
def _fill_bias(y, bias):
    for ow in range(y.shape[0]):
        y[ow, :] = bias
