"""`conv_general_dilated` and `conv3d` for JAX arrays.

Their arguments in the kernels' terms (channels-last x, DHWIO w, explicit pads), and the
differentiable convolution (`nbconv.jax.convolution`) between two transposes where the layout asks
for them.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nbconv.call import Array, Ints, Padding, validate
from nbconv.jax.convolution import convolve
from nbconv.lifting import Lift

# The dtypes the kernels compute in; the others fall back to XLA (conv_general_dilated) or are
# computed in float32 (conv3d's float16 and bfloat16).
NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Ints, padding: Padding,
                         lhs_dilation: Ints | None = None, rhs_dilation: Ints | None = None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
    """``jax.lax.conv_general_dilated`` with 1, 2 or 3 spatial axes, computed by nbconv's CPU kernels.

    The same signature, results, errors and dtype rules as ``jax.lax.conv_general_dilated``, under
    ``jax.jit``, ``jax.grad`` / ``jax.vjp``, ``jax.vmap`` and ``jax.lax.scan``. Every layout that
    ``dimension_numbers`` can name is taken: channels-last ones (NWC / WIO, NHWC / HWIO, NDHWC /
    DHWIO) run without a copy, the others through XLA transposes; 1-D and 2-D calls run as 3-D ones
    with unit axes (`nbconv.lifting`). The kernels compute every product exactly in the operands' dtype, so
    ``precision`` (which asks XLA for at least some precision) needs nothing more.

    Where the kernels do not apply, this is ``jax.lax.conv_general_dilated`` itself, with the
    same arguments: ``lhs`` of rank 6 or more, ``batch_group_count > 1``, dtypes other than
    float32 and float64 (integers, complex, float16, bfloat16) or ``lhs`` and ``rhs`` of different
    dtypes (JAX's own error), a ``preferred_element_type`` other than the operands' dtype, or a
    default JAX backend other than the CPU.

    Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) and gradients of
    gradients are not available: the gradients come from a ``jax.custom_vjp``.

    Parameters
    ----------
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count
        As in ``jax.lax.conv_general_dilated``.
    batch_group_count, precision, preferred_element_type
        As in ``jax.lax.conv_general_dilated`` (see above for the values that fall back to it).

    Returns
    -------
    jax.Array
        The result, laid out as ``dimension_numbers`` says.

    Raises
    ------
    ValueError, TypeError
        Whatever ``jax.lax.conv_general_dilated`` raises for the same arguments.
    """
    lax_args = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, precision, preferred_element_type)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    if not _runs_on_kernels(lhs, rhs, batch_group_count, preferred_element_type):
        return lax.conv_general_dilated(lhs, rhs, *lax_args)
    plan = _planned(lhs, rhs, lax_args)
    x = _transpose(lhs, plan.lhs_order).reshape(plan.lifted[0])
    w = _transpose(rhs, plan.rhs_order).reshape(plan.lifted[1])
    return _transpose(convolve(x, w, None, plan.options).reshape(plan.lifted[2]), plan.out_order)


def _runs_on_kernels(lhs, rhs, batch_group_count, preferred_element_type):
    return (3 <= lhs.ndim <= 5 and batch_group_count == 1 and lhs.dtype == rhs.dtype and lhs.dtype in NATIVE
            and (preferred_element_type is None or np.dtype(preferred_element_type) == lhs.dtype)
            and jax.default_backend() == "cpu")


def _planned(lhs, rhs, lax_args):
    """Plan a call, once per sizes, dtype and arguments.

    First ``jax.eval_shape`` of ``lax.conv_general_dilated`` itself checks them, so the errors are
    JAX's own.
    """
    key = (lhs.shape, rhs.shape, lhs.dtype, _key(lax_args))
    plan = _plans.get(key)
    if plan is None:
        jax.eval_shape(lambda a, b: lax.conv_general_dilated(a, b, *lax_args),
                       jax.ShapeDtypeStruct(lhs.shape, lhs.dtype), jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        plan = _plans[key] = _plan(lhs.shape, rhs.shape, lhs.dtype, lax_args)
    return plan


_plans = {}
MAX_PLANS = 256


def _key(value):
    """Make a hashable stand-in for an argument.

    Lists and tuples stay apart (JAX refuses some of one where it takes the other), arrays become
    their values, and a ``ConvDimensionNumbers`` (a named tuple) stays as it is.
    """
    if type(value) in (list, tuple):
        return type(value), tuple(_key(v) for v in value)
    if hasattr(value, "__array__"):
        array = np.asarray(value)
        return np.ndarray, array.shape, tuple(array.ravel().tolist())
    return value


class _Plan(NamedTuple):
    """How one conv_general_dilated call runs on the kernels.

    The transposes into channels-last x and (D)HWIO w and out of the channels-last result (None where
    none is needed); the shapes of x and w with 3 spatial axes and of the result with the caller's
    (`nbconv.lifting`); and the kernels' options.
    """

    lhs_order: tuple | None
    rhs_order: tuple | None
    out_order: tuple | None
    lifted: tuple
    options: tuple


def _plan(lhs_shape, rhs_shape, dtype, lax_args):
    """Plan a call that JAX has checked."""
    (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, *_) = lax_args
    count = len(lhs_shape) - 2  # spatial axes
    lhs_spec, rhs_spec, out_spec = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    lhs_order = (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])  # -> N, (D, H,) W, C
    rhs_order = (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])  # -> (D, H,) W, I, O
    # The result's axis j holds the logical axis out_spec.index(j): batch, feature or spatial i,
    # which the kernels' channels-last result holds at 0, count + 1 and 1 + i.
    kernel_axis = (0, count + 1, *range(1, count + 1))
    out_order = tuple(kernel_axis[out_spec.index(j)] for j in range(count + 2))
    window_strides, lhs_dilation, rhs_dilation = (tuple(map(int, v)) if v is not None else (1,) * count
                                                  for v in (window_strides, lhs_dilation, rhs_dilation))
    if isinstance(padding, str):
        kernel = [(rhs_shape[axis] - 1) * r + 1 for axis, r in zip(rhs_spec[2:], rhs_dilation)]
        padding = lax.padtype_to_pads([lhs_shape[axis] for axis in lhs_spec[2:]], kernel, window_strides, padding)
    lift = Lift(count, False)
    x_shape, w_shape = (lift.image(tuple(lhs_shape[a] for a in lhs_order), True),
                        lift.kernel(tuple(rhs_shape[a] for a in rhs_order)))
    options = lift.options(window_strides, tuple((int(lo), int(hi)) for lo, hi in padding), lhs_dilation,
                           rhs_dilation)
    call = validate(jax.ShapeDtypeStruct(x_shape, dtype), jax.ShapeDtypeStruct(w_shape, dtype), None,
                    (*options, int(feature_group_count), False))
    orders = (None if order == tuple(range(count + 2)) else order for order in (lhs_order, rhs_order, out_order))
    lifted = (x_shape, w_shape, lift.lower_image(call.result_shape, True))
    return _Plan(*orders, lifted=lifted, options=_options(call.geometry))


def _transpose(a, order):
    return a if order is None else jnp.transpose(a, order)


def _options(geometry):
    """Return a validated geometry's options, as `nbconv.jax.primitives` takes them."""
    return geometry.stride, geometry.pads, geometry.lhs_dilation, geometry.rhs_dilation, geometry.groups


def conv3d(x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "SAME", lhs_dilation: Ints = 1,
           rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None,
           channel_first: bool = False) -> jax.Array:
    """`nbconv.conv3d` for JAX arrays, under ``jax.jit``, ``jax.grad``, ``jax.vmap`` and ``jax.lax.scan``.

    The options and results of `nbconv.conv3d` (so ``"SAME"`` with ``lhs_dilation > 1`` too), with
    JAX's dtype promotion: mixed operands promote as ``jnp.result_type`` says, integers and bools
    compute in JAX's default float (float64 under ``jax_enable_x64``, else float32), float16 and
    bfloat16 in float32, returned in their own dtype. Where JAX's default backend is not the CPU,
    the same convolution runs on ``jax.lax.conv_general_dilated``.

    Parameters
    ----------
    x, w, stride, padding, lhs_dilation, rhs_dilation, groups, bias, channel_first
        As in `nbconv.conv3d`; the arrays are JAX arrays or anything ``jnp.asarray`` takes.

    Returns
    -------
    jax.Array
        As `nbconv.conv3d` gives it.

    Raises
    ------
    ValueError
        A shape or option that does not fit, named in the message.
    TypeError
        A complex or non-numeric dtype.
    """
    operands = [jnp.asarray(a) for a in (x, w) + (() if bias is None else (bias,))]
    result = jnp.result_type(*operands)
    if not (jnp.issubdtype(result, jnp.integer) or jnp.issubdtype(result, jnp.floating) or result == jnp.bool_):
        raise TypeError(f"conv3d takes real numbers, got the dtypes {[str(a.dtype) for a in operands]}")
    if not jnp.issubdtype(result, jnp.floating):
        result = jax.dtypes.canonicalize_dtype(np.float64)
    compute = np.dtype(result) if np.dtype(result) in NATIVE else np.dtype(np.float32)
    x, w, *bias = (a.astype(compute) for a in operands)
    call = validate(x, w, bias[0] if bias else None,
                    (stride, padding, lhs_dilation, rhs_dilation, groups, channel_first))
    x5 = x if call.batched else x[None]
    x5 = jnp.moveaxis(x5, 1, -1) if call.channel_first else x5
    bias = bias[0].reshape(-1) if bias else None
    if jax.default_backend() == "cpu":
        y = convolve(x5, w, bias, _options(call.geometry))
    else:  # the same convolution on the default backend's own (explicit pads keep nbconv's "SAME")
        y = _on_lax(x5, w, bias, call.geometry)
    y = jnp.moveaxis(y, -1, 1) if call.channel_first else y
    return (y if call.batched else y[0]).astype(result)


def _on_lax(x5, w, bias, geometry):
    """conv(x5, w) + bias on ``jax.lax.conv_general_dilated``: channels-last, the call's pads."""
    y = lax.conv_general_dilated(x5, w, geometry.stride, geometry.pads, lhs_dilation=geometry.lhs_dilation,
                                 rhs_dilation=geometry.rhs_dilation, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                 feature_group_count=geometry.groups, precision=lax.Precision.HIGHEST)
    return y if bias is None else y + bias
