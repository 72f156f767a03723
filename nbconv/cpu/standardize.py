"""Weight standardization kernel (brainstate's formula), per output channel of a (fan_in, Cout) matrix.

Two passes in float64 (mean, then the sum of squared deviations), so float32 weights keep full
accuracy; no fast-math, so the final `w * scale - mean * scale` rounds as brainstate writes it.
"""
import numpy as np
from numba import njit

from nbconv.config import CACHE


@njit(error_model="numpy", cache=CACHE)
def standardize_columns(w, eps, gain, out):
    """out[:, c] = gain[c] * (w[:, c] - mean) / sqrt(max(var * fan_in, eps)), written as brainstate does."""
    fan_in, cout = w.shape
    mean = np.zeros(cout)
    for i in range(fan_in):
        for c in range(cout):
            mean[c] += w[i, c]
    mean /= fan_in
    squares = np.zeros(cout)
    for i in range(fan_in):
        for c in range(cout):
            d = w[i, c] - mean[c]
            squares[c] += d * d
    for c in range(cout):
        spread = squares[c]  # = var * fan_in, var being the population variance
        if not spread > eps and spread == spread:  # NaN passes through, as in jnp.maximum
            spread = eps
        scale = gain[c] / np.sqrt(spread)
        shift = mean[c] * scale
        for i in range(fan_in):
            out[i, c] = w[i, c] * scale - shift
