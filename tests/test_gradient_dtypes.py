"""The cotangents come back in their arguments' dtypes, as JAX's: dx in x's, dw in w's, dbias in bias's
(integers and bools: float64), for every dtype combination the forward accepts, and a layer's grads in
its parameters' dtypes whatever dtype its input has. (Their values: tests/test_gradients.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from tests.support import SIMULATED

pytestmark = pytest.mark.skipif(SIMULATED, reason="conv3d_vjp runs on the CPU backend only")
DTYPES = ["float16", "float32", "float64", "int32", "uint8", "bool"]


def _cotangent(dtype):
    return np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)


@settings(max_examples=40, deadline=None)
@given(x_dtype=st.sampled_from(DTYPES), w_dtype=st.sampled_from(DTYPES), dy_dtype=st.sampled_from(DTYPES),
       bias_dtype=st.sampled_from([None, *DTYPES]), channel_first=st.booleans())
def test_cotangents_have_their_arguments_dtypes(x_dtype, w_dtype, dy_dtype, bias_dtype, channel_first):
    rng = np.random.default_rng(0)
    x = (3 * rng.random((1, 2, 3, 4, 3) if channel_first else (1, 3, 4, 3, 2))).astype(x_dtype)
    w = (3 * rng.random((2, 2, 2, 2, 3))).astype(w_dtype)
    bias = None if bias_dtype is None else np.ones((1, 1, 1, 3), bias_dtype)
    y = nbconv.conv3d(x, w, bias=bias, channel_first=channel_first)
    dy = np.ones(y.shape, dy_dtype)
    dx, dw, dbias = nbconv.conv3d_vjp(x, w, dy, bias=bias, channel_first=channel_first)
    assert dx.dtype == _cotangent(x_dtype) and dx.shape == x.shape
    assert dw.dtype == _cotangent(w_dtype) and dw.shape == w.shape
    if bias is None:
        assert dbias.dtype == y.dtype and dbias.shape == (3,)
    else:
        assert dbias.dtype == _cotangent(bias_dtype) and dbias.shape == bias.shape


@pytest.mark.parametrize("kind", ["Conv3d", "ScaledWSConv3d"])
@pytest.mark.parametrize("x_dtype", ["float16", "float64", "int32"])
def test_a_layer_keeps_its_parameters_dtypes(kind, x_dtype):
    """A float32 layer fed float64 data (what np.random.rand gives): an SGD step keeps it float32."""
    layer = getattr(nbconv, kind)((3, 4, 3, 2), 4, 3, b_init=nbconv.init.ZeroInit())
    x = (3 * np.random.default_rng(1).random((2, 3, 4, 3, 2))).astype(x_dtype)
    y = layer(x)
    dx, grads = layer.vjp(x, np.ones_like(y))
    assert dx.dtype == _cotangent(x_dtype)
    assert set(grads) == set(layer.weight.value)
    for name, grad in grads.items():
        assert grad.dtype == np.float32 and grad.shape == layer.weight.value[name].shape, name
