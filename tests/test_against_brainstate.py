"""The layers against brainstate.nn.Conv3d / ScaledWSConv3d built with the same parameters (brainstate
is a test extra; CI installs it). Both sides compute in float32."""
import numpy as np
import pytest

import nbconv
from nbconv.reference import conv3d_reference
from tests.support import BACKEND, SIMULATED
from tests.test_family import as_3d

brainstate = pytest.importorskip("brainstate")
jax_numpy = pytest.importorskip("jax.numpy")

OPTION_SETS = [
    dict(in_size=(6, 7, 8, 3), out_channels=8, kernel_size=3),
    dict(in_size=(6, 7, 8, 4), out_channels=6, kernel_size=(3, 2, 3), stride=(2, 1, 2), padding="VALID",
         groups=2),
    dict(in_size=(4, 6, 6, 5), out_channels=5, kernel_size=3, padding=((1, 0), (2, 1), (0, 0)),
         rhs_dilation=2, groups=5),
    dict(in_size=(4, 5, 6, 7), out_channels=4, kernel_size=2, padding=1, lhs_dilation=(2, 1, 2),
         channel_first=True),
    dict(in_size=(5, 5, 5, 2), out_channels=4, kernel_size=(1, 3, 3), stride=2, padding=(1, 2, 0)),
]
if SIMULATED:
    OPTION_SETS = OPTION_SETS[:1]


def _parameters(options, rng):
    layer = nbconv.Conv3d(**options)
    w = rng.standard_normal(layer.kernel_shape).astype(np.float32)
    bias_shape = (1, layer.out_channels, 1, 1, 1) if layer.channel_first else (1, 1, 1, layer.out_channels)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    mask = (rng.random(layer.kernel_shape) > 0.25).astype(np.float32)
    x = rng.standard_normal((2, *layer.in_size)).astype(np.float32)
    return w, bias, mask, x


def _bound(x, w_used, options, extra_terms):
    """Both sides round float32 dot products of length L (and brainstate the bias add): each is within
    L * u * sum|x||w| of the exact value, so they differ by at most twice that (plus `extra_terms` u
    for the weight standardization, whose float32 mean/variance sums have that many terms)."""
    scale = conv3d_reference(np.abs(x), np.abs(w_used), stride=options.get("stride", 1),
                             padding=options.get("padding", "SAME"),
                             lhs_dilation=options.get("lhs_dilation", 1),
                             rhs_dilation=options.get("rhs_dilation", 1), groups=options.get("groups", 1),
                             channel_first=options.get("channel_first", False))
    terms = np.prod(w_used.shape[:4]) + 1
    return (2 * terms + extra_terms) * 2**-24 * scale + 2**-24 * 8


@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_conv3d_matches_brainstate(options):
    w, bias, mask, x = _parameters(options, np.random.default_rng(0))
    ours = nbconv.Conv3d(**options, w_init=w, b_init=bias, w_mask=mask, backend=BACKEND)
    theirs = brainstate.nn.Conv3d(**options, w_init=w, b_init=bias, w_mask=mask)
    assert ours.out_size == tuple(theirs.out_size)
    got, want = ours(x), np.asarray(theirs(x))
    assert np.all(np.abs(got - want) <= _bound(x, w * mask, options, 0))
    np.testing.assert_allclose(ours(x[0]), np.asarray(theirs(x[0])), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_scaled_ws_conv3d_matches_brainstate(options):
    rng = np.random.default_rng(1)
    w, bias, mask, x = _parameters(options, rng)
    ours = nbconv.ScaledWSConv3d(**options, w_init=w, b_init=bias, w_mask=mask, eps=1e-4, backend=BACKEND)
    # brainstate 0.5.4's weight_standardization fails on NumPy weights (a list `axis` reaches
    # numpy.mean), so it gets a JAX copy of the same values.
    theirs = brainstate.nn.ScaledWSConv3d(**options, w_init=jax_numpy.asarray(w), b_init=bias, w_mask=mask,
                                          eps=1e-4)
    gain = rng.uniform(0.5, 2.0, (1, 1, 1, 1, w.shape[-1])).astype(np.float32)
    ours.weight.value["gain"] = gain
    theirs.weight.value = {**theirs.weight.value, "gain": gain}
    assert ours.out_size == tuple(theirs.out_size)
    got, want = ours(x), np.asarray(theirs(x))
    fan_in = np.prod(w.shape[:4])
    assert np.all(np.abs(got - want) <= _bound(x, ours.kernel(), options, fan_in))


def test_initializers_match_brainstate_law():
    """Same law (not the same stream: brainstate draws from its own generator): XavierNormal on a
    large kernel has brainstate's variance and truncation bound."""
    shape = (5, 5, 5, 32, 64)
    ours = nbconv.init.XavierNormal(seed=0)(shape)
    theirs = np.asarray(brainstate.nn.init.XavierNormal(seed=0)(shape))
    for a in (ours, theirs):
        assert abs(a.var() / theirs.var() - 1) < 0.02
        assert abs(np.abs(a).max() / np.abs(theirs).max() - 1) < 0.01


# The other layers of brainstate's convolution module, with 1 and 2 spatial axes and transposed:
# (class name, options). Shapes are small: the point is the arguments' forms and the layouts.
FAMILY = [
    ("Conv1d", dict(in_size=(20, 4), out_channels=6, kernel_size=3, stride=2, padding=(2, 1), groups=2)),
    ("Conv1d", dict(in_size=(4, 17), out_channels=4, kernel_size=5, rhs_dilation=2, groups=4, channel_first=True)),
    ("Conv2d", dict(in_size=(9, 10, 4), out_channels=6, kernel_size=(3, 2), rhs_dilation=2)),
    ("Conv2d", dict(in_size=(4, 9, 10), out_channels=6, kernel_size=3, stride=(2, 1), padding=((0, 0), (1, 1)),
                    lhs_dilation=(1, 2), groups=2, channel_first=True)),
    ("ScaledWSConv1d", dict(in_size=(20, 4), out_channels=6, kernel_size=3, padding=1)),
    ("ScaledWSConv2d", dict(in_size=(9, 10, 4), out_channels=6, kernel_size=3, stride=2, padding=((1, 0), (0, 2)))),
    ("ConvTranspose1d", dict(in_size=(7, 4), out_channels=6, kernel_size=3, stride=2)),
    ("ConvTranspose1d", dict(in_size=(4, 7), out_channels=6, kernel_size=4, stride=3, padding="VALID", groups=2,
                             channel_first=True)),
    ("ConvTranspose2d", dict(in_size=(5, 6, 4), out_channels=6, kernel_size=2, stride=2, padding="VALID")),
    ("ConvTranspose2d", dict(in_size=(5, 6, 4), out_channels=2, kernel_size=3, stride=(2, 1), padding=1,
                             rhs_dilation=(1, 2), groups=2)),
    ("ConvTranspose3d", dict(in_size=(3, 4, 5, 4), out_channels=4, kernel_size=3, stride=2)),
    ("ConvTranspose3d", dict(in_size=(4, 3, 4, 5), out_channels=6, kernel_size=(2, 3, 2), stride=(1, 2, 2),
                             padding="VALID", channel_first=True)),
]
if SIMULATED:
    FAMILY = FAMILY[::3]


def _convolution_used(layer, name, options, x):
    """The 3-D convolution (`test_family.as_3d`: x, the kernel, its options, the channel axis) that
    brainstate's layer computes on x, written out here from its definition: forward layers convolve as
    they are; transposed ones with the kernel flipped and its channel axes swapped, the stride as input
    dilation, and brainstate's pads."""
    count = len(layer.kernel_size)
    w = layer.kernel()
    padding = options.get("padding", "SAME")
    if name.startswith("ConvTranspose"):
        from brainstate.nn._conv import _conv_transpose_padding
        w = np.ascontiguousarray(w[(slice(None, None, -1),) * count].swapaxes(-1, -2))
        if isinstance(padding, str):
            padding = [_conv_transpose_padding((k - 1) * r + 1, s, padding)
                       for k, s, r in zip(layer.kernel_size, layer.stride, layer.rhs_dilation)]
        else:
            padding = layer.padding
        options = dict(stride=1, padding=padding, lhs_dilation=layer.stride, rhs_dilation=layer.rhs_dilation)
    else:
        options = dict(stride=layer.stride, padding=layer.padding if not isinstance(layer.padding, str) else padding,
                       lhs_dilation=layer.lhs_dilation, rhs_dilation=layer.rhs_dilation)
    return as_3d(count, x, w, dict(**options, groups=layer.groups, channel_first=layer.channel_first))


@pytest.mark.parametrize("name, options", FAMILY, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FAMILY)])
def test_family_matches_brainstate(name, options):
    """Each layer against brainstate's, built with the same weights, bias (and gain) and mask, within
    twice the float32 rounding bound of the convolution the layer is (plus the standardization's)."""
    rng = np.random.default_rng(len(name))
    probe = getattr(nbconv, name)(**options)
    w = rng.standard_normal(probe.kernel_shape).astype(np.float32)
    count = len(probe.kernel_size)
    ones = (1,) * count
    bias = rng.standard_normal((1, probe.out_channels, *ones) if probe.channel_first
                               else (*ones, probe.out_channels)).astype(np.float32)
    mask = (rng.random(probe.kernel_shape) > 0.25).astype(np.float32)
    extra = {} if name.startswith("ConvTranspose") else dict(w_mask=mask)
    ours = getattr(nbconv, name)(**options, w_init=w, b_init=bias, backend=BACKEND, **extra)
    theirs = getattr(brainstate.nn, name)(**options, w_init=jax_numpy.asarray(w), b_init=bias, **extra)
    for attribute in ("in_size", "out_size", "kernel_size", "stride", "padding", "rhs_dilation", "groups",
                      "kernel_shape", "in_channels", "out_channels", "lhs_dilation", "padding_mode"):
        assert hasattr(ours, attribute) == hasattr(theirs, attribute), attribute
        if hasattr(theirs, attribute):
            assert getattr(ours, attribute) == tuple(getattr(theirs, attribute)) if attribute.endswith("size") \
                else getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert repr(ours).startswith(f"{name}(in_channels=")
    assert {k: v.shape for k, v in ours.weight.value.items()} == \
        {k: tuple(v.shape) for k, v in theirs.weight.value.items()}
    x = rng.standard_normal((2, *probe.in_size)).astype(np.float32)
    got, want = ours(x), np.asarray(theirs(x))
    assert got.shape == want.shape == (2, *ours.out_size)
    x3, w3, lifted, _ = _convolution_used(ours, name, options, x)
    scale = conv3d_reference(np.abs(x3), np.abs(w3), **lifted).reshape(got.shape)
    fan_in = np.prod(w.shape[:-1]) if name.startswith("ScaledWS") else 0
    bound = (2 * (np.prod(w3.shape[:4]) + 1) + fan_in) * 2**-24 * scale + 2**-24 * 8
    assert np.all(np.abs(got - want) <= bound)
    np.testing.assert_allclose(ours(x[0]), np.asarray(theirs(x[0])), rtol=1e-4, atol=1e-4)
