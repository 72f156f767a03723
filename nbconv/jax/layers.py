"""brainstate's convolution modules with their convolution on nbconv's kernels.

``Conv1d``, ``Conv2d``, ``Conv3d``, ``ScaledWSConv1d``/``2d``/``3d`` and ``ConvTranspose1d``/``2d``/``3d``.

Each is a subclass of brainstate's module that changes only the call of
``jax.lax.conv_general_dilated`` into `nbconv.jax.conv_general_dilated`: the constructor, checks,
attributes and ``ParamState`` are brainstate's own, so a state dict moves between the two
unchanged, and `use_nbconv` can switch the modules of a built model in place.
"""
import brainstate
import jax.numpy as jnp
from brainstate.nn import weight_standardization

from nbconv.jax.functional import conv_general_dilated


def _convolve(layer, x, w, params, window_strides, padding, lhs_dilation):
    """Brainstate's ``_conv_op`` from the (masked) weights on: the convolution on nbconv's kernels, the bias."""
    y = conv_general_dilated(x, w, window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                             rhs_dilation=layer.rhs_dilation, feature_group_count=layer.groups,
                             dimension_numbers=layer.dimension_numbers)
    return y + params["bias"] if "bias" in params else y


def _masked(layer, w):
    return w if layer.w_mask is None else w * layer.w_mask


def _on_kernels(layer, x, params):
    """``_conv_op`` of brainstate's convolution modules, on nbconv's kernels."""
    return _convolve(layer, x, _masked(layer, params["weight"]), params, layer.stride, layer.padding,
                     layer.lhs_dilation)


def _standardized_on_kernels(layer, x, params):
    """``_conv_op`` of brainstate's weight-standardized modules: standardized in XLA, convolved here.

    The weights are small: brainstate's own standardization of them costs little.
    """
    w = weight_standardization(params["weight"], layer.eps, params.get("gain"))
    return _convolve(layer, x, _masked(layer, w), params, layer.stride, layer.padding, layer.lhs_dilation)


def _transposed_on_kernels(layer, x, params):
    """``_conv_op`` of brainstate's transposed modules, on nbconv's kernels.

    As brainstate computes it: the masked kernel flipped along its spatial axes, over the input
    dilated by the stride, with the pads brainstate resolves (``jax.lax.conv_transpose``'s).
    """
    spatial = layer.num_spatial_dims
    w = jnp.flip(_masked(layer, params["weight"]), axis=tuple(range(spatial)))
    return _convolve(layer, x, w, params, (1,) * spatial, layer._resolve_padding(), layer.stride)


# The classes add no attributes (and have brainstate's class as their only base), so that `use_nbconv`
# can change the class of a built module.

class Conv1d(brainstate.nn.Conv1d):
    """``brainstate.nn.Conv1d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _on_kernels


class Conv2d(brainstate.nn.Conv2d):
    """``brainstate.nn.Conv2d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _on_kernels


class Conv3d(brainstate.nn.Conv3d):
    """``brainstate.nn.Conv3d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _on_kernels


class ScaledWSConv1d(brainstate.nn.ScaledWSConv1d):
    """``brainstate.nn.ScaledWSConv1d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _standardized_on_kernels


class ScaledWSConv2d(brainstate.nn.ScaledWSConv2d):
    """``brainstate.nn.ScaledWSConv2d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _standardized_on_kernels


class ScaledWSConv3d(brainstate.nn.ScaledWSConv3d):
    """``brainstate.nn.ScaledWSConv3d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _standardized_on_kernels


class ConvTranspose1d(brainstate.nn.ConvTranspose1d):
    """``brainstate.nn.ConvTranspose1d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _transposed_on_kernels


class ConvTranspose2d(brainstate.nn.ConvTranspose2d):
    """``brainstate.nn.ConvTranspose2d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _transposed_on_kernels


class ConvTranspose3d(brainstate.nn.ConvTranspose3d):
    """``brainstate.nn.ConvTranspose3d`` on nbconv's CPU kernels: its arguments, attributes and errors."""

    _conv_op = _transposed_on_kernels


# brainstate's class -> nbconv's, and back.
_SWITCHES = {ours.__bases__[0]: ours for ours in (Conv1d, Conv2d, Conv3d, ScaledWSConv1d, ScaledWSConv2d,
                                                    ScaledWSConv3d, ConvTranspose1d, ConvTranspose2d,
                                                    ConvTranspose3d)}
_BACK = {ours: theirs for theirs, ours in _SWITCHES.items()}


def use_nbconv(model: brainstate.nn.Module, enable: bool = True) -> brainstate.nn.Module:
    """Switch the convolution modules of a brainstate model to nbconv's kernels.

    Every ``Conv1d``/``2d``/``3d``, ``ScaledWSConv1d``/``2d``/``3d`` and ``ConvTranspose1d``/``2d``/``3d``
    module keeps its states, parameters and attributes: only its class changes (to the class of the
    same name in this package, a subclass that adds nothing but the kernels), so a function already
    jitted on the model must be traced again to see it. Modules of exactly brainstate's nine
    classes are switched; a subclass of them, which may compute its own way, is left as it is.

    Parameters
    ----------
    model : brainstate.nn.Module
        The model, or a single module; changed in place.
    enable : bool, optional
        False switches nbconv's modules back to brainstate's.

    Returns
    -------
    brainstate.nn.Module
        `model`, for chaining.

    Examples
    --------
    >>> import brainstate, nbconv.jax
    >>> net = brainstate.nn.Sequential(brainstate.nn.Conv3d((8, 8, 8, 2), 4, 3), brainstate.nn.ReLU())
    >>> type(nbconv.jax.use_nbconv(net).layers[0]).__module__
    'nbconv.jax.layers'
    """
    classes = _SWITCHES if enable else _BACK
    for module in model.nodes().values():
        if type(module) in classes:
            module.__class__ = classes[type(module)]
    return model
