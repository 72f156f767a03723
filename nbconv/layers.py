"""Conv3d and ScaledWSConv3d: brainstate's layers (constructor, attributes, errors, numbers) on nbconv."""
import numbers

import numpy as np

from nbconv import init
from nbconv.chunked import is_dask_array
from nbconv.dispatch import is_device_array
from nbconv.functional import conv3d, positive_number, weight_standardization
from nbconv.geometry import conv_geometry, normalize_padding, spatial_triple
from nbconv.gradients import conv3d_vjp, weight_standardization_vjp


class ParamState:
    """A trainable value, as brainstate's ParamState: here a dict of NumPy arrays in `.value`."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        shapes = {k: getattr(v, "shape", None) for k, v in self.value.items()}
        return f"{type(self).__name__}({shapes})"


class Conv3d:
    """3-D convolution layer with the constructor, attributes and numbers of ``brainstate.nn.Conv3d``.

    ``in_size`` is one sample's shape: (D, H, W, Cin), or (Cin, D, H, W) with ``channel_first``.
    Parameters live in ``self.weight.value``: ``"weight"`` of ``kernel_shape`` and, with ``b_init``,
    ``"bias"`` of shape (1, 1, 1, Cout) (or (1, Cout, 1, 1, 1) channels-first).
    """

    def __init__(self, in_size, out_channels, kernel_size, stride=1, padding="SAME", lhs_dilation=1,
                 rhs_dilation=1, groups=1, w_init=init.XavierNormal(), b_init=None, w_mask=None,
                 channel_first=False, name=None, param_type=ParamState, backend="auto"):
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

    def kernel(self):
        """The weights the convolution uses (the mask applied)."""
        w = self.weight.value["weight"]
        return w if self.w_mask is None else w * self.w_mask

    def update(self, x):
        self._check_input(x)
        y = conv3d(x if is_device_array(x) or is_dask_array(x) else np.asarray(x), self.kernel(), stride=self.stride,
                   padding=self.padding, lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
                   groups=self.groups, bias=self.weight.value.get("bias"),
                   channel_first=self.channel_first, backend=self.backend)
        return _like_input(y, x)

    __call__ = update

    def vjp(self, x, dy):
        """(dx, grads): the vector-Jacobian product of ``self(x)`` with the cotangent `dy` (the
        output's shape). grads has the keys and shapes of ``self.weight.value``: enough for an SGD
        or Adam step on them."""
        self._check_input(x)
        params = self.weight.value
        wrt = ("x", "w", "bias") if "bias" in params else ("x", "w")
        dx, d_kernel, d_bias = conv3d_vjp(np.asarray(x), self.kernel(), dy, stride=self.stride, padding=self.padding,
                                          lhs_dilation=self.lhs_dilation, rhs_dilation=self.rhs_dilation,
                                          groups=self.groups, bias=params.get("bias"),
                                          channel_first=self.channel_first, wrt=wrt, backend=self.backend)
        grads = self._weight_grads(d_kernel if self.w_mask is None else d_kernel * self.w_mask)
        if d_bias is not None:
            grads["bias"] = d_bias
        return dx, grads

    def _weight_grads(self, d_weight):
        """The gradients of the parameters the kernel is made of, from the gradient of the weights
        the mask multiplies."""
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

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"


class ScaledWSConv3d(Conv3d):
    """``brainstate.nn.ScaledWSConv3d``: the weights are standardized per output channel
    (``nbconv.weight_standardization``, times the ``"gain"`` parameter when ``ws_gain``), then
    masked, then convolved, then the bias is added."""

    def __init__(self, in_size, out_channels, kernel_size, stride=1, padding="SAME", lhs_dilation=1,
                 rhs_dilation=1, groups=1, ws_gain=True, eps=1e-4, w_init=init.XavierNormal(),
                 b_init=None, w_mask=None, channel_first=False, name=None, param_type=ParamState,
                 backend="auto"):
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

    def kernel(self):
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
    """Give the result back as the kind of array the caller passed: NumPy and device arrays as they
    come, Dask arrays lazy; other array-API arrays (JAX, ...) through their namespace's asarray."""
    if (isinstance(x, np.ndarray) or is_device_array(x) or is_dask_array(x)
            or not hasattr(x, "__array_namespace__")):
        return y
    return x.__array_namespace__().asarray(y)
