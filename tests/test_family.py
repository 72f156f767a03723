"""conv1d, conv2d, the transposed convolution and their gradients, against the NumPy reference (on
3-D arrays this file builds itself, with np.expand_dims) and against jax.lax in float64."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nbconv
from nbconv.geometry import conv_geometry
from tests.support import BACKEND, SIMULATED, assert_conv_close
from tests.test_conv3d import conv_problems

EXAMPLES = 10 if SIMULATED else 100
MAX_SIZE = 4 if SIMULATED else 9
CONV = {1: nbconv.conv1d, 2: nbconv.conv2d, 3: nbconv.conv3d}
VJP = {1: nbconv.conv1d_vjp, 2: nbconv.conv2d_vjp, 3: nbconv.conv3d_vjp}


@st.composite
def problems(draw, counts=(1, 2), dtypes=("float32", "float64")):
    """(count, x, w, options): a convolution of `count` spatial axes, every form of every option."""
    count = draw(st.sampled_from(counts))
    return (count, *draw(conv_problems(dtypes, count, MAX_SIZE, depthwise=6)))


def pairs(padding, count):
    """An explicit padding of any form -> `count` (lo, hi) pairs (a string as it is)."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * count
    if count == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [tuple(padding)]
    items = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    return items * count if len(items) == 1 else items


def as_3d(count, x, w, options):
    """The same convolution written with 3 spatial axes: unit axes in front of the spatial ones."""
    units = 3 - count
    batched = x.ndim == count + 2
    at = int(batched) + int(options["channel_first"])
    x3 = x.reshape(x.shape[:at] + (1,) * units + x.shape[at:])
    w3 = w.reshape((1,) * units + w.shape)
    lifted = dict(options)
    for name in ("stride", "lhs_dilation", "rhs_dilation"):
        value = options[name]
        lifted[name] = value if isinstance(value, int) or len(value) == 1 else (1,) * units + tuple(value)
    padding = pairs(options["padding"], count)
    lifted["padding"] = padding if isinstance(padding, str) else [(0, 0)] * units + list(padding)
    return x3, w3, lifted, at


@settings(max_examples=EXAMPLES, deadline=None)
@given(problem=problems())
def test_matches_reference(problem):
    count, x, w, options = problem
    got = CONV[count](x, w, backend=BACKEND, **options)
    x3, w3, lifted, at = as_3d(count, x, w, options)
    assert_conv_close(got.reshape(got.shape[:at] + (1,) * (3 - count) + got.shape[at:]), x3, w3, **lifted)


def _lax(count, x, w, options, jax):
    """jax.lax.conv_general_dilated of a `problems` draw, in float64 (None where JAX refuses it)."""
    jax.config.update("jax_enable_x64", True)  # brainstate switches it off again
    axes = "DHW"[3 - count:]
    layout = "NC" + axes if options["channel_first"] else "N" + axes + "C"

    def conv(a, b):
        return jax.lax.conv_general_dilated(
            a, b, _full(options["stride"], count), pairs(options["padding"], count),
            _full(options["lhs_dilation"], count), _full(options["rhs_dilation"], count),
            (layout, axes + "IO", layout), feature_group_count=options["groups"],
            precision=jax.lax.Precision.HIGHEST)
    return conv


def _full(value, count):
    value = (value,) if isinstance(value, int) else tuple(value)
    return value * count if len(value) == 1 else value


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(problem=problems(dtypes=("float64",)))
def test_forward_and_vjp_match_lax(problem):
    jax = pytest.importorskip("jax")
    count, x, w, options = problem
    options.pop("bias", None)
    # JAX rejects 'SAME' with input dilation (nbconv defines it: the reference test covers it) and a
    # crop larger than the axis (nbconv returns an empty result).
    assume(not (isinstance(options["padding"], str) and max(_full(options["lhs_dilation"], count)) > 1))
    batched = x.ndim == count + 2
    xb = x if batched else x[None]
    try:
        want, pullback = jax.vjp(_lax(count, x, w, options, jax), xb, w)
    except ValueError as err:
        assume("Negative padding is larger" not in str(err))
        raise
    want = np.asarray(want) if batched else np.asarray(want)[0]
    got = CONV[count](x, w, backend=BACKEND, **options)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(0).standard_normal(got.shape)
    dx, dw, _ = VJP[count](x, w, dy, backend=BACKEND, **options)
    want_dx, want_dw = pullback(dy if batched else dy[None])
    np.testing.assert_allclose(dx, np.asarray(want_dx) if batched else np.asarray(want_dx)[0], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)


@st.composite
def transposed_problems(draw):
    """(x, w, options, batched) of jax.lax.conv_transpose: 1-3 spatial axes, 'SAME', 'VALID' or pairs,
    channels first or last, a bias or none; x batched, or one sample of it where `batched` is False."""
    count = draw(st.integers(1, 2 if SIMULATED else 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = draw(st.lists(st.integers(1, MAX_SIZE // 2 + 1), min_size=count, max_size=count))
    kernel = draw(st.lists(st.integers(1, 4), min_size=count, max_size=count))
    cin, cout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    transpose_kernel = draw(st.booleans())
    pad = st.integers(-1, 3)
    options = dict(stride=draw(st.tuples(*[st.integers(1, 3)] * count)),
                   rhs_dilation=draw(st.tuples(*[st.integers(1, 2)] * count)),
                   padding=draw(st.one_of(st.sampled_from(["SAME", "VALID"]),
                                          st.tuples(*[st.tuples(pad, pad)] * count))),
                   transpose_kernel=transpose_kernel, channel_first=draw(st.booleans()))
    x = rng.standard_normal((draw(st.integers(1, 2)), *sizes, cin))
    if options["channel_first"]:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    w = rng.standard_normal((*kernel, *((cout, cin) if transpose_kernel else (cin, cout))))
    if draw(st.booleans()):
        options["bias"] = rng.standard_normal(cout)
    return x, w, options, draw(st.booleans())


@settings(max_examples=EXAMPLES // 2, deadline=None)
@given(problem=transposed_problems())
def test_conv_transpose_and_vjp_match_lax(problem):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    x, w, options, batched = problem
    padding = options["padding"] if isinstance(options["padding"], str) else list(options["padding"])
    axes = "DHW"[5 - x.ndim:]
    layout = "NC" + axes if options["channel_first"] else "N" + axes + "C"
    channel = 1 if options["channel_first"] else -1

    def lax(a, b):
        return jax.lax.conv_transpose(a, b, options["stride"], padding, options["rhs_dilation"],
                                      dimension_numbers=(layout, axes + "IO", layout),
                                      transpose_kernel=options["transpose_kernel"],
                                      precision=jax.lax.Precision.HIGHEST)
    try:
        want, pullback = jax.vjp(lax, x, w)
    except ValueError as err:  # a crop larger than the dilated axis: nbconv gives an empty result
        assume("Negative padding is larger" not in str(err))
        raise
    want = np.asarray(want)
    if "bias" in options:
        per_channel = [1] * want.ndim
        per_channel[channel] = -1
        want = want + options["bias"].reshape(per_channel)
    sample = (lambda a: a) if batched else (lambda a: a[0])
    got = nbconv.conv_transpose(sample(x), w, backend=BACKEND, **options)
    np.testing.assert_allclose(got, sample(want), rtol=1e-10, atol=1e-10)
    dy = np.random.default_rng(1).standard_normal(want.shape)
    dx, dw, dbias = nbconv.conv_transpose_vjp(sample(x), w, sample(dy), backend=BACKEND, **options)
    want_dx, want_dw = pullback(dy if batched else np.concatenate([dy[:1], np.zeros_like(dy[1:])]))
    np.testing.assert_allclose(dx, sample(np.asarray(want_dx)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)
    summed = np.moveaxis(dy if batched else dy[:1], channel, -1)
    np.testing.assert_allclose(dbias.reshape(-1), summed.sum(axis=tuple(range(summed.ndim - 1))), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("count", [1, 2])
def test_out_and_unbatched_and_channel_first(count):
    rng = np.random.default_rng(count)
    x = rng.standard_normal((2, 5, *(7,) * count)).astype(np.float32)  # channels first
    w = rng.standard_normal((*(3,) * count, 5, 4)).astype(np.float32)
    want = CONV[count](x, w, channel_first=True, backend=BACKEND)
    out = np.empty_like(want)
    assert CONV[count](x, w, channel_first=True, out=out, backend=BACKEND) is out
    np.testing.assert_array_equal(out, want)
    # one sample may be cut into other bands than two (`blocked._split`): the same sums, rounded apart
    np.testing.assert_allclose(CONV[count](x[1], w, channel_first=True, backend=BACKEND), want[1], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=rf"out must have shape \(2, 4{', 7' * count}\)"):
        CONV[count](x, w, channel_first=True, out=out[:1], backend=BACKEND)


@pytest.mark.parametrize("call, error, message", [
    (lambda: nbconv.conv2d(np.ones((1, 4, 4, 4, 2)), np.ones((3, 3, 2, 4))), ValueError,
     r"x must be 4-D \(N, H, W, Cin\) \(or 3-D unbatched\), got shape \(1, 4, 4, 4, 2\)"),
    (lambda: nbconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 3, 2, 4))), ValueError,
     r"w must be 4-D \(KH, KW, Cin // groups, Cout\)"),
    (lambda: nbconv.conv1d(np.ones((1, 2, 9)), np.ones((3, 2, 4)), channel_first=True, stride=(1, 2)),
     ValueError, "stride must be an int or a sequence of 1 ints"),
    (lambda: nbconv.conv1d(np.ones((1, 9, 2)), np.ones((3, 2, 4)), padding=(1, 2, 3)), ValueError,
     r"padding must have 1 entry \(or one \(lo, hi\) pair of ints\)"),
    (lambda: nbconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 4)), padding=((1, 1),) * 3), ValueError,
     "padding must have 1 or 2 entries"),
    (lambda: nbconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 4)), channel_first="no"), TypeError,
     "channel_first must be a bool"),
    (lambda: nbconv.conv2d_vjp(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 4)), np.ones((1, 4, 4, 3))),
     ValueError, r"dy must have the result's shape \(1, 4, 4, 4\)"),
    (lambda: nbconv.conv_transpose(np.ones((1, 4, 2)), np.ones((2,))), ValueError, "w must have 3, 4 or 5 axes"),
    (lambda: nbconv.conv_transpose(np.ones((1, 4, 2)), np.ones((3, 2, 4)), transpose_kernel=1), TypeError,
     "transpose_kernel must be a bool"),
])
def test_errors_name_the_callers_axes(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_conv1d_reads_two_ints_as_one_pair():
    """brainstate's Conv1d reads padding=(lo, hi) as one pair: a causal convolution."""
    x, w = np.arange(6.0).reshape(1, 6, 1), np.ones((3, 1, 1))
    np.testing.assert_array_equal(nbconv.conv1d(x, w, padding=(2, 0), backend=BACKEND).ravel(),
                                  [0, 1, 3, 6, 9, 12])


def test_dask_arrays_give_the_numpy_result():
    """On the CPU (the CUDA simulator runs no kernel from Dask's threads)."""
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 20, 16, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    lazy = nbconv.conv2d(da.from_array(x, chunks=(1, 7, 8, 3)), w, stride=2, padding=1, backend="cpu")
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), nbconv.conv2d(x, w, stride=2, padding=1, backend="cpu"),
                               rtol=1e-5, atol=1e-5)
    signal = rng.standard_normal((1, 3, 50)).astype(np.float32)
    lazy = nbconv.conv1d(da.from_array(signal, chunks=(1, 3, 13)), w[0], channel_first=True, backend="cpu")
    np.testing.assert_allclose(lazy.compute(), nbconv.conv1d(signal, w[0], channel_first=True, backend="cpu"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(stride=2, padding=(3, 1)), dict(lhs_dilation=3, rhs_dilation=2),
                                     dict(lhs_dilation=2, stride=3, padding="VALID", groups=4)])
def test_a_long_signal_is_cut_into_segments(options):
    """One sample of a 1-D signal is one band: its W is cut into segments for the threads
    (blocked._split), every residue class of input dilation and stride across the cuts."""
    from nbconv.cpu import blocked
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 1500, 8)).astype(np.float32)
    w = rng.standard_normal((3, 8 // options.get("groups", 1), 16)).astype(np.float32)
    geometry = conv_geometry((1, 1, 1, 1500, 8), (1, 1, 3, 8, 16), stride=1, padding="SAME", lhs_dilation=1,
                             rhs_dilation=1, groups=1, channel_first=False)
    assert blocked._split(geometry, np.dtype(np.float32), 2) == (1, 8)  # one row: 8 segments of 188 pixels
    got = nbconv.conv1d(x, w, backend="cpu", **options)
    x3, w3, lifted, _ = as_3d(1, x, w, {"channel_first": False, "stride": 1, "lhs_dilation": 1,
                                        "rhs_dilation": 1, "padding": "SAME", **options})
    assert_conv_close(got[:, None, None], x3, w3, **lifted)


@pytest.mark.parametrize("batch, rows, band", [(1, 56, 7), (1, 48, 8), (2, 56, 8), (1, 5, 3), (16, 56, 8)])
def test_bands_balance_the_threads(batch, rows, band):
    """Bands of an image's rows (narrow rows: no cap for L2): 56 rows of one image are 8 bands of 7 on
    2 threads (4 each), not 7 bands of 8; 48 rows 6 of 8 (3 each); 5 rows 3 + 2, one band a thread;
    enough planes keep bands of 8."""
    from nbconv.cpu import blocked
    geometry = conv_geometry((batch, 1, rows, 30, 4), (1, 3, 3, 4, 8), stride=1, padding="SAME", lhs_dilation=1,
                             rhs_dilation=1, groups=1, channel_first=False)
    assert blocked._split(geometry, np.dtype(np.float32), 2) == (band, 1)
