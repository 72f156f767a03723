"""Public functions: validate the arguments, pick a backend, run its kernel."""
import numbers
from dataclasses import dataclass
from functools import cached_property, lru_cache
from math import prod

import numpy as np

from nbconv import buffers, chunked, cpu
from nbconv.dispatch import choose_backend, cuda_module, is_device_array
from nbconv.dtypes import check_real, conv_dtypes
from nbconv.geometry import ConvGeometry, conv_geometry


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


def conv3d(x, w, *, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, bias=None,
           channel_first=False, backend="auto", out=None):
    """3-D convolution with the semantics of ``jax.lax.conv_general_dilated``.

    x: (N, D, H, W, Cin), or (N, Cin, D, H, W) with ``channel_first=True``; 4-D for one unbatched sample.
    w: (KD, KH, KW, Cin // groups, Cout). Returns (N, D', H', W', Cout) (channels first if asked).
    padding: 'SAME', 'VALID', an int, 3 ints, or (lo, hi) pairs (one for all axes, or three).
    stride, lhs_dilation (input), rhs_dilation (kernel): an int or 1 or 3 ints.
    bias: None or Cout values added per output channel. out: a C-contiguous array of the result's
    shape and dtype to fill, sharing no memory with x, w or bias; a call interrupted by Ctrl-C
    (KeyboardInterrupt) leaves it partly written. backend: 'auto' (CUDA for device arrays), 'cpu' or 'cuda'.
    """
    backend = choose_backend(backend, x, w, bias)
    options = (stride, padding, lhs_dilation, rhs_dilation, groups, channel_first)
    if chunked.is_dask_array(x):
        return _conv3d_dask(x, w, bias, options, backend, out)
    x, w, bias = _host_array(x, "x"), _host_array(w, "w"), _host_array(bias, "bias", optional=True)
    call = _validate(x, w, bias, options)
    if out is not None:
        _check_out(out, call, x, w, bias)
    run = cuda_module().conv3d if backend == "cuda" else _conv3d_cpu
    return run(x, w, bias, call, out)


def _conv3d_dask(x, w, bias, options, backend, out):
    """A lazy Dask result (nbconv.chunked); w and bias are NumPy (a Dask w or bias is computed once)."""
    if out is not None:
        raise TypeError("out= takes a NumPy or device array; with a Dask x the result is lazy: store it with "
                        "y.store(...) or y.to_zarr(...)")
    w, bias = _host_array(w, "w"), _host_array(bias, "bias", optional=True)
    return chunked.conv3d(x, w, bias, _validate(x, w, bias, options), backend)


def _host_array(a, name, optional=False):
    """Device arrays (and None where `optional`) as they are, anything else as a NumPy array."""
    if a is None and not optional:
        raise TypeError(f"{name} must be an array, got None")
    if a is None or is_device_array(a):
        return a
    try:
        return np.asarray(a)
    except Exception as err:
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}") from err


def _validate(x, w, bias, options):
    """The ConvCall of a call. Cached by the sizes, dtypes and options that decide it, and by the
    options' types (1, 1.0 and True are one dict key but not equally valid): a layer or a loop calls
    with the same ones again, and right after a large kernel has evicted the interpreter's code and
    data from the caches the full check took about 50 us (the lookup: 10-15)."""
    spec = (tuple(x.shape), np.dtype(x.dtype), tuple(w.shape), np.dtype(w.dtype),
            None if bias is None else (tuple(bias.shape), np.dtype(bias.dtype)), options)
    try:
        key = (spec, _types(options))
        hash(key)
    except TypeError:  # a list or an array among the options: checked every time
        return _conv_call(*spec)
    return _cached_conv_call(key)


def _types(value):
    """The type of `value`, and of every item of its tuples and lists."""
    return (type(value), tuple(_types(v) for v in value)) if type(value) in (tuple, list) else type(value)


@lru_cache(maxsize=64)
def _cached_conv_call(key):
    return _conv_call(*key[0])


def _conv_call(x_shape, x_dtype, w_shape, w_dtype, bias_spec, options):
    stride, padding, lhs_dilation, rhs_dilation, groups, channel_first = options
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


def _check_out(out, call, x, w, bias):
    if not isinstance(out, np.ndarray) and not is_device_array(out):
        raise TypeError(f"out must be an array, got {type(out).__name__}")
    if tuple(out.shape) != call.result_shape or np.dtype(out.dtype) != call.result_dtype:
        raise ValueError(f"out must have shape {call.result_shape} and dtype {call.result_dtype}, got "
                         f"shape {tuple(out.shape)} and dtype {out.dtype}")
    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a writeable C-contiguous array")
        if any(isinstance(a, np.ndarray) and np.may_share_memory(out, a) for a in (x, w, bias)):
            raise ValueError("out must not share memory with x, w or bias")


def _conv3d_cpu(x, w, bias, call, out):
    geometry, compute = call.geometry, call.compute_dtype
    x5 = to_kernel_layout(x, call, compute)
    w = np.ascontiguousarray(w, dtype=compute)
    bias = (np.zeros(geometry.out_channels, compute) if bias is None
            else np.ascontiguousarray(bias.reshape(-1), dtype=compute))
    # Write straight into `out` when it already has the kernel's layout and dtype.
    direct = out is not None and not call.channel_first and out.dtype == compute
    y = out.reshape(geometry.out_shape) if direct else buffers.empty(geometry.out_shape, compute)
    cpu.conv3d(x5, w, bias, geometry, y)
    return out if direct else to_caller_layout(y, call, out)


def to_kernel_layout(a, call, dtype):
    """An array in the caller's layout (x, or a cotangent of the result) -> channels-last, batched,
    C-contiguous, of `dtype`: what the kernels take."""
    a5 = a if call.batched else a[None]
    return np.ascontiguousarray(np.moveaxis(a5, 1, -1) if call.channel_first else a5, dtype=dtype)


def to_caller_layout(y, call, out=None, dtype=None):
    """Channels-last, batched kernel output -> the caller's layout, `dtype` (default the result's)
    and `out`."""
    if call.channel_first:
        y = np.moveaxis(y, -1, 1)
    if not call.batched:
        y = y[0]
    if out is None:
        return np.ascontiguousarray(y, dtype=call.result_dtype if dtype is None else dtype)
    out[...] = y
    return out


def weight_standardization(w, eps=1e-4, gain=None, out_axis=-1, backend="auto"):
    """brainstate's weight standardization, per output channel (axis `out_axis`) over all other axes:
    ``gain * (w - mean) / sqrt(max(var * fan_in, eps))`` with the population variance and
    ``fan_in`` the number of elements per output channel. `gain` has 1 or Cout elements (any shape).
    Returns an array of w's shape (a device array for a device `w`); dtypes follow conv3d's rules."""
    backend = choose_backend(backend, w, gain)
    on_device = is_device_array(w)
    # Weights are small: both backends standardize a host copy laid out as (fan_in, Cout) columns.
    w, gain = _on_host(w, "w"), _on_host(gain, "gain", optional=True)
    axis, eps, compute, result, gains = standardization_args(w, eps, gain, out_axis)
    columns = to_columns(w, axis, compute)
    if backend == "cuda":
        standardized = cuda_module().standardize_columns(columns, eps, gains)
    else:
        standardized = np.empty_like(columns)
        cpu.standardize_columns(columns, eps, gains, standardized)
    standardized = from_columns(standardized, w.shape, axis, result)
    return cuda_module().to_device(standardized) if on_device else standardized


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


def _on_host(a, name, optional=False):
    """A NumPy copy of a device array; anything else as `_host_array` gives it."""
    return cuda_module().to_host(a) if is_device_array(a) else _host_array(a, name, optional)


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
