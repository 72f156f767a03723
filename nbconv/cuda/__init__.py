"""Numba CUDA backend, imported only when a call needs it (see nbconv.dispatch.cuda_module)."""
from nbconv.cuda.launch import conv3d, weight_standardization

__all__ = ["conv3d", "weight_standardization"]
