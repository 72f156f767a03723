"""Conv3d and ScaledWSConv3d: brainstate's layers on nbconv's kernels.

Their constructors, attributes, errors and numbers are brainstate's.
"""
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from nbconv import init
from nbconv.call import Array, Ints, Padding, is_dask_array, is_device_array, positive_number
from nbconv.functional import conv3d, weight_standardization
from nbconv.geometry import conv_geometry, normalize_padding, spatial_triple
from nbconv.gradients import conv3d_vjp, weight_standardization_vjp


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


class Conv3d:
    """A 3-D convolution layer with the constructor, attributes and numbers of ``brainstate.nn.Conv3d``.

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

    def __init__(self, in_size: Sequence[int], out_channels: int, kernel_size: Ints, stride: Ints = 1,
                 padding: Padding = "SAME", lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1,
                 w_init: Callable | Array = init.XavierNormal(),  # noqa: B008 - brainstate's default
                 b_init: Callable | Array | None = None, w_mask: Array | None = None, channel_first: bool = False,
                 name: str | None = None, param_type: type = ParamState, backend: str = "auto"):
        self.name = name
        self.backend = backend
        self.channel_first = bool(channel_first)
        self.in_size = _in_size(in_size)
        self.in_channels = self.in_size[0] if self.channel_first else self.in_size[-1]
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.kernel_size = spatial_triple(kernel_size, "kernel_size")
        self.stride = spatial_triple(stride, "stride")
        self.lhs_dilation = spatial_triple(lhs_dilation, "lhs_dilation")
        self.rhs_dilation = spatial_triple(rhs_dilation, "rhs_dilation")
        self.padding = normalize_padding(padding)
        self.groups = _positive_int(groups, "groups")
        for what, count in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if count % self.groups:
                raise ValueError(f"{what} ({count}) must be divisible by groups ({self.groups})")
        self.kernel_shape = (*self.kernel_size, self.in_channels // self.groups, self.out_channels)
        self.w_mask = init.param(w_mask, self.kernel_shape, "w_mask")
        self.w_initializer, self.b_initializer = w_init, b_init
        self.weight = param_type(self._init_params())
        self.out_size = self._out_size()

    def _init_params(self):
        params = {"weight": init.param(self.w_initializer, self.kernel_shape, "w_init")}
        if self.b_initializer is not None:
            shape = (1, self.out_channels, 1, 1, 1) if self.channel_first else (1, 1, 1, self.out_channels)
            params["bias"] = init.param(self.b_initializer, shape, "b_init")
        return params

    def _out_size(self):
        geometry = conv_geometry((1, *self.in_size), self.kernel_shape, stride=self.stride,
                                 padding=self.padding, lhs_dilation=self.lhs_dilation,
                                 rhs_dilation=self.rhs_dilation, groups=self.groups,
                                 channel_first=self.channel_first)
        d, h, w = geometry.out_spatial
        return (self.out_channels, d, h, w) if self.channel_first else (d, h, w, self.out_channels)

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
        y = conv3d(x, self.kernel(), stride=self.stride,
                   padding=self.padding, lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
                   groups=self.groups, bias=self.weight.value.get("bias"),
                   channel_first=self.channel_first, backend=self.backend)
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
        dx, d_kernel, d_bias = conv3d_vjp(x, self.kernel(), dy, stride=self.stride, padding=self.padding,
                                          lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
                                          groups=self.groups, bias=params.get("bias"),
                                          channel_first=self.channel_first, wrt=wrt, backend=self.backend)
        grads = self._weight_grads(d_kernel if self.w_mask is None else d_kernel * self.w_mask)
        if d_bias is not None:
            grads["bias"] = d_bias
        return dx, grads

    def _weight_grads(self, d_weight):
        """Return the gradients of the parameters the kernel is made of.

        From ``d_weight``, the gradient of the weights the mask multiplies.
        """
        return {"weight": d_weight}

    def _check_input(self, x):
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if len(shape) not in (4, 5):
            raise ValueError(f"x must be 5-D (batched) or 4-D (one sample), got {len(shape)}-D shape {shape}")
        if shape[-4:] != self.in_size:
            raise ValueError(f"x must have shape (N, *in_size) or in_size = {self.in_size}, got {shape}")

    def _arguments(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation, groups=self.groups,
                    channel_first=self.channel_first)

    def __repr__(self):  # noqa: D105
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"


class ScaledWSConv3d(Conv3d):
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
            params["gain"] = np.ones((1, 1, 1, 1, self.out_channels), params["weight"].dtype)
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


def _in_size(in_size):
    try:
        size = tuple(in_size)
    except TypeError:
        raise ValueError(f"in_size must be a sequence of 4 ints, got {in_size!r}") from None
    if len(size) != 4:
        raise ValueError(f"in_size must have 4 entries (3 spatial sizes and the channels), got {size}")
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
