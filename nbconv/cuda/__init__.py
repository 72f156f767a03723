"""Numba CUDA backend, imported only when a call needs it (see nbconv.dispatch.cuda_module)."""
from numba.cuda import to_device

from nbconv.cuda.launch import conv3d, standardize_columns, to_host

__all__ = ["conv3d", "standardize_columns", "to_device", "to_host"]
