"""Numba CPU kernels; `conv3d` picks the kernel for a call."""
from nbconv.cpu.conv import conv3d

__all__ = ["conv3d"]
