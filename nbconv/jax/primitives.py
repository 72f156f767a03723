"""Two JAX primitives that run nbconv's CPU kernels on the host, from inside XLA programs.

- ``convolution_p(x, w[, bias]) -> (y,)``: channels-last ``x`` (N, D, H, W, Cin), DHWIO ``w``,
  ``bias`` (Cout,), all of one float dtype.
- ``convolution_vjp_p(x, w, dy) -> (dx, dw)``, only those named in ``wrt``: `nbconv.conv3d_vjp`.

Their ``options`` are a validated call's geometry: ``(stride, pads, lhs_dilation, rhs_dilation,
groups)``, each a tuple, so that they are hashable parameters of the jaxpr.

Each lowers to a call of the FFI target of `nbconv.jax.ffi`, whose host function fills XLA's result
buffers (the convolution writes straight into its own, the vjp copies dx and dw in); outside ``jit``
they run on NumPy views of the operands.

Batching (``jax.vmap``) folds the mapped axis into the batch where the weights are shared, and into
the groups where they are mapped too (per-example weights or gradients): one kernel call either way.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from nbconv.call import validate
from nbconv.dispatch import backend_module
from nbconv.geometry import conv_geometry
from nbconv.gradients import conv3d_vjp
from nbconv.jax import ffi

convolution_p = Primitive("nbconv_convolution")
convolution_p.multiple_results = True
convolution_vjp_p = Primitive("nbconv_convolution_vjp")
convolution_vjp_p.multiple_results = True


def geometry(x_shape, w_shape, options):
    stride, pads, lhs_dilation, rhs_dilation, groups = options
    return conv_geometry(tuple(x_shape), tuple(w_shape), stride=stride, padding=pads, lhs_dilation=lhs_dilation,
                         rhs_dilation=rhs_dilation, groups=groups, channel_first=False)


# -- what a call computes: on the host into the result arrays, and its shapes for tracing -----------

def _convolution_host(options):
    def run(operands, results):
        x, w, *bias = operands
        bias = bias[0] if bias else None
        call = validate(x, w, bias, (*options, False))
        backend_module("cpu").convolve(call, x, w, bias, results[0])  # writes into results[0]
    return run


def _vjp_host(options, wrt):
    stride, pads, lhs_dilation, rhs_dilation, groups = options

    def run(operands, results):
        grads = conv3d_vjp(*operands, stride=stride, padding=pads, lhs_dilation=lhs_dilation,
                           rhs_dilation=rhs_dilation, groups=groups, wrt=wrt, backend="cpu")
        for result, grad in zip(results, (g for g in grads if g is not None)):
            result[...] = grad
    return run


def _convolution_shapes(x, w, *bias, options):
    return [ShapedArray(geometry(x.shape, w.shape, options).out_shape, x.dtype)]


def _vjp_shapes(x, w, dy, *, options, wrt):
    return [ShapedArray(a.shape, a.dtype) for name, a in (("x", x), ("w", w)) if name in wrt]


def _eager(host, shapes):
    """Run a primitive outside jit: the host function on NumPy views of the operands."""
    def impl(*operands, **params):
        results = [np.empty(a.shape, a.dtype) for a in shapes(*operands, **params)]
        host(**params)([np.asarray(a) for a in operands], results)
        return [jnp.asarray(r) for r in results]
    return impl


def _lowering(host):
    def lower(ctx, *operands, **params):
        key = (host.__name__, *sorted(params.items()))
        call = ffi.index(key, lambda: host(**params))
        return jax.ffi.ffi_lowering(ffi.TARGET)(ctx, *operands, index=np.int64(call))
    return lower


convolution_p.def_abstract_eval(_convolution_shapes)
convolution_p.def_impl(_eager(_convolution_host, _convolution_shapes))
mlir.register_lowering(convolution_p, _lowering(_convolution_host), platform="cpu")
convolution_vjp_p.def_abstract_eval(_vjp_shapes)
convolution_vjp_p.def_impl(_eager(_vjp_host, _vjp_shapes))
mlir.register_lowering(convolution_vjp_p, _lowering(_vjp_host), platform="cpu")


# -- vmap ---------------------------------------------------------------------------------------------

def _leading(a, dim, size):
    """`a` with its mapped axis first; an unmapped `a` repeated `size` times along a new first axis."""
    return jnp.broadcast_to(a, (size, *a.shape)) if dim is None else jnp.moveaxis(a, dim, 0)


def _fold_batch(a):
    """(B, N, ...) -> (B * N, ...): a free reshape."""
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def _channels_into_groups(a):
    """(B, ..., C) -> (..., B * C): the mapped axis becomes B blocks of channels, one per group set."""
    moved = jnp.moveaxis(a, 0, -2)
    return moved.reshape(*moved.shape[:-2], moved.shape[-2] * moved.shape[-1])


def _groups_into_mapped(a, size):
    """The inverse of `_channels_into_groups`: (..., B * C) -> (B, ..., C)."""
    return jnp.moveaxis(a.reshape(*a.shape[:-1], size, a.shape[-1] // size), -2, 0)


def _grouped(options, size):
    """The options of B independent convolutions side by side: B times the groups."""
    return (*options[:4], options[4] * size)


def _batch_convolution(operands, dims, *, options):
    size = next(a.shape[d] for a, d in zip(operands, dims) if d is not None)
    (x, w, *bias), (x_dim, w_dim, *bias_dim) = operands, dims
    if w_dim is None and all(d is None for d in bias_dim):  # shared weights: B * N samples
        x = _leading(x, x_dim, size)
        (y,) = convolution_p.bind(_fold_batch(x), w, *bias, options=options)
        return [y.reshape(size, x.shape[1], *y.shape[1:])], [0]
    x, w, *bias = (_channels_into_groups(_leading(a, d, size)) for a, d in zip(operands, dims))
    (y,) = convolution_p.bind(x, w, *bias, options=_grouped(options, size))
    return [_groups_into_mapped(y, size)], [0]


def _batch_vjp(operands, dims, *, options, wrt):
    size = next(a.shape[d] for a, d in zip(operands, dims) if d is not None)
    (x, w, dy), (x_dim, w_dim, dy_dim) = operands, dims
    if w_dim is None and "w" not in wrt:  # dx alone with shared weights: B * N samples
        x, dy = _leading(x, x_dim, size), _leading(dy, dy_dim, size)
        (dx,) = convolution_vjp_p.bind(_fold_batch(x), w, _fold_batch(dy), options=options, wrt=wrt)
        return [dx.reshape(x.shape)], [0]
    x, w, dy = (_channels_into_groups(_leading(a, d, size)) for a, d in zip(operands, dims))
    grads = convolution_vjp_p.bind(x, w, dy, options=_grouped(options, size), wrt=wrt)
    return [_groups_into_mapped(g, size) for g in grads], [0] * len(grads)


batching.primitive_batchers[convolution_p] = _batch_convolution
batching.primitive_batchers[convolution_vjp_p] = _batch_vjp
