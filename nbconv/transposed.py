"""The transposed convolution, as ``jax.lax.conv_transpose`` computes it, and its gradients.

A transposed convolution is a convolution with the stride as input dilation and window strides of 1
(docs/semantics.md), so it runs on the forward path (`nbconv.functional.convolve`) and its
gradients on the forward's (`nbconv.gradients.vjp`). Its own rules are the padding that ``"SAME"``
and ``"VALID"`` stand for, and ``transpose_kernel``: the kernel's spatial axes flipped and its two
channel axes swapped, as the input gradient of the convolution that w belongs to uses it.
"""
from collections.abc import Sequence

import numpy as np

from nbconv.call import Array, Ints, Padding, host_array, is_device_array
from nbconv.dispatch import cuda_module, device_views
from nbconv.functional import convolve
from nbconv.geometry import SPATIAL, dilated, normalize_padding, spatial_tuple
from nbconv.gradients import WRT, vjp
from nbconv.lifting import Lift


def conv_transpose(x: Array, w: Array, *, stride: Ints = 1, padding: Padding = "SAME", rhs_dilation: Ints = 1,
                   transpose_kernel: bool = False, groups: int = 1, bias: Array | None = None,
                   channel_first: bool = False, backend: str = "auto", out: Array | None = None) -> Array:
    """Compute the transposed convolution of 1, 2 or 3 spatial axes, as ``jax.lax.conv_transpose``.

    ``w``'s rank gives the number of spatial axes n: ``w`` is ``(*kernel, I, O)`` (WIO, HWIO or
    DHWIO), and ``x`` is ``(N, *spatial, Cin)`` (``(N, Cin, *spatial)`` with ``channel_first``; one
    axis fewer for an unbatched sample). The result is the convolution of ``x`` dilated by
    ``stride`` (``stride - 1`` zeros between neighbouring inputs) with window strides of 1.

    Parameters
    ----------
    x : array_like
        The input, of n + 2 axes (n + 1 unbatched). Device and Dask arrays as in `conv3d`.
    w : array_like
        The kernel, of n + 2 axes: ``(*kernel, Cin // groups, Cout)``, or with ``transpose_kernel``
        the kernel of the forward convolution this one transposes, ``(*kernel, Cout, Cin // groups)``.
    stride : int or sequence of int, optional
        The strides of the convolution this transposes: the input dilation here.
    padding : str, int or sequence, optional
        ``"SAME"`` (output size ``n * stride``) or ``"VALID"`` (``(n - 1) * stride + k``, k the
        dilated kernel) padded as ``jax.lax.conv_transpose`` pads them, or explicit pads in any
        form `conv3d` takes, applied to the dilated input as they are.
    rhs_dilation : int or sequence of int, optional
        Kernel dilation.
    transpose_kernel : bool, optional
        Flip ``w``'s spatial axes and swap its two channel axes first, as the gradient of a
        convolution does (``jax.lax.conv_transpose``'s ``transpose_kernel``).
    groups : int, optional
        Feature groups of the convolution run (after ``transpose_kernel``); ``jax.lax.conv_transpose``
        has only 1. brainstate's ``ConvTranspose`` layers are this function with
        ``transpose_kernel=True``.
    bias, channel_first, backend, out : optional
        As in `conv3d`.

    Returns
    -------
    array
        ``(N, *spatial', Cout)`` (channels first if asked), of `conv3d`'s dtypes and array kinds.

    Raises
    ------
    ValueError
        A ``w`` of fewer than 3 or more than 5 axes, or what `conv3d` refuses.
    TypeError
        As `conv3d`.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.ones((1, 8, 8, 16), np.float32)
    >>> w = np.ones((2, 2, 16, 8), np.float32)
    >>> nbconv.conv_transpose(x, w, stride=2).shape  # a U-Net decoder's upsampling
    (1, 16, 16, 8)
    """
    lift, w, options = _prepare(w, channel_first, transpose_kernel, (stride, padding, rhs_dilation, groups))
    return convolve(lift, x, w, bias, options, backend, out)


def conv_transpose_vjp(x: Array, w: Array, dy: Array, *, stride: Ints = 1, padding: Padding = "SAME",
                       rhs_dilation: Ints = 1, transpose_kernel: bool = False, groups: int = 1,
                       bias: Array | None = None, channel_first: bool = False, wrt: str | Sequence[str] = WRT,
                       backend: str = "auto") -> tuple[Array | None, Array | None, Array | None]:
    """Compute the vector-Jacobian product of `conv_transpose` with the cotangent ``dy``.

    The arguments and results are as in `conv3d_vjp`, with `conv_transpose`'s shapes and options;
    ``dw`` has ``w``'s shape (with ``transpose_kernel``, the gradient of the ``w`` given).
    """
    lift, w_run, options = _prepare(w, channel_first, transpose_kernel, (stride, padding, rhs_dilation, groups))
    dx, dw, dbias = vjp(lift, x, w_run, dy, bias, options, wrt, backend)
    return dx, (flip_and_swap(dw) if transpose_kernel and dw is not None else dw), dbias


def _prepare(w, channel_first, transpose_kernel, options):
    """Return the lift of w's spatial axes, the kernel run and its options.

    The kernel has `transpose_kernel` applied; the options are `forward_options` of `options` =
    (stride, padding, rhs_dilation, groups).
    """
    w = device_views(host_array(w, "w"))[0]
    count = len(w.shape) - 2
    if not 1 <= count <= SPATIAL:
        raise ValueError(f"w must have 3, 4 or 5 axes (1, 2 or 3 spatial ones, then I and O), got shape "
                         f"{tuple(w.shape)}")
    if not isinstance(transpose_kernel, (bool, np.bool_)):
        raise TypeError(f"transpose_kernel must be a bool, got {transpose_kernel!r}")
    return Lift(count, channel_first), (flip_and_swap(w) if transpose_kernel else w), \
        forward_options(count, tuple(w.shape)[:count], *options)


def flip_and_swap(w):
    """Flip the kernel's spatial axes and swap its two channel axes (its own inverse)."""
    if is_device_array(w):  # a kernel is small: flipped on the host
        return cuda_module().to_device(flip_and_swap(w.copy_to_host()))
    flipped = w[(slice(None, None, -1),) * (w.ndim - 2)]
    return np.ascontiguousarray(flipped.swapaxes(-1, -2))


def forward_options(count, kernel, stride, padding, rhs_dilation, groups):
    """Return the options of the convolution that a transposed one runs.

    (stride, padding, lhs_dilation, rhs_dilation, groups), for `count` spatial axes, the kernel's
    spatial sizes and the transposed convolution's options.
    """
    stride = spatial_tuple(stride, "stride", count)
    rhs = spatial_tuple(rhs_dilation, "rhs_dilation", count)
    mode = normalize_padding(padding, count)
    if isinstance(mode, str):
        mode = tuple(transpose_padding(dilated(k, r), s, mode) for k, r, s in zip(kernel, rhs, stride))
    return 1, mode, stride, rhs, groups


def transpose_padding(k, s, mode):
    """Return the (lo, hi) pads of one axis that ``"SAME"`` or ``"VALID"`` stand for.

    As ``jax.lax.conv_transpose`` computes them, for a dilated kernel extent k and stride s.
    """
    if mode == "SAME":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        lo = k - 1
    return lo, total - lo
