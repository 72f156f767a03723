"""Bad arguments raise ValueError or TypeError naming the argument, before any kernel runs."""
import subprocess
import sys

import numpy as np
import pytest

import nbconv
from nbconv import reference
from tests.support import BACKEND

X = np.ones((1, 4, 4, 4, 4), np.float32)
W = np.ones((3, 3, 3, 4, 8), np.float32)

BAD = [
    (dict(x=np.ones((4, 4, 4)),), ValueError, "x must be 5-D"),
    (dict(w=np.ones((3, 3, 4, 8)),), ValueError, "w must be 5-D"),
    (dict(w=np.ones((3, 3, 3, 3, 8)),), ValueError, r"w.shape\[-2\] \* groups"),
    (dict(w=np.ones((0, 3, 3, 4, 8)),), ValueError, "spatial sizes"),
    (dict(groups=3), ValueError, "groups=3 must divide"),
    (dict(groups=0), ValueError, "groups must be a positive int"),
    (dict(groups=2.0), ValueError, "groups must be a positive int"),
    (dict(bias=np.ones(7)), ValueError, "bias must have Cout = 8"),
    (dict(bias=np.ones(8, complex)), TypeError, "bias must be real"),
    (dict(padding="FULL"), ValueError, "padding must be 'SAME'"),
    (dict(padding=(1, 2)), ValueError, "padding must have 1 or 3"),
    (dict(padding=((1, 2, 3),)), ValueError, "padding entries"),
    (dict(padding=((1.5, 2),)), TypeError, "padding pairs"),
    (dict(padding=None), TypeError, "padding must be"),
    (dict(stride=(1, 2)), ValueError, "stride must be an int or a sequence of 1 or 3"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(lhs_dilation=-1), ValueError, "lhs_dilation must be positive"),
    (dict(rhs_dilation=(1, 1, 0)), ValueError, "rhs_dilation must be positive"),
    (dict(rhs_dilation="2"), TypeError, "rhs_dilation must be an int"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(x=X.astype(complex)), TypeError, "x must be real"),
    (dict(w=W.astype(object)), TypeError, "w must have a numeric dtype"),
    (dict(x=X.astype(np.longdouble)), TypeError, "x has dtype .*; conv3d computes in float16, float32 or float64"),
    (dict(w=W.astype(np.longdouble)), TypeError, "w has dtype .*; conv3d computes in float16, float32 or float64"),
    (dict(bias=np.ones(8, np.longdouble)), TypeError, "bias has dtype .*; conv3d computes in float16"),
    # a masked array's mask would be dropped (a NaN under it spread to the outputs): refused, as JAX does
    (dict(x=np.ma.masked_array(X, X > 0)), TypeError, r"x is a masked array.*x.filled\(0\)"),
    (dict(w=np.ma.masked_array(W)), TypeError, "w is a masked array"),
    (dict(bias=np.ma.masked_array(np.ones(8))), TypeError, "bias is a masked array"),
    (dict(channel_first="yes"), TypeError, "channel_first must be a bool"),
    (dict(out=np.empty((1, 4, 4, 4, 8), np.float64)), ValueError, "out must have shape"),
    (dict(out=np.empty((1, 4, 4, 4, 7), np.float32)), ValueError, "out must have shape"),
    (dict(out=np.empty((1, 4, 4, 8, 4), np.float32).swapaxes(3, 4)), ValueError, "C-contiguous"),
    (dict(out=[0.0]), TypeError, "out must be an array"),
    # strings, bytes, sets and dicts iterate, but are not sequences of sizes (b'2' was stride 50)
    (dict(stride=b"2"), TypeError, r"stride must be an int or a sequence \(tuple or list\)"),
    (dict(stride={3}), TypeError, r"stride must be an int or a sequence \(tuple or list\)"),
    (dict(stride={1: 2}), TypeError, r"stride must be an int or a sequence \(tuple or list\)"),
    (dict(lhs_dilation="22"), TypeError, "lhs_dilation must be an int"),
    (dict(padding=b"SAME"), TypeError, "padding must be 'SAME', 'VALID', an int or a sequence"),
    (dict(padding={1, 2, 3}), TypeError, "padding must be 'SAME', 'VALID', an int or a sequence"),
    (dict(padding=((0, 0), (0, 0), "ab")), ValueError, "padding entries must be ints or"),
    # sizes whose int64 index arithmetic would wrap around (a silently wrong result before)
    (dict(stride=2**63), ValueError, r"stride must be at most 2\*\*62"),
    (dict(rhs_dilation=(1, 1, 2**62 + 1)), ValueError, "rhs_dilation=.* makes the kernel span more than 2"),
    (dict(rhs_dilation=(1, 1, 2**62 + 1), padding="VALID"), ValueError, "rhs_dilation=.* makes the kernel span"),
    (dict(padding=((0, 0), (0, 0), (0, 2**64 + 10))), ValueError, r"padding must be at most 2\*\*62"),
    (dict(lhs_dilation=2**61, padding=2**61), ValueError, "make the input span more than 2"),
    (dict(x=None), TypeError, "x must be an array, got None"),
    (dict(w=None), TypeError, "w must be an array, got None"),
]


@pytest.mark.parametrize("change, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_argument(change, error, message):
    args = {"x": X, "w": W, "backend": BACKEND, **change}
    with pytest.raises(error, match=message):
        nbconv.conv3d(args.pop("x"), args.pop("w"), **args)


def test_out_may_not_alias_input():
    x = np.ones((1, 4, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out must not share memory"):
        nbconv.conv3d(x, np.ones((1, 1, 1, 4, 4), np.float32), out=x, backend=BACKEND)


@pytest.mark.parametrize("cout", [2, 8])  # the few-channel loop nest, and the blocked kernel
def test_out_may_not_alias_bias(cout):
    out = np.zeros((1, 4, 4, 4, cout), np.float32)
    with pytest.raises(ValueError, match="out must not share memory with x, w or bias"):
        nbconv.conv3d(X, np.ones((1, 1, 1, 4, cout), np.float32), bias=out.reshape(-1)[:cout], out=out,
                      backend=BACKEND)


@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((1, 4, 4, 4, 4), (3, 3, 3, 4, 0), 1),  # no output channels
    ((1, 4, 4, 4, 0), (3, 3, 3, 0, 8), 1),  # no input channels: zeros (+ bias)
    ((1, 4, 4, 4, 0), (3, 3, 3, 0, 8), 4),
    ((0, 4, 4, 4, 4), (3, 3, 3, 4, 8), 1),  # no batch
    ((1, 0, 4, 4, 4), (3, 3, 3, 4, 8), 1),  # no depth
])
def test_empty_channels_and_sizes_give_what_jax_gives(x_shape, w_shape, groups):
    x, w = np.ones(x_shape, np.float32), np.ones(w_shape, np.float32)
    bias = np.arange(w_shape[-1], dtype=np.float32)
    want = reference.conv3d_reference(x, w, groups=groups, bias=bias)
    got = nbconv.conv3d(x, w, groups=groups, bias=bias, backend=BACKEND)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_channel_mismatch_names_layout():
    with pytest.raises(ValueError, match="channel_first=True"):
        nbconv.conv3d(np.ones((1, 5, 4, 4, 4)), W, channel_first=True, backend=BACKEND)


@pytest.mark.parametrize("valid, invalid, error", [
    (dict(stride=1), dict(stride=True), TypeError), (dict(stride=(1, 1, 1)), dict(stride=(1, True, 1)), TypeError),
    (dict(groups=1), dict(groups=1.0), ValueError), (dict(channel_first=False), dict(channel_first=0), TypeError),
    (dict(padding=((1, 1),)), dict(padding=((1.0, 1),)), TypeError)])
def test_validation_cache_keeps_equal_values_of_other_types_apart(valid, invalid, error):
    """Calls are validated once per sizes, dtypes and options; 1, 1.0 and True are equal as dict keys,
    so a cached valid call must not let an invalid one with equal values through."""
    nbconv.conv3d(X, W, backend=BACKEND, **valid)
    with pytest.raises(error):
        nbconv.conv3d(X, W, backend=BACKEND, **invalid)


def test_unhashable_options_are_validated_too():
    np.testing.assert_array_equal(nbconv.conv3d(X, W, stride=[1, 2, 1], padding=[(0, 1)], backend=BACKEND),
                                  nbconv.conv3d(X, W, stride=(1, 2, 1), padding=((0, 1),), backend=BACKEND))
    with pytest.raises(ValueError, match="stride must be positive"):
        nbconv.conv3d(X, W, stride=[1, 0, 1], backend=BACKEND)


def test_the_other_entries_name_their_argument_too():
    dy = np.ones((1, 4, 4, 4, 8), np.float32)
    with pytest.raises(TypeError, match="dy is a masked array"):
        nbconv.conv3d_vjp(X, W, np.ma.masked_array(dy), backend=BACKEND)
    with pytest.raises(TypeError, match="w has dtype .*; conv3d computes in"):
        nbconv.weight_standardization(W.astype(np.longdouble), backend=BACKEND)
    layer = nbconv.Conv3d((4, 4, 4, 4), 8, 3, backend=BACKEND)
    with pytest.raises(TypeError, match="x is a masked array"):
        layer(np.ma.masked_array(X))
    with pytest.raises(TypeError, match="x is a masked array"):
        layer.vjp(np.ma.masked_array(X), dy)


def test_an_unknown_case_of_the_command_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "nbconv", "nosuchcase"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "usage: python -m nbconv" in result.stderr and "unknown case 'nosuchcase'" in result.stderr
    assert "medical_s2" in result.stderr  # the valid names
