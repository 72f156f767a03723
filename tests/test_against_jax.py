"""conv3d against jax.lax.conv_general_dilated in float64 (jax is a test extra; CI installs it)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings

import nbconv
from nbconv.reference import conv3d_reference
from tests.support import BACKEND, SIMULATED
from tests.test_conv3d import conv_problems

jax = pytest.importorskip("jax")


def lax_conv3d(x, w, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first, bias=None):
    # Set on every call: brainstate (imported by other test modules) switches x64 off again.
    jax.config.update("jax_enable_x64", True)
    layout = "NCDHW" if channel_first else "NDHWC"
    if not isinstance(padding, str):
        padding = np.broadcast_to(np.array(padding).reshape(-1, 2 if np.ndim(padding) == 2 else 1), (3, 2))
        padding = [tuple(int(v) for v in row) for row in padding]
    batched = x.ndim == 5
    y = jax.lax.conv_general_dilated(
        x if batched else x[None], w, _three(stride), padding, lhs_dilation=_three(lhs_dilation),
        rhs_dilation=_three(rhs_dilation), dimension_numbers=(layout, "DHWIO", layout),
        feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
    y = np.asarray(y)
    assert y.dtype == np.float64
    if bias is not None:
        y = y + (bias.reshape(-1, 1, 1, 1) if channel_first else bias)
    return y if batched else y[0]


def _three(v):
    v = tuple(np.atleast_1d(v).tolist())
    return v * 3 if len(v) == 1 else v


@settings(max_examples=12 if SIMULATED else 100, deadline=None)
@given(conv_problems(dtypes=("float64",)))
def test_matches_lax(problem):
    x, w, options = problem
    lhs = _three(options["lhs_dilation"])
    # JAX rejects 'SAME' with input dilation; nbconv defines it (tested against the reference).
    assume(not (isinstance(options["padding"], str) and max(lhs) > 1))
    try:
        want = lax_conv3d(x, w, **{"bias": None, **options})
    except ValueError as err:  # JAX rejects a crop larger than the axis; nbconv returns an empty result
        assume("Negative padding is larger" not in str(err))
        raise
    got = nbconv.conv3d(x, w, backend=BACKEND, **options)
    scale = conv3d_reference(np.abs(x), np.abs(w), **{**options, "bias": None})
    bias = options.get("bias")
    scale = scale + (0 if bias is None else np.abs(bias).max())
    # Both sides round a float64 dot product of length L: |err| <= 2 L u sum|x||w|.
    terms = np.prod(w.shape[:4]) + 1
    np.testing.assert_array_less(np.abs(got - want), 2 * terms * 2**-53 * scale + 1e-300)


def test_nan_weights_over_padding_match_lax():
    """In float64 XLA forms no product over padding, like nbconv. (Its float32 CPU path multiplies
    the padded zeros, so a NaN weight there spreads to every output; nbconv does not follow that.)"""
    x = np.ones((1, 3, 3, 3, 1))
    w = np.ones((3, 3, 3, 1, 1))
    w[0, 0, 0] = np.nan
    options = dict(stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1, channel_first=False)
    got = nbconv.conv3d(x, w, backend=BACKEND, **options)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(lax_conv3d(x, w, **options)))
