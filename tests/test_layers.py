"""Conv3d and ScaledWSConv3d: attributes, shapes, errors, and numbers against the NumPy reference."""
import numpy as np
import pytest

import nbconv
from nbconv.reference import conv3d_reference
from tests.support import BACKEND, assert_conv_close
from tests.test_standardization import standardize_reference

PADDINGS = ["SAME", "VALID", 1, (1, 0, 2), ((1, 2),), ((0, 1), (2, 0), (-1, 1))]


@pytest.mark.parametrize("channel_first", [False, True])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("cls", [nbconv.Conv3d, nbconv.ScaledWSConv3d])
def test_out_size_matches_forward(cls, padding, channel_first):
    in_size = (4, 5, 6, 7) if channel_first else (5, 6, 7, 4)
    layer = cls(in_size, 6, (3, 2, 3), stride=(1, 2, 2), padding=padding, rhs_dilation=(2, 1, 1),
                lhs_dilation=(1, 1, 2), groups=2, b_init=nbconv.init.Normal(seed=1),
                channel_first=channel_first, backend=BACKEND)
    x = np.random.default_rng(0).standard_normal((2, *in_size)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, *layer.out_size)
    assert layer.update(x[0]).shape == layer.out_size
    want = conv3d_reference(x, layer.kernel(), stride=layer.stride, padding=padding,
                            lhs_dilation=layer.lhs_dilation, rhs_dilation=layer.rhs_dilation, groups=2,
                            bias=layer.weight.value["bias"], channel_first=channel_first)
    assert want.shape == y.shape
    assert_conv_close(y, x, layer.kernel(), stride=layer.stride, padding=padding,
                      lhs_dilation=layer.lhs_dilation, rhs_dilation=layer.rhs_dilation, groups=2,
                      bias=layer.weight.value["bias"], channel_first=channel_first)


def test_attributes_like_brainstate():
    layer = nbconv.Conv3d((16, 64, 64, 3), 64, 3, stride=2, b_init=nbconv.init.ZeroInit(), name="c1")
    assert layer.in_size == (16, 64, 64, 3) and layer.out_size == (8, 32, 32, 64)
    assert (layer.in_channels, layer.out_channels, layer.groups) == (3, 64, 1)
    assert layer.kernel_size == (3, 3, 3) and layer.stride == (2, 2, 2)
    assert layer.lhs_dilation == layer.rhs_dilation == (1, 1, 1)
    assert layer.padding == "SAME" and layer.channel_first is False and layer.w_mask is None
    assert layer.kernel_shape == (3, 3, 3, 3, 64)
    params = layer.weight.value
    assert isinstance(layer.weight, nbconv.ParamState) and set(params) == {"weight", "bias"}
    assert params["weight"].shape == layer.kernel_shape and params["weight"].dtype == np.float32
    assert params["bias"].shape == (1, 1, 1, 64)
    assert repr(layer).startswith("Conv3d(in_channels=3, out_channels=64, kernel_size=(3, 3, 3)")
    assert "channel_first=False" in repr(layer)


def test_ws_attributes_and_channel_first_bias():
    layer = nbconv.ScaledWSConv3d((3, 8, 8, 8), 16, 3, b_init=nbconv.init.Constant(0.5),
                                  channel_first=True, eps=1e-3)
    params = layer.weight.value
    assert set(params) == {"weight", "bias", "gain"}
    assert params["bias"].shape == (1, 16, 1, 1, 1)
    np.testing.assert_array_equal(params["gain"], np.ones((1, 1, 1, 1, 16), np.float32))
    assert layer.eps == 1e-3 and layer.in_channels == 3 and layer.out_size == (16, 8, 8, 8)
    assert "eps=0.001" in repr(layer) and repr(layer).startswith("ScaledWSConv3d(")
    assert "gain" not in nbconv.ScaledWSConv3d((8, 8, 8, 3), 4, 3, ws_gain=False).weight.value


def test_ws_order_standardize_mask_convolve_bias():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 3, 2, 4)).astype(np.float32)
    mask = (rng.random(w.shape) > 0.3).astype(np.float32)
    bias = rng.standard_normal((1, 1, 1, 4)).astype(np.float32)
    layer = nbconv.ScaledWSConv3d((5, 5, 5, 2), 4, 3, w_init=w, b_init=bias, w_mask=mask, eps=1e-4,
                                  backend=BACKEND)
    gain = rng.uniform(0.5, 2, (1, 1, 1, 1, 4)).astype(np.float32)
    layer.weight.value["gain"] = gain
    w_hat = standardize_reference(w.astype(np.float64), 1e-4, gain) * mask
    x = rng.standard_normal((2, 5, 5, 5, 2)).astype(np.float32)
    assert_conv_close(layer(x), x, w_hat.astype(np.float32), bias=bias, padding="SAME")


def test_conv3d_mask_and_bias():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((2, 2, 2, 3, 5))
    mask = rng.random(w.shape) > 0.5
    layer = nbconv.Conv3d((4, 4, 4, 3), 5, 2, w_init=w, w_mask=mask, b_init=np.arange(5.0).reshape(1, 1, 1, 5),
                          padding="VALID", backend=BACKEND)
    x = rng.standard_normal((4, 4, 4, 3))
    assert_conv_close(layer(x), x, w * mask, padding="VALID", bias=np.arange(5.0))


def test_initializer_callable_and_seed_reproducible():
    def make():
        return nbconv.Conv3d((4, 4, 4, 2), 3, 3, w_init=nbconv.init.KaimingNormal(seed=7))

    np.testing.assert_array_equal(make().weight.value["weight"], make().weight.value["weight"])
    layer = nbconv.Conv3d((4, 4, 4, 2), 3, 3, w_init=lambda shape, dtype: np.ones(shape, dtype))
    assert (layer.weight.value["weight"] == 1).all()


def test_returns_the_kind_of_array_given():
    jnp = pytest.importorskip("jax.numpy")
    layer = nbconv.Conv3d((4, 4, 4, 2), 3, 3, backend=BACKEND)
    x = np.ones((1, 4, 4, 4, 2), np.float32)
    assert isinstance(layer(x), np.ndarray)
    y = layer(jnp.asarray(x))
    assert type(y).__module__.startswith("jax") and y.shape == (1, 4, 4, 4, 3)


BAD = [
    (dict(in_size=(8, 8, 3)), "in_size must have 4 entries"),
    (dict(in_size=5), "in_size must be a sequence"),
    (dict(in_size=(8, 8, 8, 0)), "in_size must be a positive int"),
    (dict(groups=2), r"in_channels \(3\) must be divisible by groups"),
    (dict(in_size=(8, 8, 8, 4), groups=4), r"out_channels \(6\) must be divisible by groups"),
    (dict(out_channels=0), "out_channels must be a positive int"),
    (dict(kernel_size=(3, 3)), "kernel_size must be an int or a sequence of 1 or 3"),
    (dict(stride=(1, 2)), "stride must be an int or a sequence of 1 or 3"),
    (dict(rhs_dilation=(1, 1, 1, 1)), "rhs_dilation must be"),
    (dict(lhs_dilation=0), "lhs_dilation must be positive"),
    (dict(padding="FULL"), "padding must be 'SAME'"),
    (dict(w_init=np.ones((3, 3, 3, 3, 5))), r"w_init must have shape \(3, 3, 3, 3, 6\)"),
    (dict(w_mask=np.ones((3, 3, 3, 6))), r"w_mask must have shape \(3, 3, 3, 3, 6\)"),
    (dict(b_init=np.ones((1, 1, 6))), r"b_init must have shape \(1, 1, 1, 6\)"),
    (dict(w_init=lambda shape, dtype: np.ones(3)), "w_init must have shape .* it returned"),
]


@pytest.mark.parametrize("cls", [nbconv.Conv3d, nbconv.ScaledWSConv3d])
@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_constructor_errors(cls, change, message):
    args = {"in_size": (8, 8, 8, 3), "out_channels": 6, "kernel_size": 3, **change}
    with pytest.raises(ValueError, match=message):
        cls(**args)


@pytest.mark.parametrize("eps", [0, -1e-4, "small", "1e-4", True, np.ones(2)])
def test_ws_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a positive number"):
        nbconv.ScaledWSConv3d((8, 8, 8, 3), 6, 3, eps=eps)


@pytest.mark.parametrize("cls", [nbconv.Conv3d, nbconv.ScaledWSConv3d])
@pytest.mark.parametrize("change, name", [(dict(w_init="xavier"), "w_init"), (dict(w_mask="abc"), "w_mask"),
                                          (dict(b_init=object()), "b_init"), (dict(w_mask=[[1, 2], [3]]), "w_mask"),
                                          (dict(w_init=lambda shape, dtype: np.full(shape, "a")), "w_init")])
def test_initializer_and_mask_arguments_checked_by_name(cls, change, name):
    with pytest.raises(TypeError, match=f"{name} must"):
        cls((8, 8, 8, 3), 6, 3, **change)


def test_eps_as_a_numpy_scalar_or_0d_array():
    for eps in (np.float32(1e-3), np.array(1e-3)):
        layer = nbconv.ScaledWSConv3d((4, 4, 4, 3), 6, 3, eps=eps)
        np.testing.assert_array_equal(layer.kernel(), nbconv.weight_standardization(layer.weight.value["weight"],
                                                                                    1e-3, layer.weight.value["gain"]))


@pytest.mark.parametrize("shape, message", [((2, 8, 8, 8, 4), "x must have shape"),
                                            ((8, 8, 9, 3), "x must have shape"),
                                            ((8, 8, 3), "x must be 5-D"),
                                            ((1, 1, 8, 8, 8, 3), "x must be 5-D")])
def test_input_shape_errors(shape, message):
    layer = nbconv.Conv3d((8, 8, 8, 3), 6, 3)
    with pytest.raises(ValueError, match=message):
        layer(np.ones(shape, np.float32))
