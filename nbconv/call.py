"""What every front shares: the validated call, the kinds of array a call meets, the layout
converters and the argument checks.

The fronts (`functional`, `gradients`, `layers`, `chunked`) validate a call here once, and every
backend takes the resulting `ConvCall` with arrays in the kernels' layout (channels-last, batched).
"""
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from math import prod
from typing import Any

import numpy as np

from nbconv import buffers
from nbconv.dtypes import check_real, conv_dtypes
from nbconv.geometry import SPATIAL, ConvGeometry, conv_geometry
from nbconv.lifting import Lift

# The types of the public API's arguments.
Array = Any  # a NumPy array (or anything np.asarray takes), a CUDA device array, or a Dask array
Ints = int | Sequence[int]  # one int for every spatial axis, or one per spatial axis
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]  # "SAME", "VALID", ints or (lo, hi) pairs


@dataclass(frozen=True)
class ConvCall:
    """One validated conv3d call: sizes, precisions and the caller's layout."""

    geometry: ConvGeometry
    compute_dtype: np.dtype
    result_dtype: np.dtype
    channel_first: bool
    batched: bool

    @cached_property
    def result_shape(self):
        n, d, h, w, c = self.geometry.out_shape
        shape = (n, c, d, h, w) if self.channel_first else (n, d, h, w, c)
        return shape if self.batched else shape[1:]


def is_device_array(a):
    """True for anything exposing ``__cuda_array_interface__`` (Numba device arrays, CuPy, PyTorch CUDA
    tensors), and for the CUDA simulator's device arrays, which do not expose it."""
    if type(a) is np.ndarray:  # the common case, asked several times per call
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    simulator = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return simulator is not None and isinstance(a, simulator.FakeCUDAArray)


def is_dask_array(a):
    """A Dask array, without importing dask (only one whose module is loaded can be one)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(a, module.Array)


def host_array(a, name, optional=False):
    """Device arrays (and None where `optional`) as they are, anything else as a NumPy array."""
    if a is None and not optional:
        raise TypeError(f"{name} must be an array, got None")
    if a is None or is_device_array(a):
        return a
    refuse_masked(a, name)
    try:
        return np.asarray(a)
    except Exception as err:
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}") from err


def refuse_masked(a, name):
    """TypeError for a NumPy masked array, whose mask a convolution would silently drop (as JAX, which
    refuses them)."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array, whose mask nbconv would drop; pass {name}.filled(value) "
                        f"(e.g. {name}.filled(0)) or the plain {name}.data")


def validate(x, w, bias, options, count=SPATIAL):
    """The ConvCall of a call on x, w and bias with `options` = (stride, padding, lhs_dilation,
    rhs_dilation, groups, channel_first), or the error that names what is wrong. x and w are 3-D;
    the options are those of the caller's `count` spatial axes, lifted here (`nbconv.lifting`).

    Cached by the sizes, dtypes and options that decide it, and by the options' types (1, 1.0 and
    True are one dict key but not equally valid): a layer or a loop calls with the same ones again,
    and a lookup costs a fraction of the full check, most of all right after a large kernel has
    evicted the interpreter's code and data from the caches."""
    spec = (tuple(x.shape), np.dtype(x.dtype), tuple(w.shape), np.dtype(w.dtype),
            None if bias is None else (tuple(bias.shape), np.dtype(bias.dtype)), options, count)
    try:
        key = (spec, _types(options))
        hash(key)
    except TypeError:  # a list or an array among the options: checked every time
        return _conv_call(*spec)
    return _cached_conv_call(key)


def geometry_of(x_shape, w_shape, options, count=SPATIAL):
    """The geometry of the 3-D call that a call of `count` spatial axes makes, from the caller's
    batched x_shape, w_shape and `validate`'s options (a layer's output size, a workload's FLOPs)."""
    lift = Lift(count, options[-1])
    float32 = np.dtype(np.float32)
    return _conv_call(lift.image(tuple(x_shape), True), float32, lift.kernel(tuple(w_shape)), float32, None, options,
                      count).geometry


def _types(value):
    """The type of `value`, and of every item of its tuples and lists."""
    return (type(value), tuple(_types(v) for v in value)) if type(value) in (tuple, list) else type(value)


@lru_cache(maxsize=64)
def _cached_conv_call(key):
    return _conv_call(*key[0])


def _conv_call(x_shape, x_dtype, w_shape, w_dtype, bias_spec, options, count):
    stride, padding, lhs_dilation, rhs_dilation, groups, channel_first = options
    if count != SPATIAL:
        lift = Lift(count, channel_first)
        stride, padding, lhs_dilation, rhs_dilation = lift.options(stride, padding, lhs_dilation, rhs_dilation)
    if len(x_shape) not in (4, 5):
        raise ValueError(f"x must be 5-D {_layout(channel_first)} (or 4-D unbatched), got shape {x_shape}")
    if not isinstance(channel_first, (bool, np.bool_)):
        raise TypeError(f"channel_first must be a bool, got {channel_first!r}")
    geometry = conv_geometry(x_shape if len(x_shape) == 5 else (1, *x_shape), w_shape, stride=stride,
                             padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             groups=groups, channel_first=bool(channel_first))
    dtypes = [("x", x_dtype), ("w", w_dtype)]
    if bias_spec is not None:
        bias_shape, bias_dtype = bias_spec
        if prod(bias_shape) != geometry.out_channels:
            raise ValueError(f"bias must have Cout = {geometry.out_channels} elements, got shape {bias_shape}")
        conv_dtypes(("bias", bias_dtype))
    compute, result = conv_dtypes(*dtypes)
    return ConvCall(geometry, compute, result, bool(channel_first), len(x_shape) == 5)


def _layout(channel_first):
    return "(N, Cin, D, H, W)" if channel_first else "(N, D, H, W, Cin)"


def check_out(out, call, x, w, bias, shape=None):
    """TypeError or ValueError unless `out` can take the result of `call` (of `shape`, the caller's
    form of the result's shape, default call.result_shape)."""
    if not isinstance(out, np.ndarray) and not is_device_array(out):
        raise TypeError(f"out must be an array, got {type(out).__name__}")
    shape = call.result_shape if shape is None else shape
    if tuple(out.shape) != shape or np.dtype(out.dtype) != call.result_dtype:
        raise ValueError(f"out must have shape {shape} and dtype {call.result_dtype}, got "
                         f"shape {tuple(out.shape)} and dtype {out.dtype}")
    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        if any(isinstance(a, np.ndarray) and np.may_share_memory(out, a) for a in (x, w, bias)):
            raise ValueError("out must not share memory with x, w or bias")


def to_kernel_layout(a, call, dtype):
    """An array in the caller's layout (x, or a cotangent of the result) -> channels-last, batched,
    C-contiguous, of `dtype`: what the kernels take."""
    a5 = a if call.batched else a[None]
    return buffers.contiguous(np.moveaxis(a5, 1, -1) if call.channel_first else a5, np.dtype(dtype))


def to_caller_layout(y, call, out=None, dtype=None):
    """Channels-last, batched kernel output -> the caller's layout, `dtype` (default the result's)
    and `out`."""
    if call.channel_first:
        y = np.moveaxis(y, -1, 1)
    if not call.batched:
        y = y[0]
    if out is None:
        return buffers.contiguous(y, np.dtype(call.result_dtype if dtype is None else dtype))
    out[...] = y
    return out


def standardization_args(w, eps, gain, out_axis, *others):
    """The checked arguments of a weight standardization of host arrays: (axis, eps, the compute and
    result dtypes, the Cout gains in the compute dtype). `others`, (name, array) pairs, join w in
    conv3d's dtype rule."""
    axis = _standardization_axis(w, out_axis)
    eps = positive_number(eps, "eps")
    compute, result = conv_dtypes(("w", np.dtype(w.dtype)), *((name, np.dtype(a.dtype)) for name, a in others))
    cout = w.shape[axis]
    if gain is not None:
        check_real("gain", np.dtype(gain.dtype))
    if gain is not None and gain.size not in (1, cout):
        raise ValueError(f"gain must have 1 or Cout = {cout} elements, got shape {gain.shape}")
    gains = np.ascontiguousarray(np.broadcast_to(np.ones(1) if gain is None else gain.reshape(-1), (cout,)),
                                 dtype=compute)
    return axis, eps, compute, result, gains


def to_columns(a, axis, dtype):
    """`a` as (fan_in, Cout) columns, Cout its `axis`, in `dtype`."""
    return np.ascontiguousarray(np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]), dtype=dtype)


def from_columns(columns, shape, axis, dtype):
    """The inverse of `to_columns`: (fan_in, Cout) columns -> an array of `shape`, in `dtype`."""
    moved = columns.reshape(*(n for i, n in enumerate(shape) if i != axis), shape[axis])
    return np.ascontiguousarray(np.moveaxis(moved, -1, axis), dtype=dtype)


def _standardization_axis(w, out_axis):
    ndim = len(w.shape)
    if ndim < 1:
        raise ValueError("w must have at least one axis")
    if (not isinstance(out_axis, (int, np.integer)) or isinstance(out_axis, bool)
            or not -ndim <= out_axis < ndim):
        raise ValueError(f"out_axis must be an int in [-{ndim}, {ndim}), got {out_axis!r}")
    return int(out_axis) % ndim


def positive_number(value, name):
    """`value` as a float if it is a positive real number (a Python or NumPy scalar, or a 0-d array;
    not a bool or a string), else a ValueError naming `name`."""
    array = np.asarray(value) if isinstance(value, (numbers.Real, np.ndarray)) else None
    if array is None or array.ndim or array.dtype.kind not in "iuf" or not float(array) > 0:
        raise ValueError(f"{name} must be a positive number (a real scalar), got {value!r}")
    return float(array)
