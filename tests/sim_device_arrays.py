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


def test_the_family_stays_on_device():
    """conv2d, conv1d, conv_transpose and their gradients and layers take device arrays (lifted as
    views on the device) and give device arrays, equal to the CPU backend's."""
    x, w = X[0, 0], W[0]  # (4, 3, 2) and (2, 2, 2, 3): one image, a 2-D kernel
    y = nbconv.conv2d(cuda.to_device(x), cuda.to_device(w), stride=2)
    assert is_device_array(y)
    np.testing.assert_allclose(y.copy_to_host(), nbconv.conv2d(x, w, stride=2, backend="cpu"), rtol=1e-5, atol=1e-5)
    out = cuda.device_array(y.shape, np.float32)
    assert nbconv.conv2d(cuda.to_device(x), w, stride=2, out=out) is out
    np.testing.assert_array_equal(out.copy_to_host(), y.copy_to_host())
    fortran = nbconv.conv2d(cuda.to_device(np.asfortranarray(X[0])), W[0], stride=2)  # strides kept, not reshaped
    np.testing.assert_allclose(fortran.copy_to_host(), nbconv.conv2d(X[0], W[0], stride=2, backend="cpu"),
                               rtol=1e-5, atol=1e-5)
    dx, dw, _ = nbconv.conv2d_vjp(cuda.to_device(x), w, y, stride=2)
    want = nbconv.conv2d_vjp(x, w, y.copy_to_host(), stride=2, backend="cpu")
    assert is_device_array(dx) and is_device_array(dw)
    for got, expected in zip((dx, dw), want):
        np.testing.assert_allclose(got.copy_to_host(), expected, rtol=1e-5, atol=1e-5)
    signal = nbconv.conv1d(cuda.to_device(x[0]), cuda.to_device(w[0]), padding=(1, 0))
    assert is_device_array(signal) and signal.shape == (3, 3)
    kernel = np.ascontiguousarray(w[..., :2])  # (2, 2, Cout 2, Cin 2) of the convolution this transposes
    up = nbconv.conv_transpose(cuda.to_device(x), cuda.to_device(kernel), stride=2, transpose_kernel=True)
    np.testing.assert_allclose(up.copy_to_host(), nbconv.conv_transpose(x, kernel, stride=2, transpose_kernel=True,
                                                                     backend="cpu"), rtol=1e-5, atol=1e-5)
    layer = nbconv.ConvTranspose2d((4, 3, 2), 3, 2, stride=2)
    assert is_device_array(layer(cuda.to_device(x))) and layer(cuda.to_device(x)).shape == (8, 6, 3)
