"""brainstate's ``Conv3d`` and ``ScaledWSConv3d`` with their convolution on nbconv's kernels.

Each is a subclass of brainstate's module that changes only the call of
``jax.lax.conv_general_dilated`` into `nbconv.jax.conv_general_dilated`: the constructor, checks,
attributes and ``ParamState`` are brainstate's own, so a state dict moves between the two
unchanged, and `use_nbconv` can switch the modules of a built model in place.
"""
import brainstate
from brainstate.nn import weight_standardization

from nbconv.jax.functional import conv_general_dilated


def _convolve(layer, x, w, params):
    """Brainstate's ``_conv_op`` from the weights on: mask, convolution on nbconv's kernels, bias."""
    if layer.w_mask is not None:
        w = w * layer.w_mask
    y = conv_general_dilated(x, w, window_strides=layer.stride, padding=layer.padding,
                             lhs_dilation=layer.lhs_dilation, rhs_dilation=layer.rhs_dilation,
                             feature_group_count=layer.groups, dimension_numbers=layer.dimension_numbers)
    return y + params["bias"] if "bias" in params else y


# The classes add no attributes, so that `use_nbconv` can change the class of a built module.

class Conv3d(brainstate.nn.Conv3d):
    """``brainstate.nn.Conv3d`` whose convolution runs on nbconv's CPU kernels.

    The same arguments, attributes, parameters and errors as brainstate's module; see
    ``brainstate.nn.Conv3d``.
    """

    def _conv_op(self, x, params):
        return _convolve(self, x, params["weight"], params)


class ScaledWSConv3d(brainstate.nn.ScaledWSConv3d):
    """``brainstate.nn.ScaledWSConv3d`` whose convolution runs on nbconv's CPU kernels.

    brainstate standardizes the weights (in XLA: they are small), then nbconv convolves. The same
    arguments, attributes, parameters and errors as brainstate's module; see
    ``brainstate.nn.ScaledWSConv3d``.
    """

    def _conv_op(self, x, params):
        return _convolve(self, x, weight_standardization(params["weight"], self.eps, params.get("gain")), params)


# brainstate's class -> nbconv's, and back.
_SWITCHES = {brainstate.nn.Conv3d: Conv3d, brainstate.nn.ScaledWSConv3d: ScaledWSConv3d}
_BACK = {ours: theirs for theirs, ours in _SWITCHES.items()}


def use_nbconv(model: brainstate.nn.Module, enable: bool = True) -> brainstate.nn.Module:
    """Switch every ``Conv3d`` and ``ScaledWSConv3d`` module of a brainstate model to nbconv's kernels.

    The modules keep their states, parameters and attributes: only their class changes (to
    `Conv3d` / `ScaledWSConv3d` of this package, subclasses that add nothing but the kernels), so a
    function already jitted on the model must be traced again to see it. Modules of exactly
    brainstate's two classes are switched; a subclass of them, which may compute its own way, is
    left as it is.

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
