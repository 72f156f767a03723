"""Initializer statistics on large kernels: mean, variance, truncation bound, reproducibility."""
import numpy as np
import pytest

from nbconv import init

SHAPE = (5, 5, 5, 64, 128)  # 1,024,000 samples; fan_in = 8000, fan_out = 16000
FAN_IN, FAN_OUT = 125 * 64, 125 * 128

SCHEMES = [
    (init.XavierNormal, 1.0 / ((FAN_IN + FAN_OUT) / 2), 2.0 / 0.87962566103423978),
    (init.XavierUniform, 1.0 / ((FAN_IN + FAN_OUT) / 2), np.sqrt(3)),
    (init.KaimingNormal, 2.0 / FAN_IN, 2.0 / 0.87962566103423978),
    (init.KaimingUniform, 2.0 / FAN_IN, np.sqrt(3)),
    (init.LecunNormal, 1.0 / FAN_IN, 2.0 / 0.87962566103423978),
    (init.LecunUniform, 1.0 / FAN_IN, np.sqrt(3)),
]


@pytest.mark.parametrize("cls, variance, bound_in_std", SCHEMES, ids=lambda v: getattr(v, "__name__", ""))
def test_variance_scaling_statistics(cls, variance, bound_in_std):
    w = cls(seed=0)(SHAPE)
    n = w.size
    assert w.shape == SHAPE and w.dtype == np.float32
    std = np.sqrt(variance)
    # 6-sigma bounds for the sample mean and variance (kurtosis of these laws is below 3).
    assert abs(w.mean()) < 6 * std / np.sqrt(n)
    assert abs(w.var() / variance - 1) < 6 * np.sqrt(2 / n)
    assert np.abs(w).max() <= bound_in_std * std * (1 + 1e-6)
    assert np.abs(w).max() > 0.99 * bound_in_std * std  # the bound is reached: truncation, not a narrower law


def test_fans_follow_axes():
    w = init.VarianceScaling(1.0, "fan_out", "normal", in_axis=0, out_axis=1, seed=1)((400, 100, 50))
    assert abs(w.var() * (100 * 50) - 1) < 6 * np.sqrt(2 / w.size)


def test_truncated_normal_bounds_and_moments():
    w = init.TruncatedNormal(loc=1.0, scale=2.0, seed=2)((1000, 1000), dtype=np.float64)
    assert w.min() >= 1.0 - 4.0 and w.max() <= 1.0 + 4.0
    assert abs(w.std() / (2.0 * 0.87962566103423978) - 1) < 0.01
    assert abs(w.mean() - 1.0) < 0.01


@pytest.mark.parametrize("make", [lambda s: init.Normal(0.5, 2.0, seed=s), lambda s: init.Uniform(-1, 3, seed=s),
                                  lambda s: init.XavierNormal(seed=s), lambda s: init.KaimingUniform(seed=s)])
def test_seed_reproducible(make):
    np.testing.assert_array_equal(make(3)((4, 5)), make(3)((4, 5)))
    assert not np.array_equal(make(3)((4, 5)), make(4)((4, 5)))
    generator_made = make(np.random.default_rng(3))((4, 5))
    np.testing.assert_array_equal(generator_made, make(3)((4, 5)))


def test_simple_laws():
    assert (init.Constant(2.5)((3, 4)) == 2.5).all() and (init.ZeroInit()((2,), np.float64) == 0).all()
    u = init.Uniform(-1, 3, seed=0)((100000,))
    assert u.min() >= -1 and u.max() < 3 and abs(u.mean() - 1) < 0.02
    n = init.Normal(0.5, 2.0, seed=0)((100000,))
    assert abs(n.mean() - 0.5) < 0.03 and abs(n.std() - 2.0) < 0.03


def test_bad_options():
    with pytest.raises(ValueError, match="mode must be one of"):
        init.VarianceScaling(1.0, "fan", "normal")
    with pytest.raises(ValueError, match="distribution must be one of"):
        init.VarianceScaling(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match="scale must be positive"):
        init.TruncatedNormal(scale=0.0)
