"""brainstate's convolution layers on nbconv's kernels.

Conv1d, Conv2d and Conv3d, their ScaledWS variants, and ConvTranspose1d, ConvTranspose2d and
ConvTranspose3d. Their constructors, attributes, errors and numbers are brainstate's. A class differs
from its siblings of other dimensions only in `spatial`, the number of spatial axes
(`nbconv.lifting`).
"""
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from nbconv import init, transposed
from nbconv.call import Array, Ints, Padding, geometry_of, is_dask_array, is_device_array, positive_number
from nbconv.functional import convolve, weight_standardization
from nbconv.geometry import normalize_padding, spatial_tuple
from nbconv.gradients import vjp, weight_standardization_vjp
from nbconv.lifting import Lift


class ParamState:
    """A trainable value, as brainstate's ``ParamState``.

    Parameters
    ----------
    value : dict of str to ndarray
        The layer's parameters, kept in ``self.value``.
    """

    def __init__(self, value: dict):
        self.value = value

    def __repr__(self):  # noqa: D105
        shapes = {k: getattr(v, "shape", None) for k, v in self.value.items()}
        return f"{type(self).__name__}({shapes})"


class _Conv:
    """A convolution layer of `spatial` axes: everything of `Conv1d`, `Conv2d` and `Conv3d`."""

    spatial = 3  # the number of spatial axes

    def __init__(self, in_size: Sequence[int], out_channels: int, kernel_size: Ints, stride: Ints = 1,
                 padding: Padding = "SAME", lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1,
                 w_init: Callable | Array = init.XavierNormal(),  # noqa: B008 - brainstate's default
                 b_init: Callable | Array | None = None, w_mask: Array | None = None, channel_first: bool = False,
                 name: str | None = None, param_type: type = ParamState, backend: str = "auto"):
        self.name = name
        self.backend = backend
        self.channel_first = bool(channel_first)
        self.in_size = _in_size(in_size, self.spatial)
        self.in_channels = self.in_size[0] if self.channel_first else self.in_size[-1]
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = spatial_tuple(kernel_size, "kernel_size", self.spatial)
        self.stride = spatial_tuple(stride, "stride", self.spatial)
        self.lhs_dilation = spatial_tuple(lhs_dilation, "lhs_dilation", self.spatial)
        self.rhs_dilation = spatial_tuple(rhs_dilation, "rhs_dilation", self.spatial)
        self.padding = normalize_padding(padding, self.spatial)
        self.groups = _positive_int(groups, "groups")
        for what, count in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if count % self.groups:
                raise ValueError(f"{what} ({count}) must be divisible by groups ({self.groups})")
        self.kernel_shape = self._kernel_shape()
        self.w_mask = init.param(w_mask, self.kernel_shape, "w_mask")
        self.w_initializer, self.b_initializer = w_init, b_init
        self.weight = param_type(self._init_params())
        self.out_size = self._out_size()

    def _kernel_shape(self):
        return self._run_kernel_shape()

    def _init_params(self):
        params = {"weight": init.param(self.w_initializer, self.kernel_shape, "w_init")}
        if self.b_initializer is not None:
            ones = (1,) * self.spatial
            shape = (1, self.out_channels, *ones) if self.channel_first else (*ones, self.out_channels)
            params["bias"] = init.param(self.b_initializer, shape, "b_init")
        return params

    def _lift(self):
        return Lift(self.spatial, self.channel_first)

    def _options(self):
        """Return the (stride, padding, lhs_dilation, rhs_dilation, groups) of the convolution run."""
        return self.stride, self.padding, self.lhs_dilation, self.rhs_dilation, self.groups

    def _out_size(self):
        geometry = geometry_of((1, *self.in_size), self._run_kernel_shape(), (*self._options(), self.channel_first),
                               self.spatial)
        out = geometry.out_spatial[3 - self.spatial:]
        return (self.out_channels, *out) if self.channel_first else (*out, self.out_channels)

    def _run_kernel_shape(self):
        """Return the shape of the kernel the convolution runs: (*kernel_size, Cin // groups, Cout).

        The transposed layers' too: their kernel flipped, its channel axes swapped.
        """
        return (*self.kernel_size, self.in_channels // self.groups, self.out_channels)

    def kernel(self) -> np.ndarray:
        """Return the weights the convolution uses (the mask applied)."""
        w = self.weight.value["weight"]
        return w if self.w_mask is None else w * self.w_mask

    def update(self, x: Array) -> Array:
        """Apply the layer to ``x``: ``(N, *in_size)``, or one sample of ``in_size``.

        Returns the same kind of array it is given (NumPy, device, lazy Dask, or another array-API
        array through its namespace's ``asarray``), of shape ``(N, *out_size)`` or ``out_size``.

        Raises
        ------
        ValueError
            ``x`` whose shape without the batch axis is not ``in_size``.
        """
        self._check_input(x)
        y = convolve(self._lift(), x, self._run_kernel(), self.weight.value.get("bias"), self._options(),
                     self.backend, None)
        return _like_input(y, x)

    __call__ = update

    def vjp(self, x: Array, dy: Array) -> tuple[np.ndarray, dict]:
        """Compute the vector-Jacobian product of ``self(x)`` with the cotangent ``dy``.

        Parameters
        ----------
        x : array_like
            The input of the forward call.
        dy : array_like
            The gradient of the loss with respect to the output, of the output's shape.

        Returns
        -------
        dx : ndarray
            Of ``x``'s shape.
        grads : dict of str to ndarray
            The keys and shapes of ``self.weight.value``: enough for an SGD or Adam step on them.
        """
        self._check_input(x)
        params = self.weight.value
        wrt = ("x", "w", "bias") if "bias" in params else ("x", "w")
        dx, d_run, d_bias = vjp(self._lift(), x, self._run_kernel(), dy, params.get("bias"), self._options(), wrt,
                                self.backend)
        d_kernel = self._kernel_grad(d_run)
        grads = self._weight_grads(d_kernel if self.w_mask is None else d_kernel * self.w_mask)
        if d_bias is not None:
            grads["bias"] = d_bias
        return dx, grads

    def _run_kernel(self):
        """Return the kernel the convolution runs: `kernel()` for a forward layer."""
        return self.kernel()

    def _kernel_grad(self, d_run):
        """Return the gradient of `kernel()` from that of `_run_kernel()`."""
        return d_run

    def _weight_grads(self, d_weight):
        """Return the gradients of the parameters the kernel is made of.

        From ``d_weight``, the gradient of the weights the mask multiplies.
        """
        return {"weight": d_weight}

    def _check_input(self, x):
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        rank = self.spatial + 2
        if len(shape) not in (rank - 1, rank):
            raise ValueError(f"x must be {rank}-D (batched) or {rank - 1}-D (one sample), got {len(shape)}-D "
                             f"shape {shape}")
        if shape[1 - rank:] != self.in_size:
            raise ValueError(f"x must have shape (N, *in_size) or in_size = {self.in_size}, got {shape}")

    def _arguments(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation, groups=self.groups,
                    channel_first=self.channel_first)

    def __repr__(self):  # noqa: D105
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"


class _ScaledWSConv(_Conv):
    """A `_Conv` whose weights are standardized first: everything of the ScaledWSConv layers."""

    def __init__(self, in_size: Sequence[int], out_channels: int, kernel_size: Ints, stride: Ints = 1,
                 padding: Padding = "SAME", lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1,
                 ws_gain: bool = True, eps: float = 1e-4,
                 w_init: Callable | Array = init.XavierNormal(),  # noqa: B008 - brainstate's default
                 b_init: Callable | Array | None = None, w_mask: Array | None = None, channel_first: bool = False,
                 name: str | None = None, param_type: type = ParamState, backend: str = "auto"):
        positive_number(eps, "eps")
        self.eps = eps
        self.ws_gain = bool(ws_gain)
        super().__init__(in_size, out_channels, kernel_size, stride, padding, lhs_dilation,
                         rhs_dilation, groups, w_init, b_init, w_mask, channel_first, name, param_type,
                         backend)

    def _init_params(self):
        params = super()._init_params()
        if self.ws_gain:
            params["gain"] = np.ones((*(1,) * (self.spatial + 1), self.out_channels), params["weight"].dtype)
        return params

    def kernel(self) -> np.ndarray:
        """Return the standardized weights (times the gain), the mask applied."""
        w = weight_standardization(self.weight.value["weight"], self.eps, self.weight.value.get("gain"),
                                   backend=self.backend)
        return w if self.w_mask is None else w * self.w_mask

    def _weight_grads(self, d_weight):
        params = self.weight.value
        dw, d_gain = weight_standardization_vjp(params["weight"], d_weight, self.eps, params.get("gain"))
        return {"weight": dw} if d_gain is None else {"weight": dw, "gain": d_gain}

    def _arguments(self):
        return {**super()._arguments(), "eps": self.eps}


class Conv1d(_Conv):
    """A 1-D convolution layer: ``brainstate.nn.Conv1d``, and `Conv3d` with one spatial axis.

    ``in_size`` is ``(W, Cin)`` (``(Cin, W)`` with ``channel_first``), the kernel
    ``(KW, Cin // groups, Cout)``, the bias ``(1, Cout)`` (``(1, Cout, 1)`` channels-first); two ints
    as ``padding`` are the axis's ``(lo, hi)`` pair. Everything else is as in `Conv3d`.
    """

    spatial = 1


class Conv2d(_Conv):
    """A 2-D convolution layer: ``brainstate.nn.Conv2d``, and `Conv3d` with two spatial axes.

    ``in_size`` is ``(H, W, Cin)`` (``(Cin, H, W)`` with ``channel_first``), the kernel
    ``(KH, KW, Cin // groups, Cout)``, the bias ``(1, 1, Cout)`` (``(1, Cout, 1, 1)`` channels-first).
    Everything else is as in `Conv3d`.
    """

    spatial = 2


class Conv3d(_Conv):
    """A 3-D convolution layer with the constructor, attributes and numbers of ``brainstate.nn.Conv3d``.

    `Conv1d` and `Conv2d` are the same with 1 and 2 spatial axes (``in_size`` of 2 or 3 entries,
    kernels ``(KW, Cin // groups, Cout)`` and ``(KH, KW, Cin // groups, Cout)``).

    Parameters
    ----------
    in_size : sequence of 4 ints
        One sample's shape: ``(D, H, W, Cin)``, or ``(Cin, D, H, W)`` with ``channel_first``.
    out_channels : int
        Cout.
    kernel_size : int or sequence of int
        The kernel's spatial size: one int for every axis, or 3.
    stride, padding, lhs_dilation, rhs_dilation, groups : optional
        As in `nbconv.conv3d`.
    w_init : initializer, callable or array_like, optional
        The weights: an initializer of `nbconv.init`, any callable ``f(shape, dtype=...)``, or an
        array of ``kernel_shape`` used as given. The default instance is shared by every layer that
        takes it, as in brainstate, so that successive layers draw different weights.
    b_init : initializer, callable or array_like, optional
        The bias, as ``w_init``; None for no bias.
    w_mask : array_like, optional
        Multiplies the weights (of ``kernel_shape``).
    channel_first : bool, optional
        Whether inputs and outputs have their channels before the spatial axes.
    name : str, optional
        The layer's name.
    param_type : type, optional
        The holder of the parameters, called with their dict.
    backend : {"auto", "cpu", "cuda"}, optional
        As in `nbconv.conv3d`.

    Attributes
    ----------
    in_size, out_size : tuple of int
        One sample's input and output shapes (``out_size`` computed without running a convolution).
    in_channels, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation, groups
        The normalized arguments.
    kernel_shape : tuple of int
        ``(KD, KH, KW, Cin // groups, Cout)``.
    weight : ParamState
        ``weight.value`` holds ``"weight"`` of ``kernel_shape`` and, with ``b_init``, ``"bias"`` of
        shape ``(1, 1, 1, Cout)`` (``(1, Cout, 1, 1, 1)`` channels-first); float32 by default.

    Raises
    ------
    ValueError
        An argument of the wrong form or size, named in the message (``in_size`` of another length,
        channels not divisible by ``groups``, a bad padding or kernel size...).
    TypeError
        An initializer that gives no real numbers.
    """

    spatial = 3


class ScaledWSConv1d(_ScaledWSConv):
    """``brainstate.nn.ScaledWSConv1d``: `ScaledWSConv3d` with one spatial axis.

    Shapes as in `Conv1d`; the gain is ``(1, 1, Cout)``.
    """

    spatial = 1


class ScaledWSConv2d(_ScaledWSConv):
    """``brainstate.nn.ScaledWSConv2d``: `ScaledWSConv3d` with two spatial axes.

    Shapes as in `Conv2d`; the gain is ``(1, 1, 1, Cout)``.
    """

    spatial = 2


class ScaledWSConv3d(_ScaledWSConv):
    """``brainstate.nn.ScaledWSConv3d``: a `Conv3d` whose weights are standardized first.

    The weights are standardized per output channel (`nbconv.weight_standardization`, times the
    ``"gain"`` parameter when ``ws_gain``), then masked, then convolved; then the bias is added.

    Parameters
    ----------
    in_size, out_channels, kernel_size, stride, padding, lhs_dilation, rhs_dilation, groups
        As in `Conv3d`.
    ws_gain : bool, optional
        Whether the layer has a ``"gain"`` parameter of shape ``(1, 1, 1, 1, Cout)``, initialized to
        ones.
    eps : float, optional
        The standardization's floor of ``var * fan_in``, a positive number.
    w_init, b_init, w_mask, channel_first, name, param_type, backend : optional
        As in `Conv3d`.

    Attributes
    ----------
    eps : float
        As given.

    Raises
    ------
    ValueError
        As `Conv3d`'s, and an ``eps`` that is not a positive number.
    """

    spatial = 3


class _ConvTranspose(_Conv):
    """A transposed convolution layer of `spatial` axes: everything of the ConvTranspose layers.

    brainstate runs ``conv_general_dilated`` with the stride as input dilation, the kernel
    ``(*kernel, Cout, Cin // groups)`` flipped and read with its channel axes swapped, and the pads
    of ``jax.lax.conv_transpose``: `nbconv.conv_transpose` with ``transpose_kernel=True``.
    """

    def __init__(self, in_size: Sequence[int], out_channels: int, kernel_size: Ints, stride: Ints = 1,
                 padding: Padding = "SAME", rhs_dilation: Ints = 1, groups: int = 1,
                 w_init: Callable | Array = init.XavierNormal(),  # noqa: B008 - brainstate's default
                 b_init: Callable | Array | None = None, w_mask: Array | None = None, channel_first: bool = False,
                 name: str | None = None, param_type: type = ParamState, backend: str = "auto"):
        super().__init__(in_size, out_channels, kernel_size, stride, padding, 1, rhs_dilation, groups, w_init,
                         b_init, w_mask, channel_first, name, param_type, backend)
        del self.lhs_dilation  # brainstate's transposed layers have none: the stride is their input dilation
        self.padding_mode = self.padding if isinstance(self.padding, str) else "explicit"

    def _kernel_shape(self):
        return (*self.kernel_size, self.out_channels, self.in_channels // self.groups)

    def _options(self):
        return transposed.forward_options(self.spatial, self.kernel_size, self.stride, self.padding,
                                          self.rhs_dilation, self.groups)

    def _run_kernel(self):
        return transposed.flip_and_swap(self.kernel())

    def _kernel_grad(self, d_run):
        return transposed.flip_and_swap(d_run)

    def _arguments(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                    stride=self.stride, padding=self.padding, rhs_dilation=self.rhs_dilation, groups=self.groups,
                    channel_first=self.channel_first)


class ConvTranspose1d(_ConvTranspose):
    """``brainstate.nn.ConvTranspose1d``: a transposed 1-D convolution (a learned upsampling).

    Parameters
    ----------
    in_size : sequence of 2 ints
        One sample's shape: ``(W, Cin)``, or ``(Cin, W)`` with ``channel_first``.
    out_channels : int
        Cout.
    kernel_size : int or sequence of int
        The kernel's spatial size.
    stride : int or sequence of int, optional
        The upsampling factor: the stride of the convolution this transposes.
    padding : str, int or sequence, optional
        ``"SAME"`` (``W * stride`` outputs), ``"VALID"`` (``(W - 1) * stride + k``, k the dilated
        kernel), or explicit pads of the dilated input, as in `nbconv.conv_transpose`.
    rhs_dilation, groups, w_init, b_init, w_mask, channel_first, name, param_type, backend : optional
        As in `Conv3d`.

    Attributes
    ----------
    kernel_shape : tuple of int
        ``(*kernel_size, Cout, Cin // groups)``, brainstate's layout for a transposed layer.
    padding_mode : str
        ``"SAME"``, ``"VALID"`` or ``"explicit"``.
    in_size, out_size, in_channels, out_channels, kernel_size, stride, padding, rhs_dilation, groups, weight
        As in `Conv3d` (no ``lhs_dilation``: the stride is the input dilation).
    """

    spatial = 1


class ConvTranspose2d(_ConvTranspose):
    """``brainstate.nn.ConvTranspose2d``: `ConvTranspose1d` with two spatial axes.

    ``in_size`` is ``(H, W, Cin)`` or ``(Cin, H, W)``; a U-Net's decoder upsamples with it.
    """

    spatial = 2


class ConvTranspose3d(_ConvTranspose):
    """``brainstate.nn.ConvTranspose3d``: `ConvTranspose1d` with three spatial axes.

    ``in_size`` is ``(D, H, W, Cin)`` or ``(Cin, D, H, W)``.
    """

    spatial = 3


def _in_size(in_size, spatial):
    try:
        size = tuple(in_size)
    except TypeError:
        raise ValueError(f"in_size must be a sequence of {spatial + 1} ints, got {in_size!r}") from None
    if len(size) != spatial + 1:
        raise ValueError(f"in_size must have {spatial + 1} entries ({spatial} spatial sizes and the channels), "
                         f"got {size}")
    return tuple(_positive_int(n, "in_size") for n in size)


def _positive_int(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _like_input(y, x):
    """Give the result back as the kind of array the caller passed.

    NumPy and device arrays as they come, Dask arrays lazy; other array-API arrays (JAX, ...) through
    their namespace's asarray.
    """
    if (isinstance(x, np.ndarray) or is_device_array(x) or is_dask_array(x)
            or not hasattr(x, "__array_namespace__")):
        return y
    return x.__array_namespace__().asarray(y)
