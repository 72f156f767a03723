"""Device arrays through the dispatcher, under NUMBA_ENABLE_CUDASIM=1 only: tests/test_cudasim.py runs
this file in its child process (its name keeps the main run from collecting it)."""
import numpy as np
import pytest
from numba import cuda

import nbconv
from nbconv.call import is_device_array
from nbconv.dispatch import choose_backend
from tests.support import assert_conv_close

RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 3, 4, 3, 2)).astype(np.float32)
W = RNG.standard_normal((2, 2, 2, 2, 3)).astype(np.float32)


def test_auto_with_device_array_is_cuda_and_stays_on_device():
    x_dev = cuda.to_device(X)
    assert is_device_array(x_dev) and choose_backend("auto", x_dev) == "cuda"
    y = nbconv.conv3d(x_dev, W, padding="VALID")
    assert is_device_array(y)
    assert_conv_close(y.copy_to_host(), X, W, padding="VALID")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_device_channel_first_unbatched_and_cast(dtype):
    x = np.ascontiguousarray(np.moveaxis(X[0], -1, 0)).astype(dtype)
    y = nbconv.conv3d(cuda.to_device(x), W.astype(dtype), channel_first=True, stride=(1, 2, 1))
    assert is_device_array(y) and y.dtype == dtype and y.shape == (3, 3, 2, 3)
    assert_conv_close(y.copy_to_host(), x, W.astype(dtype), channel_first=True, stride=(1, 2, 1))


def test_device_out_is_filled():
    out = cuda.device_array((1, 3, 4, 3, 3), np.float32)
    got = nbconv.conv3d(cuda.to_device(X), cuda.to_device(W), bias=np.arange(3.0), out=out)
    assert got is out
    assert_conv_close(out.copy_to_host(), X, W, bias=np.arange(3.0))


def test_numpy_in_numpy_out_on_cuda():
    y = nbconv.conv3d(X, W, backend="cuda")
    assert isinstance(y, np.ndarray)
    assert_conv_close(y, X, W)


def test_weight_standardization_on_device():
    w_dev = cuda.to_device(W)
    got = nbconv.weight_standardization(w_dev, gain=np.full(3, 2.0, np.float32))
    assert is_device_array(got)
    mean = W.mean(axis=(0, 1, 2, 3), dtype=np.float64)
    spread = ((W - mean) ** 2).sum(axis=(0, 1, 2, 3))
    np.testing.assert_allclose(got.copy_to_host(), 2 * (W - mean) / np.sqrt(spread), rtol=1e-6, atol=1e-6)


def test_layer_on_cuda_backend():
    layer = nbconv.Conv3d((3, 4, 3, 2), 3, 2, w_init=W, backend="cuda")
    assert isinstance(layer(X), np.ndarray)
    assert_conv_close(layer(X), X, W)


@pytest.mark.parametrize("on_device", [False, True])
def test_conv3d_vjp_on_cuda(on_device):
    """The gradients' convolutions on the CUDA kernels, against the NumPy reference's: NumPy in, NumPy
    out; device arrays in, device arrays out."""
    from nbconv.reference import conv3d_vjp_reference

    x = RNG.standard_normal((1, 3, 4, 5, 4))
    w = RNG.standard_normal((2, 2, 3, 2, 6))
    options = dict(stride=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1)), lhs_dilation=(1, 1, 2), rhs_dilation=(2, 1, 1),
                   groups=2)
    dy = RNG.standard_normal(nbconv.conv3d(x, w, backend="cpu", **options).shape)
    args = [cuda.to_device(a) for a in (x, w, dy)] if on_device else [x, w, dy]
    dx, dw, dbias = nbconv.conv3d_vjp(*args, backend="cuda", **options)
    assert all(is_device_array(a) == on_device for a in (dx, dw, dbias))
    if on_device:
        dx, dw, dbias = (a.copy_to_host() for a in (dx, dw, dbias))
    want_dx, want_dw = conv3d_vjp_reference(x, w, dy, **options)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbias, dy.sum(axis=(0, 1, 2, 3)), rtol=1e-12)
