"""Parameter initializers with brainstate's definitions, on NumPy random generators.

Each is a callable ``init(shape, dtype=np.float32) -> np.ndarray`` and takes ``seed=`` (an int, a
``numpy.random.Generator`` or None) for reproducibility.
"""
import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["Initializer", "Constant", "ZeroInit", "Normal", "TruncatedNormal", "Uniform",
           "VarianceScaling", "XavierNormal", "XavierUniform", "KaimingNormal", "KaimingUniform",
           "LecunNormal", "LecunUniform", "param"]

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it restores unit variance.
TRUNCATED_STD = 0.87962566103423978


class Initializer:
    """Base class: holds the random generator; subclasses implement `__call__(shape, dtype)`."""

    def __init__(self, seed=None):
        self.rng = np.random.default_rng(seed)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({args})"


class Constant(Initializer):
    def __init__(self, value=1.0):
        super().__init__()
        self.value = value

    def __call__(self, shape, dtype=np.float32):
        return np.full(shape, self.value, dtype)


class ZeroInit(Constant):
    def __init__(self):
        super().__init__(0.0)


class Normal(Initializer):
    def __init__(self, mean=0.0, scale=1.0, seed=None):
        super().__init__(seed)
        self.mean, self.scale = mean, scale

    def __call__(self, shape, dtype=np.float32):
        return self.rng.normal(self.mean, self.scale, size=shape).astype(dtype)


class TruncatedNormal(Initializer):
    """Normal(loc, scale) restricted to [loc + lower * scale, loc + upper * scale]."""

    def __init__(self, loc=0.0, scale=1.0, lower=-2.0, upper=2.0, seed=None):
        super().__init__(seed)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale!r}")
        if not lower < upper:
            raise ValueError(f"lower must be below upper, got lower={lower!r}, upper={upper!r}")
        self.loc, self.scale, self.lower, self.upper = loc, scale, lower, upper

    def __call__(self, shape, dtype=np.float32):
        unit = truncated_unit_normal(self.rng, shape, self.lower, self.upper)
        return (self.loc + self.scale * unit).astype(dtype)


class Uniform(Initializer):
    def __init__(self, min_val=0.0, max_val=1.0, seed=None):
        super().__init__(seed)
        self.min_val, self.max_val = min_val, max_val

    def __call__(self, shape, dtype=np.float32):
        return self.rng.uniform(self.min_val, self.max_val, size=shape).astype(dtype)


class VarianceScaling(Initializer):
    """Samples with variance ``scale / fan`` (fan_in, fan_out or their mean), fans taken from the
    kernel shape: ``in_axis`` and ``out_axis`` sizes times the receptive field (the other axes)."""

    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")

    def __init__(self, scale, mode, distribution, in_axis=-2, out_axis=-1, seed=None):
        super().__init__(seed)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {self.DISTRIBUTIONS}, got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution
        self.in_axis, self.out_axis = in_axis, out_axis

    def __call__(self, shape, dtype=np.float32):
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
    """A VarianceScaling subclass with brainstate's defaults for one named scheme."""

    def __init__(self, scale=scale, mode=mode, distribution=distribution, in_axis=-2, out_axis=-1,
                 seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, in_axis, out_axis, seed)

    return type(name, (VarianceScaling,), {"__init__": __init__, "__module__": __name__,
                                            "__doc__": f"VarianceScaling({scale}, {mode!r}, {distribution!r})."})


XavierNormal = _variance_scaling("XavierNormal", 1.0, "fan_avg", "truncated_normal")
XavierUniform = _variance_scaling("XavierUniform", 1.0, "fan_avg", "uniform")
KaimingNormal = _variance_scaling("KaimingNormal", 2.0, "fan_in", "truncated_normal")
KaimingUniform = _variance_scaling("KaimingUniform", 2.0, "fan_in", "uniform")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform")


def truncated_unit_normal(rng, shape, lower, upper):
    """Unit normal restricted to [lower, upper], by inverting the CDF of a uniform sample."""
    lo, hi = ndtr(lower), ndtr(upper)
    return np.clip(ndtri(rng.uniform(lo, hi, size=shape)), lower, upper)


def param(value, shape, name, dtype=np.float32):
    """A layer parameter from an initializer or callable ``f(shape, dtype=...)``, a scalar (filled
    in), or an array (used as given, shape-checked); None stays None."""
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
