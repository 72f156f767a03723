"""Shared test helpers: the backend under test and error bounds derived from the arithmetic."""
import os
from contextlib import contextmanager

import numpy as np

from nbconv import config
from nbconv.reference import conv3d_reference

# The same suites run on the CPU and, in a child process under NUMBA_ENABLE_CUDASIM=1, on CUDA
# (tests/test_cudasim.py); the simulator runs one Python thread per GPU thread, so shapes shrink there.
BACKEND = os.environ.get("NBCONV_TEST_BACKEND", "cpu")
SIMULATED = BACKEND == "cuda"
# Every kernel of the backend, each forced in turn (nbconv.config): each computes every convolution.
KERNELS = ["tiled", "channels"] if SIMULATED else ["blocked", "grouped"]


@contextmanager
def forced_kernel(name):
    attr = "CUDA_KERNEL" if SIMULATED else "CPU_KERNEL"
    before = getattr(config, attr)
    setattr(config, attr, name)
    try:
        yield
    finally:
        setattr(config, attr, before)


def compute_dtype(*arrays):
    """The precision nbconv computes in for these inputs (docs/semantics.md, dtypes)."""
    dtype = np.result_type(*arrays)
    return np.dtype(np.float64) if dtype.kind in "biu" else np.promote_types(dtype, np.float32)


def assert_conv_close(got, x, w, **options):
    """`got` must equal the reference within the rounding error of a dot product of length
    L = taps * Cin / groups (+1 for the bias): |err| <= L * u * sum|x||w| (Higham, Thm 3.1) with u the
    unit roundoff of the computing precision, plus one rounding of the result to its dtype."""
    bias = options.get("bias")
    want = conv3d_reference(x, w, **options)
    scale = conv3d_reference(np.abs(x), np.abs(w), **{**options, "bias": None})
    if bias is not None:
        scale = scale + _per_channel(np.abs(np.asarray(bias, np.float64)).reshape(-1), options)
    terms = np.prod(np.shape(w)[:4]) + 1
    u = np.finfo(compute_dtype(x, w)).eps / 2
    u_out = np.finfo(np.asarray(got).dtype).eps / 2
    tol = terms * u * scale + u_out * np.abs(np.nan_to_num(want)) + np.finfo(np.float64).tiny
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), "NaN pattern differs")
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    err = np.abs(got[finite] - want[finite])
    bad = err > tol[finite]
    assert not bad.any(), f"max error {err.max()} exceeds bound {tol[finite][bad].min()} at {bad.sum()} places"


def _per_channel(values, options):
    return values.reshape(-1, 1, 1, 1) if options.get("channel_first") else values
