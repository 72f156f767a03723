"""Numba CUDA backend, imported only when a call needs it (`nbconv.dispatch.cuda_module`): the
entries every backend offers."""
from numba.cuda import to_device

from nbconv.cuda.gradients import vjp
from nbconv.cuda.launch import as_device, convolve, standardize_columns, to_host

__all__ = ["as_device", "convolve", "standardize_columns", "to_device", "to_host", "vjp"]
