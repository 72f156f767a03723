"""nbconv: Numba-compiled direct 3-D convolution with the semantics of jax.lax.conv_general_dilated."""
from numba import set_num_threads, get_num_threads

from nbconv.dispatch import BackendUnavailableError
from nbconv.functional import conv3d

__all__ = ["conv3d", "BackendUnavailableError", "set_num_threads", "get_num_threads"]
__version__ = "0.1.0"
