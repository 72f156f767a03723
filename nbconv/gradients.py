"""Vector-Jacobian products of the convolutions and of the weight standardization (docs/gradients.md).

conv1d and conv2d lift to conv3d (`nbconv.lifting`); the transposed convolution is a convolution.

Both gradients of a convolution are convolutions, so they run on the forward kernels (JAX's
transpose rules for ``conv_general_dilated``, with nbconv's explicit pads). For each spatial axis
with input n, kernel k, stride s, pads (lo, hi), lhs dilation l, rhs dilation r and output o, and
the dilated extents N = dilated(n, l), K = dilated(k, r), O = dilated(o, s):

- dx is dy convolved with the spatially flipped kernel, in and out channels swapped within each
  group: stride l, lhs dilation s, rhs dilation r, pads (K - lo - 1, N + K - 1 - O - (K - lo - 1));
- dw is x convolved with dy, N and Cin trading places: x as a batch of Cin/groups volumes whose
  channels are (group, sample), dy as a kernel of o taps with N input and Cout output channels per
  group: stride r, lhs dilation l, rhs dilation s, pads (lo, O - N + K - lo - 1); its output has the
  kernel's spatial size. That convolution has 1-3 reduction steps per tap and a 3-pixel output row, so
  dw runs instead on the weight-gradient kernel (`nbconv.cpu.weight_grad`: the forward's micro-kernel
  with input channels or W taps as its pixels, narrow groups packed several to a vector), wherever
  it applies: all but groups of 1-3 output channels that do not pack.
"""
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numba import get_num_threads

from nbconv import buffers, cpu
from nbconv.call import (
    Array,
    Ints,
    Padding,
    from_columns,
    host_array,
    is_device_array,
    standardization_args,
    to_columns,
    validate,
)
from nbconv.cpu import weight_grad
from nbconv.cpu.layout import to_caller_layout, to_kernel_layout
from nbconv.dispatch import choose_backend, cuda_module, device_views
from nbconv.dtypes import check_real, conv_dtypes
from nbconv.lifting import Lift

WRT = ("x", "w", "bias")
# A 1-D call's dw runs as segments along W (`_as_segments`): at least SEGMENT_POSITIONS outputs each,
# SEGMENT_TASKS a thread where the signal is that long.
SEGMENT_POSITIONS = 1024
SEGMENT_TASKS = 4


def conv3d_vjp(x: Array, w: Array, dy: Array, *, stride: Ints = 1, padding: Padding = "SAME",
               lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None,
               channel_first: bool = False, wrt: str | Sequence[str] = WRT,
               backend: str = "auto") -> tuple[Array | None, Array | None, Array | None]:
    """Compute the vector-Jacobian product of `conv3d` with the cotangent ``dy``.

    The gradients of a convolution are convolutions, and they run on the same kernels as the
    forward pass.

    Parameters
    ----------
    x, w : array_like
        The operands of the forward call, as `conv3d` takes them.
    dy : array_like
        The cotangent: the gradient of the loss with respect to the result, of the result's shape.
    stride, padding, lhs_dilation, rhs_dilation, groups, bias, channel_first : optional
        The forward call's options, as in `conv3d`.
    wrt : str or sequence of str, optional
        Which of ``"x"``, ``"w"`` and ``"bias"`` to compute; the others are returned as None.
    backend : {"auto", "cpu", "cuda"}, optional
        As in `conv3d`. On CUDA everything runs on the GPU (nbconv.cuda.gradients); device arrays
        in give device arrays out.

    Returns
    -------
    dx : array or None
        Of ``x``'s shape, layout and dtype (integers: float64).
    dw : array or None
        Of ``w``'s shape and dtype (integers: float64).
    dbias : array or None
        Of ``bias``'s shape and dtype (integers: float64); ``(Cout,)`` in the result's dtype without
        a bias.

    Raises
    ------
    ValueError
        ``dy`` of another shape than the result, ``wrt`` naming something else, or an option that
        `conv3d` refuses.
    TypeError
        A complex or non-numeric dtype, or a missing array.
    """
    return vjp(Lift(3, channel_first), x, w, dy, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
               wrt, backend)


def conv2d_vjp(x: Array, w: Array, dy: Array, *, stride: Ints = 1, padding: Padding = "SAME",
               lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None,
               channel_first: bool = False, wrt: str | Sequence[str] = WRT,
               backend: str = "auto") -> tuple[Array | None, Array | None, Array | None]:
    """Compute the vector-Jacobian product of `conv2d` with the cotangent ``dy``.

    Everything is as in `conv3d_vjp`, with `conv2d`'s shapes; it runs on the same kernels.
    """
    return vjp(Lift(2, channel_first), x, w, dy, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
               wrt, backend)


def conv1d_vjp(x: Array, w: Array, dy: Array, *, stride: Ints = 1, padding: Padding = "SAME",
               lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1, bias: Array | None = None,
               channel_first: bool = False, wrt: str | Sequence[str] = WRT,
               backend: str = "auto") -> tuple[Array | None, Array | None, Array | None]:
    """Compute the vector-Jacobian product of `conv1d` with the cotangent ``dy``.

    Everything is as in `conv3d_vjp`, with `conv1d`'s shapes; it runs on the same kernels.
    """
    return vjp(Lift(1, channel_first), x, w, dy, bias, (stride, padding, lhs_dilation, rhs_dilation, groups),
               wrt, backend)


def vjp(lift, x, w, dy, bias, options, wrt, backend):
    """Compute (dx, dw, dbias) of a convolution of `lift.count` spatial axes, on conv3d's path.

    `options` = (stride, padding, lhs_dilation, rhs_dilation, groups), as the caller wrote them
    (`nbconv.lifting`).
    """
    wanted = _wrt(wrt)
    backend = choose_backend(backend, x, w, dy, bias)
    on_device = any(is_device_array(a) for a in (x, w, dy, bias))
    x, w, dy, bias = device_views(host_array(x, "x"), host_array(w, "w"), host_array(dy, "dy"),
                                  host_array(bias, "bias", optional=True))
    batched = lift.batched(x, w)
    x3, w3 = lift.image(x, batched), lift.kernel(w)
    call = validate(x3, w3, bias, (*options, lift.channel_first), lift.count)
    check_real("dy", np.dtype(dy.dtype))
    shape = lift.lower_image(call.result_shape, batched)
    if tuple(dy.shape) != shape:
        raise ValueError(f"dy must have the result's shape {shape}, got {tuple(dy.shape)}")
    dx, dw, dbias = _vjp3(call, x3, w3, lift.image(dy, batched), bias, wanted, backend, on_device)
    return lift.lower_image(dx, batched), lift.lower_kernel(dw), dbias


def _vjp3(call, x, w, dy, bias, wanted, backend, on_device):
    """conv3d_vjp of validated arrays."""
    compute = conv_dtypes(("x", x.dtype), ("w", w.dtype), ("dy", dy.dtype))[0]
    cotangents = {"x": (tuple(x.shape), _cotangent_dtype(x)), "w": (tuple(w.shape), _cotangent_dtype(w)),
                  "bias": ((call.geometry.out_channels,), call.result_dtype) if bias is None
                  else (tuple(bias.shape), _cotangent_dtype(bias))}
    if backend == "cuda":  # everything on the device, NumPy back only for NumPy operands
        return cuda_module().vjp(call, x, w, dy, wanted, compute, cotangents, on_device)
    x5, dy5 = (to_kernel_layout(a, call, compute) for a in (x, dy))
    geometry = call.geometry
    dx = (to_caller_layout(_dx(dy5, np.asarray(w, compute), geometry), call, dtype=cotangents["x"][1])
          if "x" in wanted else None)
    dw = _dw(x5, dy5, geometry).astype(cotangents["w"][1]) if "w" in wanted else None
    dbias = dy5.sum(axis=(0, 1, 2, 3)).reshape(cotangents["bias"][0]).astype(cotangents["bias"][1]) \
        if "bias" in wanted else None
    return dx, dw, dbias


def _wrt(wrt):
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt) if isinstance(wrt, (tuple, list, set, frozenset)) else None
    if names is None or not set(names) <= set(WRT):
        raise ValueError(f"wrt must name some of {WRT}, got {wrt!r}")
    return set(names)


def _cotangent_dtype(a):
    return np.dtype(a.dtype) if a.dtype.kind == "f" else np.dtype(np.float64)


def _run(x, w, **options):
    """Run the CPU forward path on channels-last, batched NumPy arrays of one dtype."""
    call = validate(x, w, None, (options["stride"], options["padding"], options["lhs_dilation"],
                                 options["rhs_dilation"], options["groups"], False))
    return cpu.convolve(call, x, w, None, None)


def _dx(dy5, w, geometry):
    if geometry.flops == 0:  # no product reaches x (an empty result, no channels): zeros, as JAX's
        return np.zeros((geometry.batch, *geometry.in_spatial, geometry.in_channels), w.dtype)
    groups = geometry.groups
    *kernel, cin_g, cout = w.shape
    # w[..., i, g * cout_g + o] -> flipped[..., o, g * cin_g + i]
    swapped = w.reshape(*kernel, cin_g, groups, cout // groups).transpose(0, 1, 2, 5, 4, 3)
    flipped = np.ascontiguousarray(swapped[::-1, ::-1, ::-1].reshape(*kernel, cout // groups, groups * cin_g))
    return _run(dy5, flipped, **geometry.input_gradient_options())


def _dw(x5, dy5, geometry):
    if geometry.flops == 0:
        return np.zeros((*geometry.kernel, geometry.in_channels // geometry.groups, geometry.out_channels), x5.dtype)
    if weight_grad.usable(geometry, x5.dtype):
        segments = _as_segments(x5, dy5, geometry)
        if segments is not None:
            return weight_grad.weight_gradient(*segments)
        if geometry.in_spatial[0] == geometry.kernel[0] == 1 and geometry.pads[0] == (0, 0):  # one plane
            planar = _rows_as_planes(geometry)
            dw = weight_grad.weight_gradient(_rows_as_planes_view(x5), _rows_as_planes_view(dy5), planar)
            return dw.reshape(1, *dw.shape[:1], *dw.shape[2:])
        return weight_grad.weight_gradient(x5, dy5, geometry)
    groups, (n, *spatial, cin) = geometry.groups, x5.shape
    cin_g = cin // groups
    # x[n, ..., g * cin_g + i] -> volumes[i, ..., g * N + n]; dy[n, ..., c] -> taps[..., n, c]
    volumes = np.ascontiguousarray(x5.reshape(n, *spatial, groups, cin_g).transpose(5, 1, 2, 3, 4, 0)
                                   .reshape(cin_g, *spatial, groups * n))
    taps = np.ascontiguousarray(dy5.transpose(1, 2, 3, 0, 4))
    pads = [(lo, od - nd + kd - lo - 1) for nd, kd, od, lo in geometry.dilated_axes()]
    per_input = _run(volumes, taps, stride=geometry.rhs_dilation, padding=pads,
                     lhs_dilation=geometry.lhs_dilation, rhs_dilation=geometry.stride, groups=groups)
    return np.moveaxis(per_input, 0, 3)  # (Cin / groups, KD, KH, KW, Cout) -> w's layout


def _as_segments(x5, dy5, geometry):
    """Return a 1-D call's (x, dy, geometry) as a batch of segments along W with the same dw, or None.

    SEGMENT_TASKS segments a thread, of SEGMENT_POSITIONS outputs or more; None where the call is not
    1-D with stride and input dilation 1 along W, has enough samples, or has too few outputs. The
    weight-gradient kernel splits its tasks by planes, and a signal is one: temporal_1d's dw ran on
    one thread. Segment s is the outputs s * L ... s * L + L - 1 and a copy of the inputs they read
    (`ConvGeometry.input_window`) with their padding as zeros, so None too where the copies would
    hold x more than twice over (a long dilated kernel), or where dy is not finite at outputs with
    taps on padding: JAX forms no product there, the zeros would make 0 * Inf = NaN (as for the
    kernel's folded rows). The last segment is filled up with outputs of zero dy, whose taps reach
    back to the last span - 1 inputs: so None too where those are not finite.
    """
    n, _, _, width, cin = x5.shape
    (_, _, ow), (lo, hi) = geometry.out_spatial, geometry.pads[2]
    one_d = geometry.in_spatial[:2] == geometry.kernel[:2] == (1, 1) and geometry.pads[:2] == ((0, 0),) * 2
    count = min(-(-SEGMENT_TASKS * get_num_threads() // n), ow // SEGMENT_POSITIONS)
    if not one_d or geometry.stride[2] != 1 or geometry.lhs_dilation[2] != 1 or count < 2:
        return None
    # Down to half as many segments where that many split the outputs evenly: dy is then a view.
    count = max((c for c in range(max(2, count // 2), count + 1) if ow % c == 0), default=count)
    length, span, signal = -(-ow // count), width + lo + hi - ow + 1, x5.reshape(n, width, cin)
    if span - 1 > length or not weight_grad.finite_at_w_edges(dy5, geometry) or (
            count * length > ow and not np.isfinite(signal[:, max(0, ow - lo):min(width, width + hi)]).all()):
        return None
    windows = buffers.empty((n, count, length + span - 1, cin), x5.dtype)
    for segment, window in enumerate(windows.swapaxes(0, 1)):
        reach = geometry.input_window(2, segment * length, min(segment * length + length, ow))
        i0, i1, (at, _) = reach or (0, 0, (0, 0))  # inputs i0... i1 - 1 at `at` in the window
        window[:, :at] = 0
        window[:, at:at + i1 - i0] = signal[:, i0:i1]
        window[:, at + i1 - i0:] = 0
    cotangents = dy5.reshape(n, ow, -1)
    if count * length > ow:
        cotangents = np.concatenate((cotangents, np.zeros((n, count * length - ow, dy5.shape[-1]), dy5.dtype)), 1)
    pieces = replace(geometry, batch=n * count, in_spatial=(1, 1, length + span - 1), pads=((0, 0),) * 3)
    return (windows.reshape(n * count, 1, 1, length + span - 1, cin),
            cotangents.reshape(n * count, 1, 1, length, -1), pieces)


def _rows_as_planes(geometry):
    """Return the geometry of a one-plane convolution (a 2-D call) with its rows as planes.

    (1, H, W) -> (H, 1, W): the weight-gradient kernel splits its tasks by planes (and kernel planes),
    so a single 2-D image was one task, for one thread.
    """
    def swapped(name):
        d, h, w = getattr(geometry, name)
        return h, d, w
    axes = ("in_spatial", "kernel", "stride", "pads", "lhs_dilation", "rhs_dilation")
    return replace(geometry, **{name: swapped(name) for name in axes})


def _rows_as_planes_view(a):
    """(N, 1, H, W, C) -> (N, H, 1, W, C), the same memory."""
    n, _, h, w, c = a.shape
    return a.reshape(n, h, 1, w, c)


def weight_standardization_vjp(w: Array, dw_hat: Array, eps: float = 1e-4, gain: Array | None = None,
                               out_axis: int = -1) -> tuple[np.ndarray, np.ndarray | None]:
    """Compute the vector-Jacobian product of `weight_standardization` with the cotangent ``dw_hat``.

    Where ``var * fan_in`` equals ``eps`` exactly, each side of the max takes half, as in JAX.

    Parameters
    ----------
    w : array_like
        The weights of the forward call.
    dw_hat : array_like
        The cotangent of the standardized weights, of ``w``'s shape.
    eps, gain, out_axis : optional
        The forward call's arguments, as in `weight_standardization`.

    Returns
    -------
    dw : ndarray
        Of ``w``'s shape and dtype (integers: float64).
    dgain : ndarray or None
        Of ``gain``'s shape; None without a gain.

    Raises
    ------
    ValueError
        ``dw_hat`` of another shape than ``w``, or an argument `weight_standardization` refuses.
    TypeError
        A complex or non-numeric dtype.
    """
    w, dw_hat = host_array(w, "w"), host_array(dw_hat, "dw_hat")
    gain = host_array(gain, "gain", optional=True)
    if tuple(dw_hat.shape) != tuple(w.shape):
        raise ValueError(f"dw_hat must have w's shape {tuple(w.shape)}, got {tuple(dw_hat.shape)}")
    axis, eps, compute, _, gains = standardization_args(w, eps, gain, out_axis, ("dw_hat", dw_hat))
    columns, grads = (to_columns(a, axis, compute) for a in (w, dw_hat))
    fan_in = columns.shape[0]
    centred = columns - columns.mean(axis=0)
    spread = (centred**2).mean(axis=0) * fan_in
    clipped = np.maximum(spread, eps)
    inv = 1 / np.sqrt(clipped)
    d_scale = (grads * centred).sum(axis=0)  # d loss / d (gain * inv), per column
    # d inv / d spread, where the variance side of the max is the one taken (half at a tie)
    through_spread = np.where(spread > eps, 1.0, np.where(spread == eps, 0.5, 0.0)) * -0.5 * inv / clipped
    d_spread = d_scale * gains * through_spread
    d_columns = gains * inv * (grads - grads.mean(axis=0)) + d_spread * 2 * centred
    dw = from_columns(d_columns, w.shape, axis, _cotangent_dtype(w))
    if gain is None:
        return dw, None
    dgain = d_scale * inv
    dgain = (dgain.sum() if gain.size == 1 else dgain).reshape(gain.shape).astype(_cotangent_dtype(gain))
    return dw, dgain
