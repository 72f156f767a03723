"""weight_standardization against an independent NumPy implementation of brainstate's formula."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from tests.support import BACKEND, SIMULATED


def standardize_reference(w, eps, gain=None, out_axis=-1):
    """gain * (w - mean) / sqrt(max(var * fan_in, eps)), per output channel, in float64."""
    return _standardize_parts(w, eps, gain, out_axis)[0]


def _standardize_parts(w, eps, gain, out_axis):
    """The reference result, |scale| and mean(|w|) per channel (what the rounding errors scale with)."""
    w = np.asarray(w, np.float64)
    axes = tuple(i for i in range(w.ndim) if i != out_axis % w.ndim)
    fan_in = np.prod([w.shape[i] for i in axes])
    mean = w.mean(axis=axes, keepdims=True)
    scale = 1 / np.sqrt(np.maximum(w.var(axis=axes, keepdims=True) * fan_in, eps))
    if gain is not None:
        scale = scale * np.asarray(gain, np.float64).reshape(mean.shape if np.size(gain) > 1 else ())
    return (w - mean) * scale, np.abs(scale), np.abs(w).mean(axis=axes, keepdims=True)


@settings(max_examples=10 if SIMULATED else 60, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), data=st.data(),
       dtype=st.sampled_from(["float32", "float64"]), with_gain=st.booleans(),
       eps=st.sampled_from([1e-4, 1e-2, 1.0]))
def test_matches_formula(shape, data, dtype, with_gain, eps):
    out_axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    gain = rng.uniform(0.5, 2, shape[out_axis]).astype(dtype) if with_gain else None
    got = nbconv.weight_standardization(w, eps, gain, out_axis, backend=BACKEND)
    want, scale, magnitude = _standardize_parts(w, eps, gain, out_axis)
    assert got.dtype == np.dtype(dtype) and got.shape == w.shape
    # Both sides evaluate in float64: the summed mean is off by up to n*u64*mean(|w|) (n = fan_in),
    # the scale by a relative n*u64, and w - mean (or nbconv's w*scale - mean*scale) cancels, so each
    # side is within (n + 4) * u64 * (|want| + |scale| * (|w| + mean(|w|))) of the exact value.
    # nbconv then rounds once to the weights' dtype (u * |want|).
    n = w.size // w.shape[out_axis]
    u64 = np.finfo(np.float64).eps / 2
    bound = np.finfo(dtype).eps / 2 * np.abs(want) + 2 * (n + 4) * u64 * (
        np.abs(want) + scale * (np.abs(w.astype(np.float64)) + magnitude))
    assert (np.abs(got - want) <= bound).all(), np.max(np.abs(got - want) / bound)


def test_zero_variance_stays_finite():
    w = np.full((3, 3, 3, 4, 8), 0.25, np.float32)
    got = nbconv.weight_standardization(w, backend=BACKEND)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.zeros_like(w))


def test_nan_propagates_to_its_channel_only():
    w = np.random.default_rng(0).standard_normal((2, 2, 2, 3, 4))
    w[0, 0, 0, 0, 1] = np.nan
    got = nbconv.weight_standardization(w, backend=BACKEND)
    assert np.isnan(got[..., 1]).all() and np.isfinite(np.delete(got, 1, axis=-1)).all()


def test_float16_is_computed_in_float32():
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 2, 4)).astype(np.float16)
    got = nbconv.weight_standardization(w, backend=BACKEND)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, standardize_reference(w, 1e-4), rtol=2**-10, atol=2**-12)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(eps=0.0), ValueError, "eps must be a positive"),
    (dict(eps=-1.0), ValueError, "eps must be a positive"),
    (dict(out_axis=5), ValueError, "out_axis must be an int"),
    (dict(out_axis=1.0), ValueError, "out_axis must be an int"),
    (dict(gain=np.ones(3)), ValueError, "gain must have 1 or Cout = 4"),
    (dict(w=np.ones(4, complex)), TypeError, "w must be real"),
    (dict(w=np.float32(1.0)), ValueError, "w must have at least one axis"),
    (dict(eps="1e-4"), ValueError, "eps must be a positive number"),
    (dict(eps=True), ValueError, "eps must be a positive number"),
    (dict(eps=np.ones(2)), ValueError, "eps must be a positive number"),
    (dict(eps=float("nan")), ValueError, "eps must be a positive number"),
    (dict(out_axis=True), ValueError, "out_axis must be an int"),
    (dict(gain=np.ones(4, complex)), TypeError, "gain must be real; complex dtype"),
    (dict(w=None), TypeError, "w must be an array, got None"),
])
def test_bad_arguments(kwargs, error, message):
    args = {"w": np.ones((2, 2, 2, 3, 4), np.float32), **kwargs}
    with pytest.raises(error, match=message):
        nbconv.weight_standardization(args.pop("w"), backend=BACKEND, **args)
