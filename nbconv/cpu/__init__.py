"""Numba CPU backend: the entries every backend offers (`nbconv.dispatch`)."""
from nbconv.cpu.backend import convolve, standardize_columns

__all__ = ["convolve", "standardize_columns"]
