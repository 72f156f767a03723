"""Channels moved between the caller's layout and the kernels' (`nbconv.cpu.layout`): exact copies."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from nbconv.cpu import layout


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), rows=st.integers(1, 150), cols=st.integers(1, 150),
       dtype=st.sampled_from([np.float32, np.float64]), into=st.booleans())
def test_swapped_is_numpys_transpose(n, rows, cols, dtype, into):
    """Every tile shape: whole 8 x 8 blocks, the edges moved value by value, axes shorter than a block."""
    a = np.random.default_rng(rows * cols).standard_normal((n, rows, cols)).astype(dtype)
    before = a.copy()
    out = np.full((n, cols, rows), np.nan, dtype) if into else None
    moved = layout.swapped(a, out)
    assert moved is out or not into
    np.testing.assert_array_equal(moved, a.transpose(0, 2, 1))
    np.testing.assert_array_equal(a, before)


@settings(max_examples=20, deadline=None)
@given(spatial=st.tuples(st.integers(1, 9), st.integers(1, 12), st.integers(1, 12)), cin=st.integers(1, 20),
       cout=st.integers(1, 20), batched=st.booleans(), with_out=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]))
def test_channels_first_is_the_moved_channels_last_result(spatial, cin, cout, batched, with_out, dtype):
    """Bit for bit: the same kernel computes both, only the moves differ (float16 moves through NumPy,
    computed in float32)."""
    rng = np.random.default_rng(sum(spatial) * cin * cout)
    x = rng.standard_normal((2 if batched else 1, *spatial, cin)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, cin, cout)).astype(dtype)
    want = np.moveaxis(nbconv.conv3d(x, w), -1, 1)  # (a sample alone may get other bands than in a batch)
    first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    if not batched:
        want, first = want[0], first[0]
    out = np.empty(want.shape, want.dtype) if with_out else None
    got = nbconv.conv3d(first, w, channel_first=True, out=out)
    assert got is out or not with_out
    np.testing.assert_array_equal(got, want)
