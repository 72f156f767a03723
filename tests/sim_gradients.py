"""conv3d_vjp on the CUDA backend, under NUMBA_ENABLE_CUDASIM=1 only (tests/test_cudasim.py runs this
file in its child process): both weight-gradient kernels, each forced in turn, against the NumPy
reference, over group widths from depthwise to groups that fill and span TILE_C-channel tiles, the
options, dtypes and layouts, non-finite operands, split reductions, and device arrays that never
visit the host."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

import nbconv
from nbconv.call import is_device_array
from nbconv.cuda import gradients as device_gradients
from nbconv.reference import conv3d_vjp_reference
from tests.support import KERNELS, forced_kernel
from tests.test_gradients import _bounds

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf

# (groups, Cin, Cout): depthwise, a channel multiplier, dense few-channel, a group filling one
# 64-channel tile, groups of 80 channels spanning two tiles each
FAMILIES = [(4, 4, 4), (2, 2, 6), (1, 3, 5), (1, 2, 64), (2, 4, 160)]
OPTIONS = dict(stride=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1)), lhs_dilation=(1, 1, 2), rhs_dilation=(2, 1, 1))


def _problem(groups, cin, cout, dtype, seed=0, options=OPTIONS):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, 3, 3, cin)).astype(dtype)
    w = rng.standard_normal((2, 2, 2, cin // groups, cout)).astype(dtype)
    y = nbconv.conv3d(x, w, groups=groups, backend="cpu", **options)
    return x, w, rng.standard_normal(y.shape).astype(dtype)


def _wrt(cout, groups):
    """All three, except for the groups of 64 channels and more: their dx is conv_tiled over 64 and
    more reduction rows a tap, minutes in the simulator, and that kernel's tiles are test_nonfinite's."""
    return ("x", "w", "bias") if cout // groups < 64 else ("w", "bias")


def _check(got, x, w, dy, options):
    dx, dw, dbias = got
    want_dx, want_dw = conv3d_vjp_reference(x, w, dy, **options)
    bound_dx, bound_dw = _bounds(x, w, dy, options, np.finfo(dw.dtype).eps / 2)
    if dx is not None:
        assert np.all(np.abs(dx - want_dx) <= bound_dx), np.abs(dx - want_dx).max()
    assert np.all(np.abs(dw - want_dw) <= bound_dw), np.abs(dw - want_dw).max()
    batch_axes = tuple(i for i in range(dy.ndim) if i != (dy.ndim - 4 if options["channel_first"] else dy.ndim - 1))
    np.testing.assert_allclose(dbias, dy.sum(axis=batch_axes, dtype=np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("groups, cin, cout", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_gradients_match_the_reference(kernel, dtype, groups, cin, cout):
    x, w, dy = _problem(groups, cin, cout, dtype)
    with forced_kernel(kernel):
        got = nbconv.conv3d_vjp(*(cuda.to_device(a) for a in (x, w, dy)), groups=groups, wrt=_wrt(cout, groups),
                                **OPTIONS)
    assert all(a is None or (is_device_array(a) and a.dtype == dtype) for a in got)
    _check([None if a is None else a.copy_to_host() for a in got], x, w, dy,
           dict(OPTIONS, groups=groups, channel_first=False))


@pytest.mark.parametrize("kernel", KERNELS)
def test_split_reductions_add_up(kernel, monkeypatch):
    """A GPU with many multiprocessors splits dw's and dbias's reductions over several blocks."""
    monkeypatch.setattr(device_gradients, "multiprocessors", lambda: 64)
    monkeypatch.setattr(device_gradients, "MIN_SPLIT_STEPS", 1)
    x, w, dy = _problem(2, 4, 6, "float64", options={})
    x, dy = np.concatenate([x] * 2), np.concatenate([dy] * 2)  # 72 output pixels: 4 KC steps, 24 lines
    assert device_gradients._splits(1, 4) == 4
    with forced_kernel(kernel):
        got = nbconv.conv3d_vjp(x, w, dy, groups=2, backend="cuda", wrt=("w", "bias"))
    _check(got, x, w, dy, dict(groups=2, channel_first=False))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cout", [6, 160])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_operands_propagate_as_in_the_reference(kernel, dtype, cout):
    """NaN and Inf in x, w and dy, over padding and inside: padding and dilation holes form no product."""
    x, w, dy = _problem(2, 4, cout, dtype)
    x[0, 0, 0, 0, 0], x[1, 1, 2, 2, -1] = np.nan, np.inf
    w[0, 0, 0, 0, 0], w[1, 1, 1, -1, -1] = np.inf, np.nan
    dy[0, 0, 0, 0, 1], dy[1, -1, -1, -1, cout // 2 + 1] = np.nan, -np.inf  # first and last outputs: by padding
    with forced_kernel(kernel):
        dx, dw, _ = nbconv.conv3d_vjp(x, w, dy, groups=2, backend="cuda", wrt=_wrt(cout, 2)[:2], **OPTIONS)
    want_dx, want_dw = conv3d_vjp_reference(x, w, dy, groups=2, **OPTIONS)
    for got, want in ((dx, want_dx), (dw, want_dw)):
        if got is None:
            continue
        assert np.isnan(want).any() and np.isfinite(want).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        infinite = np.isinf(want)
        np.testing.assert_array_equal(got[infinite], want[infinite])


@pytest.mark.parametrize("channel_first, batched", [(True, True), (False, False), (True, False)])
def test_layouts_casts_and_bias_on_the_device(channel_first, batched):
    """Channel-first and unbatched operands, float16 x (a float16 dx), an int bias (a float64 dbias)."""
    x, w, dy = _problem(1, 3, 5, "float32")
    x16 = x.astype(np.float16)
    x_in, dy_in = (np.moveaxis(a, -1, 1) if channel_first else a for a in (x16, dy))
    x_in, dy_in = (a if batched else a[0] for a in (x_in, dy_in))
    x_in, dy_in = np.ascontiguousarray(x_in), np.ascontiguousarray(dy_in)
    bias = np.arange(5)
    dx, dw, dbias = nbconv.conv3d_vjp(cuda.to_device(x_in), cuda.to_device(w), cuda.to_device(dy_in), bias=bias,
                                      channel_first=channel_first, **OPTIONS)
    assert (dx.dtype, dw.dtype, dbias.dtype) == (np.float16, np.float32, np.float64)
    assert dx.shape == x_in.shape and dbias.shape == (5,)
    want_dx, want_dw, want_db = nbconv.conv3d_vjp(x_in, w, dy_in, bias=bias, channel_first=channel_first,
                                                  backend="cpu", **OPTIONS)
    np.testing.assert_allclose(dx.copy_to_host().astype(np.float32), want_dx.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(dw.copy_to_host(), want_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbias.copy_to_host(), want_db, rtol=1e-5)


@settings(max_examples=6, deadline=None)
@given(st.sampled_from([(1, 1, 2), (3, 3, 3), (2, 4, 2), (1, 2, 17)]), st.integers(1, 2), st.integers(1, 2),
       st.integers(0, 1), st.sampled_from(KERNELS), st.integers(0, 2**16))
def test_random_problems(family, stride, dilation, pad, kernel, seed):
    groups, cin, cout = family
    options = dict(stride=stride, padding=pad, lhs_dilation=(1, dilation, 1), rhs_dilation=(dilation, 1, 1))
    x, w, dy = _problem(groups, cin, cout, "float64", seed, options)
    with forced_kernel(kernel):
        got = nbconv.conv3d_vjp(x, w, dy, groups=groups, backend="cuda", **options)
    _check(got, x, w, dy, dict(options, groups=groups, channel_first=False))


@pytest.mark.parametrize("x_shape, w_shape, options", [
    ((0, 2, 3, 3, 2), (2, 2, 2, 2, 3), {}),  # no samples
    ((1, 2, 3, 3, 2), (2, 2, 2, 2, 0), {}),  # no output channels
    ((1, 1, 1, 1, 2), (3, 3, 3, 2, 3), dict(padding="VALID")),  # an empty result
    ((1, 2, 3, 3, 0), (2, 2, 2, 0, 3), {}),  # no input channels
], ids=["batch0", "cout0", "empty_result", "cin0"])
def test_empty_problems_give_zeros_of_the_right_shapes(x_shape, w_shape, options):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal(nbconv.conv3d(x, w, backend="cpu", **options).shape)
    got = nbconv.conv3d_vjp(*(cuda.to_device(a) for a in (x, w, dy)), **options)
    for have, want in zip(got, nbconv.conv3d_vjp(x, w, dy, backend="cpu", **options)):
        np.testing.assert_array_equal(have.copy_to_host(), want)
