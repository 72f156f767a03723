"""nbconv's kernels inside JAX programs (``pip install 'nbconv[jax]'``), imported only when used.

`conv_general_dilated` (1-3 spatial axes) and `conv3d` take JAX arrays and work under ``jax.jit``,
``jax.grad``, ``jax.vmap`` and ``jax.lax.scan``. `Conv1d`, `Conv2d`, `Conv3d`, their ``ScaledWS``
forms and `ConvTranspose1d`/`2d`/`3d` are brainstate modules whose convolution runs on nbconv, and
`use_nbconv` switches an existing brainstate model over; they import brainstate when first used
(docs/jax.md).
"""
from nbconv.jax.functional import conv3d, conv_general_dilated

_BRAINSTATE = ("Conv1d", "Conv2d", "Conv3d", "ScaledWSConv1d", "ScaledWSConv2d", "ScaledWSConv3d", "ConvTranspose1d",
               "ConvTranspose2d", "ConvTranspose3d", "use_nbconv")
__all__ = ["conv_general_dilated", "conv3d", *_BRAINSTATE]


def __getattr__(name):
    if name in _BRAINSTATE:
        return getattr(_layers(), name)
    raise AttributeError(f"module 'nbconv.jax' has no attribute {name!r}")


def _layers():
    """Import nbconv.jax.layers, and with it brainstate, keeping the user's ``jax_enable_x64``.

    brainstate switches it off as it loads; the setting is kept as if brainstate had been imported
    before it was made.
    """
    import jax

    x64 = jax.config.jax_enable_x64
    from nbconv.jax import layers

    jax.config.update("jax_enable_x64", x64)
    return layers
