"""The differentiable convolution of JAX arrays: a ``jax.custom_vjp`` over the primitives of
`nbconv.jax.primitives`, whose backward computes only the gradients that are asked for.

The forward learns from JAX which operands carry a gradient (``symbolic_zeros=True``): a layer's
input, a constant, needs no dx, and a frozen weight no dw. The backward runs `nbconv.conv3d_vjp` for
dx and dw in one call, and sums dy per channel for the bias in XLA.
"""
from functools import partial

import jax
from jax.custom_derivatives import SymbolicZero

from nbconv.jax.primitives import convolution_p, convolution_vjp_p


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def convolve(x, w, bias, options):
    """conv(x, w) + bias: channels-last ``x`` (N, D, H, W, Cin), DHWIO ``w``, ``bias`` (Cout,) or None,
    all of one float dtype; ``options`` as `nbconv.jax.primitives` names them."""
    return convolution_p.bind(x, w, *([] if bias is None else [bias]), options=options)[0]


def _forward(x, w, bias, options):
    y = convolve(x.value, w.value, None if bias is None else bias.value, options)
    # Which gradients the backward computes, carried in the residuals' structure: the keys of a dict
    # are part of a pytree's structure, and so static where the backward is traced.
    wanted = {name: None for name, operand in (("x", x), ("w", w), ("bias", bias))
              if operand is not None and operand.perturbed}
    return y, (x.value, w.value, wanted)


def _backward(options, residuals, dy):
    x, w, wanted = residuals
    if isinstance(dy, SymbolicZero):
        dy = dy.instantiate()
    wrt = tuple(name for name in ("x", "w") if name in wanted)
    grads = dict(zip(wrt, convolution_vjp_p.bind(x, w, dy, options=options, wrt=wrt) if wrt else ()))
    if "bias" in wanted:
        grads["bias"] = dy.sum(axis=(0, 1, 2, 3))
    return grads.get("x"), grads.get("w"), grads.get("bias")


convolve.defvjp(_forward, _backward, symbolic_zeros=True)
