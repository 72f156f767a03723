"""Numba CPU kernels: `conv3d` picks the convolution kernel for a call; `standardize_columns` is the
weight standardization kernel."""
from nbconv.cpu.conv import conv3d
from nbconv.cpu.standardize import standardize_columns

__all__ = ["conv3d", "standardize_columns"]
