"""NaN and Inf propagate as in the reference (and jax.lax.conv_general_dilated) through every kernel and
micro-kernel family, in float32 and float64: no product is formed with padding or an inserted zero,
so a NaN or Inf weight reaches only the outputs whose taps read a real input, and fast math assumes
nothing finite. On the CPU, every kernel family; under the CUDA simulator (tests/test_cudasim.py),
both CUDA kernels with groups that fill one 64-channel tile and span two."""
import numpy as np
import pytest

import nbconv
from tests.support import BACKEND, KERNELS, SIMULATED, assert_conv_close, forced_kernel

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf - inf

# In the simulator (one Python thread per GPU thread) fewer outputs: (groups, Cin, Cout) a tile's worth
# of channels, groups of two tiles, small groups; the smallest input that still has finite outputs.
LHS_PAD, FAMILIES, X_SIZE = (1, [(1, 2, 64), (2, 2, 160), (4, 4, 8)], (1, 4, 4, 5)) if SIMULATED else (
    # dense (broadcast inputs, several vectors), packed groups, depthwise (whole-vector inputs), a few
    # output channels (input phases), and one wide enough for a block remainder
    2, [(1, 8, 40), (8, 16, 16), (16, 16, 16), (1, 16, 2), (2, 6, 18)], (1, 4, 5, 7))
OPTIONS = [dict(padding="SAME"), dict(padding=LHS_PAD, lhs_dilation=(1, 2, 1)),
           dict(stride=2, rhs_dilation=2, padding=1)]


@pytest.mark.parametrize("options", OPTIONS, ids=["same", "lhs_dilated", "strided"])
@pytest.mark.parametrize("groups, cin, cout", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_and_inf_in_every_kernel_family(kernel, dtype, groups, cin, cout, options):
    rng = np.random.default_rng(cin * cout + groups)
    x = rng.standard_normal((*X_SIZE, cin)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, cin // groups, cout)).astype(dtype)
    x[0, 0, 0, 0, 0], x[0, 2, 3, 4, -1], x[0, -1, -1, -1, cin // 2] = np.nan, np.inf, -np.inf
    w[0, 0, 0, 0, 0], w[2, 2, 2, -1, -1], w[1, 1, 1, 0, cout // 2] = np.inf, np.nan, -np.inf  # corners: padding
    with forced_kernel(kernel):
        got = nbconv.conv3d(x, w, groups=groups, backend=BACKEND, **options)
    assert np.isnan(got).any() and np.isfinite(got).any()  # the case reaches both kinds of output
    assert_conv_close(got, x, w, groups=groups, **options)
