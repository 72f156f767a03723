"""The public functions `conv1d`, `conv2d`, `conv3d` and `weight_standardization`.

Each validates its call (`nbconv.call`), chooses the backend (`nbconv.dispatch`) and runs its entry;
a Dask x becomes a lazy graph (`nbconv.chunked`). conv1d and conv2d are conv3d on views with unit
axes (`nbconv.lifting`).
"""
from nbconv import chunked
from nbconv.call import (
    Array,
    Ints,
    Padding,
    check_out,
    from_columns,
    host_array,
    is_dask_array,
    is_device_array,
    standardization_args,
    to_columns,
    validate,
)
from nbconv.dispatch import backend_module, choose_backend, cuda_module, device_views, on_host
from nbconv.lifting import Lift


def conv3d(x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "SAME", lhs_dilation: Ints = 1,
           rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None, channel_first: bool = False,
           backend: str = "auto", out: Array | None = None) -> Array:
    """Convolve a batch of 3-D volumes, as ``jax.lax.conv_general_dilated`` does.

    Parameters
    ----------
    x : array_like
        The input: ``(N, D, H, W, Cin)``, or ``(N, Cin, D, H, W)`` with ``channel_first=True``; a 4-D
        ``x`` is one unbatched sample and gives a 4-D result. A CUDA device array runs on the GPU; a
        Dask array gives a lazy Dask result.
    w : array_like
        The kernel, always ``(KD, KH, KW, Cin // groups, Cout)`` (DHWIO).
    stride : int or sequence of int, optional
        The window strides: one int for every axis, or 1 or 3 of them.
    padding : str, int or sequence, optional
        ``"SAME"`` (output size ``ceil(n_eff / stride)``, the extra pad at the end), ``"VALID"`` (none),
        an int ``p`` (``(p, p)`` on every axis), three ints (symmetric per axis), or ``(lo, hi)``
        pairs, one for every axis or three. Negative pads crop.
    lhs_dilation : int or sequence of int, optional
        Input dilation: ``lhs - 1`` zeros between neighbouring inputs (a transposed convolution).
    rhs_dilation : int or sequence of int, optional
        Kernel dilation (atrous convolution).
    groups : int, optional
        Feature groups: divides Cin and Cout, and ``w.shape[3] * groups == Cin``.
    bias : array_like, optional
        Cout values added per output channel, of any shape.
    channel_first : bool, optional
        Whether ``x`` and the result have their channels before the spatial axes.
    backend : {"auto", "cpu", "cuda"}, optional
        ``"auto"`` runs on the GPU when an input is a device array, else on the CPU; the environment
        variable ``NBCONV_BACKEND`` overrides it.
    out : ndarray, optional
        A C-contiguous array of the result's shape and dtype, sharing no memory with ``x``, ``w`` or
        ``bias``, to fill and return. A call interrupted by Ctrl-C leaves it partly written.

    Returns
    -------
    array
        ``(N, D', H', W', Cout)`` (channels first if asked), of the dtype ``np.result_type`` gives
        the inputs: float32 and float64 computed natively, float16 in float32, integers and bools in
        float64. A NumPy array for NumPy input, a device array for device input, a lazy Dask array
        for a Dask ``x``.

    Raises
    ------
    ValueError
        A shape, option or ``out`` that does not fit, named in the message.
    TypeError
        A complex or non-numeric dtype, a device array on ``backend="cpu"``, or ``out`` with a Dask
        ``x``.
    nbconv.BackendUnavailableError
        ``backend="cuda"`` where no GPU and driver can run it.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.ones((1, 4, 4, 4, 2), np.float32)
    >>> w = np.ones((3, 3, 3, 2, 8), np.float32)
    >>> nbconv.conv3d(x, w, padding="VALID").shape
    (1, 2, 2, 2, 8)
    """
    return convolve(Lift(3, channel_first), x, w, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
                    backend, out)


def conv2d(x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "SAME", lhs_dilation: Ints = 1,
           rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None, channel_first: bool = False,
           backend: str = "auto", out: Array | None = None) -> Array:
    """Convolve a batch of 2-D images, as ``jax.lax.conv_general_dilated`` does.

    Everything is as in `conv3d`, with two spatial axes: ``x`` is ``(N, H, W, Cin)`` (or
    ``(N, Cin, H, W)`` with ``channel_first=True``; 3-D for one unbatched image), ``w`` is
    ``(KH, KW, Cin // groups, Cout)`` (HWIO), the options take 1 or 2 values, and the result is
    ``(N, H', W', Cout)``. It runs on conv3d's kernels, on a view with a unit depth axis.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.ones((1, 8, 8, 3), np.float32)
    >>> w = np.ones((3, 3, 3, 16), np.float32)
    >>> nbconv.conv2d(x, w, stride=2).shape
    (1, 4, 4, 16)
    """
    return convolve(Lift(2, channel_first), x, w, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
                    backend, out)


def conv1d(x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "SAME", lhs_dilation: Ints = 1,
           rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None, channel_first: bool = False,
           backend: str = "auto", out: Array | None = None) -> Array:
    """Convolve a batch of 1-D signals, as ``jax.lax.conv_general_dilated`` does.

    Everything is as in `conv3d`, with one spatial axis: ``x`` is ``(N, W, Cin)`` (or
    ``(N, Cin, W)`` with ``channel_first=True``; 2-D for one unbatched signal), ``w`` is
    ``(KW, Cin // groups, Cout)`` (WIO), and the result is ``(N, W', Cout)``. Two ints as
    ``padding`` are the axis's ``(lo, hi)`` pair, as brainstate's ``Conv1d`` reads them. It runs on
    conv3d's kernels, on a view with unit depth and height axes.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.ones((2, 100, 4), np.float32)
    >>> w = np.ones((5, 4, 8), np.float32)
    >>> nbconv.conv1d(x, w, padding=(4, 0)).shape  # causal
    (2, 100, 8)
    """
    return convolve(Lift(1, channel_first), x, w, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
                    backend, out)


def convolve(lift, x, w, bias, options, backend, out):
    """Convolve with `lift.count` spatial axes, on conv3d's path (`nbconv.lifting`).

    `options` = (stride, padding, lhs_dilation, rhs_dilation, groups), as the caller wrote them.
    """
    backend = choose_backend(backend, x, w, bias)
    w, bias = host_array(w, "w"), host_array(bias, "bias", optional=True)
    if is_dask_array(x):
        return _lazy(lift, x, w, bias, options, backend, out)
    x, w, bias = device_views(host_array(x, "x"), w, bias)
    batched = lift.batched(x, w)
    x3, w3 = lift.image(x, batched), lift.kernel(w)
    call = validate(x3, w3, bias, (*options, lift.channel_first), lift.count)
    if out is not None:
        check_out(out, call, x, w, bias, lift.lower_image(call.result_shape, batched))
    y = backend_module(backend).convolve(call, x3, w3, bias, lift.image(out, batched))
    return out if out is not None else lift.lower_image(y, batched)


def _lazy(lift, x, w, bias, options, backend, out):
    """Build the lazy result for a Dask x (`nbconv.chunked`); a Dask w or bias is computed once."""
    if out is not None:
        raise TypeError("out= takes a NumPy or device array; with a Dask x the result is lazy: store it with "
                        "y.store(...) or y.to_zarr(...)")
    batched = lift.batched(x, w)
    x3, w3 = lift.image(x, batched), lift.kernel(w)
    call = validate(x3, w3, bias, (*options, lift.channel_first), lift.count)
    y = chunked.lazy_convolution(call, x3, w3, bias, backend)
    return lift.lower_image(y, batched)


def weight_standardization(w: Array, eps: float = 1e-4, gain: Array | None = None, out_axis: int = -1,
                           backend: str = "auto") -> Array:
    """Standardize weights per output channel, as brainstate's ``ScaledWSConv3d`` does.

    Over all axes but ``out_axis``, per output channel: ``gain * (w - mean) / sqrt(max(var * fan_in,
    eps))``, with ``var`` the population variance and ``fan_in`` the number of elements per output
    channel.

    Parameters
    ----------
    w : array_like
        The weights, of any shape; a device array is standardized by the CUDA backend.
    eps : float, optional
        The floor of ``var * fan_in``, a positive number.
    gain : array_like, optional
        1 or Cout values (any shape) that multiply each output channel.
    out_axis : int, optional
        The axis of the output channels.
    backend : {"auto", "cpu", "cuda"}, optional
        As in `conv3d`.

    Returns
    -------
    array
        Of ``w``'s shape; dtypes follow `conv3d`'s rules. A device array for a device ``w``.

    Raises
    ------
    ValueError
        A non-positive ``eps``, an ``out_axis`` out of range, or a ``gain`` of another size.
    TypeError
        A complex or non-numeric dtype.
    """
    backend = choose_backend(backend, w, gain)
    on_device = is_device_array(w)
    # Weights are small: both backends standardize a host copy laid out as (fan_in, Cout) columns.
    w, gain = on_host(w, "w"), on_host(gain, "gain", optional=True)
    axis, eps, compute, result, gains = standardization_args(w, eps, gain, out_axis)
    standardized = backend_module(backend).standardize_columns(to_columns(w, axis, compute), eps, gains)
    standardized = from_columns(standardized, w.shape, axis, result)
    return cuda_module().to_device(standardized) if on_device else standardized
