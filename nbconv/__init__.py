"""nbconv: Numba-compiled direct 3-D convolution for NumPy.

The semantics of ``jax.lax.conv_general_dilated``, and layers that behave like
``brainstate.nn.Conv3d`` / ``ScaledWSConv3d``.
"""
from numba import get_num_threads, set_num_threads

from nbconv import init
from nbconv.dispatch import BackendUnavailableError
from nbconv.functional import conv1d, conv2d, conv3d, weight_standardization
from nbconv.gradients import conv1d_vjp, conv2d_vjp, conv3d_vjp, weight_standardization_vjp
from nbconv.layers import (
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    ParamState,
    ScaledWSConv1d,
    ScaledWSConv2d,
    ScaledWSConv3d,
)
from nbconv.transposed import conv_transpose, conv_transpose_vjp

__all__ = ["conv1d", "conv2d", "conv3d", "weight_standardization", "conv1d_vjp", "conv2d_vjp", "conv3d_vjp",
           "weight_standardization_vjp", "conv_transpose", "conv_transpose_vjp",
           "Conv1d", "Conv2d", "Conv3d", "ScaledWSConv1d", "ScaledWSConv2d", "ScaledWSConv3d",
           "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "ParamState", "init",
           "BackendUnavailableError", "set_num_threads", "get_num_threads"]
__version__ = "0.2.0"


def __getattr__(name):
    # nbconv.jax imports JAX: only when it is asked for (nbconv.jax.conv3d after `import nbconv`).
    if name == "jax":
        import importlib
        try:
            return importlib.import_module("nbconv.jax")
        except ImportError as err:  # an AttributeError, so that hasattr(nbconv, "jax") is False
            raise AttributeError(f"nbconv.jax needs JAX: pip install 'nbconv[jax]' ({err})") from err
    raise AttributeError(f"module 'nbconv' has no attribute {name!r}")
