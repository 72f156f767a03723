"""Parameter initializers with brainstate's definitions, on NumPy random generators.

Each is a callable ``init(shape, dtype=np.float32) -> np.ndarray`` and takes ``seed=`` (an int, a
``numpy.random.Generator`` or None) for reproducibility.
"""
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike
from scipy.special import ndtr, ndtri

__all__ = ["Initializer", "Constant", "ZeroInit", "Normal", "TruncatedNormal", "Uniform",
           "VarianceScaling", "XavierNormal", "XavierUniform", "KaimingNormal", "KaimingUniform",
           "LecunNormal", "LecunUniform", "param"]

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it restores unit variance.
TRUNCATED_STD = 0.87962566103423978


Seed = int | np.random.Generator | None


class Initializer:
    """Base class: holds the random generator; subclasses implement ``__call__(shape, dtype)``.

    Parameters
    ----------
    seed : int, numpy.random.Generator or None, optional
        The seed of the initializer's own generator (None: fresh entropy).
    """

    def __init__(self, seed: Seed = None):
        self.rng = np.random.default_rng(seed)

    def __repr__(self):  # noqa: D105
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({args})"


class Constant(Initializer):
    """Every element ``value``.

    Parameters
    ----------
    value : float, optional
        The value of every element.
    """

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.value = value

    def __call__(self, shape: Sequence[int], dtype: DTypeLike = np.float32) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype``."""
        return np.full(shape, self.value, dtype)


class ZeroInit(Constant):
    """Zeros."""

    def __init__(self):
        super().__init__(0.0)


class Normal(Initializer):
    """Normal samples.

    Parameters
    ----------
    mean, scale : float, optional
        Their mean and standard deviation.
    seed : int, numpy.random.Generator or None, optional
        The seed of the initializer's own generator.
    """

    def __init__(self, mean: float = 0.0, scale: float = 1.0, seed: Seed = None):
        super().__init__(seed)
        self.mean, self.scale = mean, scale

    def __call__(self, shape: Sequence[int], dtype: DTypeLike = np.float32) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype``."""
        return self.rng.normal(self.mean, self.scale, size=shape).astype(dtype)


class TruncatedNormal(Initializer):
    """Normal(loc, scale) samples restricted to [loc + lower * scale, loc + upper * scale].

    Parameters
    ----------
    loc, scale : float, optional
        The mean and standard deviation of the normal before truncation; scale positive.
    lower, upper : float, optional
        The bounds in standard deviations from ``loc``; lower below upper.
    seed : int, numpy.random.Generator or None, optional
        The seed of the initializer's own generator.

    Raises
    ------
    ValueError
        A scale that is not positive, or bounds out of order.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0, lower: float = -2.0, upper: float = 2.0,
                 seed: Seed = None):
        super().__init__(seed)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if not lower < upper:
            raise ValueError(f"lower must be below upper, got lower={lower!r}, upper={upper!r}")
        self.loc, self.scale, self.lower, self.upper = loc, scale, lower, upper

    def __call__(self, shape: Sequence[int], dtype: DTypeLike = np.float32) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype``."""
        unit = truncated_unit_normal(self.rng, shape, self.lower, self.upper)
        return (self.loc + self.scale * unit).astype(dtype)


class Uniform(Initializer):
    """Uniform samples.

    Parameters
    ----------
    min_val, max_val : float, optional
        The interval ``[min_val, max_val)``.
    seed : int, numpy.random.Generator or None, optional
        The seed of the initializer's own generator.
    """

    def __init__(self, min_val: float = 0.0, max_val: float = 1.0, seed: Seed = None):
        super().__init__(seed)
        self.min_val, self.max_val = min_val, max_val

    def __call__(self, shape: Sequence[int], dtype: DTypeLike = np.float32) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype``."""
        return self.rng.uniform(self.min_val, self.max_val, size=shape).astype(dtype)


class VarianceScaling(Initializer):
    """Samples with variance ``scale / fan``, the fan being fan_in, fan_out or their mean.

    The fans come from the kernel shape: the ``in_axis`` and ``out_axis`` sizes times the receptive
    field (the other axes).

    Parameters
    ----------
    scale : float
        The variance times the fan.
    mode : {"fan_in", "fan_out", "fan_avg"}
        Which fan.
    distribution : {"truncated_normal", "normal", "uniform"}
        The samples' distribution; the truncated normal is cut at two standard deviations and
        rescaled to the variance.
    in_axis, out_axis : int, optional
        The kernel shape's input and output channel axes.
    seed : int, numpy.random.Generator or None, optional
        The seed of the initializer's own generator.

    Raises
    ------
    ValueError
        An unknown mode or distribution.
    """

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

    def __init__(self, scale: float, mode: str, distribution: str, in_axis: int = -2, out_axis: int = -1,
                 seed: Seed = None):
        super().__init__(seed)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {self.DISTRIBUTIONS}, got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution
        self.in_axis, self.out_axis = in_axis, out_axis

    def __call__(self, shape: Sequence[int], dtype: DTypeLike = np.float32) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype``."""
        variance = self.scale / self._fan(shape)
        if self.distribution == "truncated_normal":
            sample = truncated_unit_normal(self.rng, shape, -2.0, 2.0) * np.sqrt(variance) / TRUNCATED_STD
        elif self.distribution == "normal":
            sample = self.rng.standard_normal(shape) * np.sqrt(variance)
        else:
            sample = self.rng.uniform(-1.0, 1.0, size=shape) * np.sqrt(3.0 * variance)
        return sample.astype(dtype)

    def _fan(self, shape):
        receptive = np.prod(shape) / shape[self.in_axis] / shape[self.out_axis]
        fan_in, fan_out = shape[self.in_axis] * receptive, shape[self.out_axis] * receptive
        return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]


def _variance_scaling(name, scale, mode, distribution):
    """Make a VarianceScaling subclass with brainstate's defaults for one named scheme."""

    def __init__(self, scale: float = scale, mode: str = mode, distribution: str = distribution, in_axis: int = -2,
                 out_axis: int = -1, seed: Seed = None):
        VarianceScaling.__init__(self, scale, mode, distribution, in_axis, out_axis, seed)

    return type(name, (VarianceScaling,), {"__init__": __init__, "__module__": __name__,
                                            "__doc__": f"`VarianceScaling` with scale={scale}, mode={mode!r}, "
                                                       f"distribution={distribution!r} by default (same parameters)."})


XavierNormal = _variance_scaling("XavierNormal", 1.0, "fan_avg", "truncated_normal")
XavierUniform = _variance_scaling("XavierUniform", 1.0, "fan_avg", "uniform")
KaimingNormal = _variance_scaling("KaimingNormal", 2.0, "fan_in", "truncated_normal")
KaimingUniform = _variance_scaling("KaimingUniform", 2.0, "fan_in", "uniform")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform")


def truncated_unit_normal(rng, shape, lower, upper):
    """Draw unit normals restricted to [lower, upper], by inverting the CDF of a uniform sample."""
    lo, hi = ndtr(lower), ndtr(upper)
    return np.clip(ndtri(rng.uniform(lo, hi, size=shape)), lower, upper)


def param(value: Any, shape: Sequence[int], name: str, dtype: DTypeLike = np.float32) -> np.ndarray | None:
    """Make a layer parameter of ``shape``.

    From an initializer or callable ``f(shape, dtype=...)``, a scalar (filled in), or an array (used
    as given, shape-checked); None stays None. ``name`` names the argument in errors.
    """
    if value is None:
        return None
    shape = tuple(shape)
    if callable(value):
        array = np.asarray(value(shape, dtype=dtype))
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must return real numbers, got dtype {array.dtype}")
        what = "returned"
    else:
        array = _real_array(value, name)
        if array.ndim == 0:
            return np.full(shape, array, dtype)
        what = "has"
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, but it {what} shape {array.shape}")
    return array


def _real_array(value, name):
    """`value` as an array of real numbers (bools too: masks), or a TypeError naming `name`."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an initializer, a callable f(shape, dtype=...), a real number or an "
                        f"array of them, got {value!r}")
    return array
