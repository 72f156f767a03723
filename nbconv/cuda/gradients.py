"""conv3d's vector-Jacobian product on the device (docs/gradients.md): dx on the forward kernels, its
flipped kernel made by a device kernel; dw on the weight-gradient kernels; dbias a column sum. Every
re-layout and cast is a device kernel, so device operands never visit the host.

The weight gradient and the bias sum reduce over every output pixel into a small result. Their grids
split that reduction (`splits`) until they have WAVES blocks for every multiprocessor, each split
writing its own partial result; `sum_splits` adds them in a fixed order, so a result does not depend
on which block finished first.
"""
from math import prod

import numpy as np
from numba import cuda

from nbconv.call import ConvCall, validate
from nbconv.cuda import kernels as k
from nbconv.cuda.launch import (
    COPY,
    RELAYOUT_BLOCK,
    canonical_input,
    channel_tiles,
    choose_kernel,
    convolve,
    device_result,
    device_tables,
    relayout,
    to_device,
)

WAVES = 4  # blocks per multiprocessor that a split reduction aims for
MIN_SPLIT_STEPS = 4  # reduction steps (KC pixels, output lines, rows) a split keeps at least


def vjp(call: ConvCall, x, w, dy, wanted, compute, cotangents, on_device):
    """(dx, dw, dbias) of `call` for the names in `wanted`, None for the others, computed in `compute`.
    `cotangents` maps each name to the (shape, dtype) of its result: device arrays `on_device`, else
    NumPy arrays."""
    geometry = call.geometry
    dy5 = canonical_input(dy, call, compute)
    results = {}
    if "x" in wanted:
        results["x"] = _dx(dy5, to_device(w, compute), call, cotangents["x"][1])
    if "w" in wanted:
        dw = _dw(canonical_input(x, call, compute), dy5, geometry)
        results["w"] = _cast(dw, cotangents["w"][1])
    if "bias" in wanted:
        shape, dtype = cotangents["bias"]
        n, od, oh, ow, cout = dy5.shape
        results["bias"] = _cast(_column_sums(dy5.reshape(n * od * oh * ow, cout)), dtype).reshape(*shape)
    grads = tuple(results.get(name) for name in ("x", "w", "bias"))
    if on_device:
        return grads
    return tuple(None if a is None else a.copy_to_host() for a in grads)


def _dx(dy5, w, call, dtype):
    g = call.geometry
    x_shape = (g.batch, *g.in_spatial, g.in_channels)
    if g.flops == 0:  # no product reaches x (an empty result, no channels): zeros, as JAX's
        return device_result(cuda.to_device(np.zeros(x_shape, w.dtype)), call, None, dtype)
    flipped = cuda.device_array((*g.kernel, g.out_channels // g.groups, g.in_channels), w.dtype)
    k.flip_swap[-(-flipped.size // RELAYOUT_BLOCK), RELAYOUT_BLOCK](w, flipped, g.groups)
    options = g.input_gradient_options()
    dx_call = validate(dy5, flipped, None, (options["stride"], options["padding"], options["lhs_dilation"],
                                            options["rhs_dilation"], options["groups"], False))
    return device_result(convolve(dx_call, dy5, flipped, None, None), call, None, dtype)


def _dw(x5, dy5, g):
    """The (KD, KH, KW, Cin / groups, Cout) weight gradient in the compute dtype."""
    cin_g, cout = g.in_channels // g.groups, g.out_channels
    if g.flops == 0:
        return cuda.to_device(np.zeros((*g.kernel, cin_g, cout), dy5.dtype))
    dw = cuda.device_array((*g.kernel, cin_g, cout), dy5.dtype)
    rows = prod(g.kernel) * cin_g
    kernels = k.KERNELS[8 * dy5.dtype.itemsize]
    n, od, oh, ow, _ = dy5.shape
    if choose_kernel(g) == "tiled":
        blocks = (-(-rows // k.TILE_P), channel_tiles(g))
        splits = _splits(blocks[0] * blocks[1], n * od * oh * ow // k.KC)
        launch = kernels.weight_grad_tiled[(*blocks, splits), (k.THREADS_X, k.THREADS_Y)]
    else:
        blocks = -(-rows * cout // k.CHANNEL_BLOCK)
        splits = _splits(blocks, n * od * oh)
        launch = kernels.weight_grad_channels[(blocks, splits), k.CHANNEL_BLOCK]
    partial = dw.reshape(1, rows, cout) if splits == 1 else cuda.device_array((splits, rows, cout), dw.dtype)
    launch(x5, dy5.reshape(-1, cout), *device_tables(g), partial)
    if splits > 1:
        _sum_splits(partial, dw.reshape(rows, cout))
    return dw


def _column_sums(a):
    """a.sum(axis=0) of a (rows, columns) device array, as (columns,)."""
    rows, cols = a.shape
    if not a.size:  # no block to launch: a sum over nothing is 0
        return cuda.to_device(np.zeros(cols, a.dtype))
    total = cuda.device_array((1, cols), a.dtype)
    blocks = -(-cols // k.CHANNEL_BLOCK)
    splits = _splits(blocks, rows // 256)
    partial = total.reshape(1, 1, cols) if splits == 1 else cuda.device_array((splits, 1, cols), a.dtype)
    k.KERNELS[8 * a.dtype.itemsize].column_sums[(blocks, splits), k.CHANNEL_BLOCK](a, partial)
    if splits > 1:
        _sum_splits(partial, total)
    return total.reshape(cols)


def _sum_splits(partial, out):
    k.KERNELS[8 * out.dtype.itemsize].sum_splits[-(-out.size // RELAYOUT_BLOCK), RELAYOUT_BLOCK](partial, out)


def _splits(blocks, steps):
    """How many parts to split a reduction of `steps` steps over, for a grid of `blocks` blocks."""
    wanted = -(-WAVES * multiprocessors() // blocks)
    return max(1, min(wanted, steps // MIN_SPLIT_STEPS))


def multiprocessors():
    """The current GPU's multiprocessor count (the simulator has none: 1)."""
    return getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)


def _cast(a, dtype):
    """A device array in `dtype`, through the re-layout kernel on a 5-D view."""
    if np.dtype(a.dtype) == dtype:
        return a
    out = cuda.device_array(a.shape, dtype)
    view = (1,) * (5 - a.ndim) + a.shape
    relayout(a.reshape(*view), out.reshape(*view), COPY)
    return out
