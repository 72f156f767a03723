"""conv3d against the NumPy reference: random shapes and options, named edge cases, dtypes, layouts."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from nbconv.cpu import blocked, conv, emitter, microkernel
from nbconv.geometry import conv_geometry
from nbconv.reference import conv3d_reference
from tests.support import BACKEND, KERNELS, SIMULATED, assert_conv_close, forced_kernel

MAX_SIZE = 3 if SIMULATED else 7
EXAMPLES = 12 if SIMULATED else 150


@st.composite
def conv_problems(draw, dtypes=("float32", "float64"), count=3, max_size=MAX_SIZE,
                  depthwise=None if SIMULATED else 9):
    """x, w and the options of a convolution of `count` spatial axes covering every documented form
    of every argument; depthwise layers of up to `depthwise` channels (None: none)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    if draw(st.booleans()) and depthwise:
        groups = cin = cout = draw(st.integers(1, depthwise))
    batch = draw(st.integers(1, 2))
    sizes = draw(st.lists(st.integers(1, max_size), min_size=count, max_size=count))
    kernel = draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    options = dict(
        stride=draw(per_axis(3, count)), lhs_dilation=draw(per_axis(2, count)),
        rhs_dilation=draw(per_axis(2, count)), padding=draw(paddings(count)), groups=groups,
        channel_first=draw(st.booleans()))
    dtype = draw(st.sampled_from(dtypes))
    x = rng.standard_normal((batch, *sizes, cin)).astype(dtype)
    if options["channel_first"]:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    if draw(st.booleans()):
        x = x[0]  # unbatched
    w = rng.standard_normal((*kernel, cin // groups, cout)).astype(dtype)
    if draw(st.booleans()):
        options["bias"] = rng.standard_normal(cout).astype(dtype)
    return x, w, options


def per_axis(top, count=3):
    """A positive option of `count` spatial axes in every form: an int, 1 int, or one per axis."""
    one = st.integers(1, top)
    return st.one_of(one, st.tuples(one), st.tuples(*[one] * count))


def paddings(count=3):
    """Every form of padding for `count` spatial axes."""
    pad = st.integers(-1, 3)
    pair = st.tuples(pad, pad)
    return st.one_of(st.sampled_from(["SAME", "VALID", "same"]), st.integers(0, 2),
                     st.tuples(*[pad] * count), st.tuples(pair), st.tuples(*[pair] * count))


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(problem=conv_problems())
def test_matches_reference(kernel, problem):
    x, w, options = problem
    with forced_kernel(kernel):
        got = nbconv.conv3d(x, w, backend=BACKEND, **options)
    assert_conv_close(got, x, w, **options)


@settings(max_examples=EXAMPLES, deadline=None)
@given(problem=conv_problems(dtypes=("float64",)))
def test_valid_flops_count_the_products_that_read_an_input(problem):
    """geometry.valid_flops (which sizes a call's slices) against the reference: with x and w all ones
    and one channel, each output value is the number of its taps that read an input value."""
    x, w, options = problem
    taps = {name: options[name] for name in ("stride", "padding", "lhs_dilation", "rhs_dilation")}
    geometry = conv_geometry(x.shape if x.ndim == 5 else (1, *x.shape), w.shape, groups=options["groups"],
                             channel_first=options["channel_first"], **taps)
    ones = conv3d_reference(np.ones((1, *geometry.in_spatial, 1)), np.ones((*geometry.kernel, 1, 1)), **taps)
    per_sample = 2 * ones.sum() * geometry.out_channels * geometry.in_channels // geometry.groups
    assert geometry.valid_flops == geometry.batch * per_sample


CASES = {
    "1x1x1 kernel": ((2, 3, 4, 5, 6), (1, 1, 1, 6, 4), {}),
    "kernel larger than input, VALID": ((1, 2, 3, 3, 2), (3, 3, 3, 2, 2), {"padding": "VALID"}),
    "kernel larger than input, SAME": ((1, 2, 3, 3, 2), (3, 4, 5, 2, 2), {}),
    "negative padding crops": ((1, 6, 6, 6, 2), (2, 2, 2, 2, 3), {"padding": ((-1, -2), (0, -1), (-2, 1))}),
    "asymmetric padding": ((1, 4, 5, 6, 2), (3, 3, 3, 2, 2), {"padding": ((0, 2), (2, 0), (1, 3))}),
    "stride larger than kernel": ((1, 7, 8, 9, 2), (2, 2, 2, 2, 3), {"stride": (3, 4, 5)}),
    "all dilations and groups": ((2, 5, 4, 5, 4), (2, 3, 2, 2, 6),
                                 {"stride": 2, "lhs_dilation": (2, 1, 3), "rhs_dilation": (1, 2, 2),
                                  "groups": 2, "padding": 2}),
    "depthwise with multiplier": ((1, 4, 4, 4, 3), (3, 3, 3, 1, 6), {"groups": 3}),
    "depthwise": ((2, 4, 5, 3, 5), (3, 2, 3, 1, 5), {"groups": 5, "rhs_dilation": 2}),
    "SAME with input dilation": ((1, 3, 4, 3, 2), (3, 3, 2, 2, 2), {"lhs_dilation": 2, "stride": 2}),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_named_cases(name, dtype, kernel):
    x_shape, w_shape, options = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    with forced_kernel(kernel):
        got = nbconv.conv3d(x, w, backend=BACKEND, **options)
    assert_conv_close(got, x, w, **options)


def test_empty_output_shape():
    x = np.ones((2, 2, 3, 3, 2), np.float32)
    y = nbconv.conv3d(x, np.ones((3, 3, 3, 2, 4), np.float32), padding="VALID", backend=BACKEND)
    assert y.shape == (2, 0, 1, 1, 4) and y.dtype == np.float32


def _problem(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 4, 5, 6, 4)).astype(dtype),
            rng.standard_normal((3, 2, 3, 2, 6)).astype(dtype), {"groups": 2, "padding": 1, "stride": 2})


@pytest.mark.parametrize("layout", ["negative strides", "fortran", "strided view"])
def test_any_memory_layout(layout):
    x, w, options = _problem()
    x_view = {"negative strides": lambda a: a[:, ::-1, :, ::-1].copy()[:, ::-1, :, ::-1],
              "fortran": np.asfortranarray,
              "strided view": lambda a: np.repeat(a, 2, axis=3)[:, :, :, ::2]}[layout](x)
    w_view = np.asfortranarray(w)[::-1][::-1]
    np.testing.assert_array_equal(nbconv.conv3d(x_view, w_view, backend=BACKEND, **options),
                                  nbconv.conv3d(x, w, backend=BACKEND, **options))


def test_channel_first_is_a_transpose():
    x, w, options = _problem()
    last = nbconv.conv3d(x, w, backend=BACKEND, **options)
    first = nbconv.conv3d(np.moveaxis(x, -1, 1), w, channel_first=True, backend=BACKEND, **options)
    np.testing.assert_array_equal(first, np.moveaxis(last, -1, 1))


@pytest.mark.parametrize("channel_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_is_filled_and_returned(channel_first, dtype):
    x, w, options = _problem(dtype)
    want = nbconv.conv3d(x, w, channel_first=channel_first, backend=BACKEND, **options)
    out = np.full(want.shape, np.nan, dtype)
    got = nbconv.conv3d(x, w, channel_first=channel_first, out=out, backend=BACKEND, **options)
    assert got is out
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("dtypes, expected", [
    (("float32", "float32"), "float32"), (("float64", "float64"), "float64"),
    (("float32", "float64"), "float64"), (("float16", "float16"), "float16"),
    (("float16", "float32"), "float32"), (("int32", "int32"), "float64"),
    (("bool", "int8"), "float64"), (("int16", "float32"), "float32")])
def test_result_dtype(dtypes, expected):
    x, w, options = _problem()
    x, w = x.astype(dtypes[0]), w.astype(dtypes[1])
    y = nbconv.conv3d(x, w, backend=BACKEND, **options)
    assert y.dtype == np.dtype(expected)
    assert_conv_close(y, x, w, **options)


def test_nan_and_inf_propagate_like_lax():
    """Inf times a real zero is NaN; taps over padding or inserted zeros form no product at all."""
    x = np.ones((1, 3, 3, 3, 1))
    x[0, 0, 0, 0] = np.inf
    x[0, 2, 2, 2] = 0.0
    w = np.ones((3, 3, 3, 1, 1))
    w[0, 0, 0] = np.nan
    w[1, 1, 1] = np.inf
    for options in ({}, {"lhs_dilation": 2, "padding": 1}, {"padding": ((2, 0), (1, 1), (0, 2))}):
        assert_conv_close(nbconv.conv3d(x, w, backend=BACKEND, **options), x, w, **options)


def test_plain_lists_are_accepted():
    x = np.arange(2 * 3 * 3 * 3).reshape(1, 3, 3, 3, 2)
    w = np.ones((2, 2, 2, 2, 1), int)
    y = nbconv.conv3d(x.tolist(), w.tolist(), padding="VALID", backend=BACKEND)
    assert_conv_close(y, x, w, padding="VALID")


BLOCK_OPTIONS = ({"padding": "SAME"}, {"stride": (1, 1, 2), "padding": ((0, 0), (1, 0), (2, 1))},
                 {"lhs_dilation": (1, 1, 3), "stride": (1, 1, 2), "padding": 1}, {"rhs_dilation": 3})


def _sweep_rows(kernel, x, w, groups=1):
    """Output rows of every length modulo the pixel blocks (16, 12, 8, 6 and their halves), through
    stride, input dilation and padding; with a bias, packed like the weights."""
    bias = np.linspace(-1, 1, w.shape[-1]).astype(w.dtype)
    for options in BLOCK_OPTIONS:
        for width in (1, 5, 6, 13, 29, 37):
            xs = x[:, :, :, :width]
            with forced_kernel(kernel):
                got = nbconv.conv3d(xs, w, groups=groups, bias=bias, backend=BACKEND, **options)
            assert_conv_close(got, xs, w, groups=groups, bias=bias, **options)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cout", [5, 16, 17, 33, 48, 64, 70])
def test_blocked_channel_blocks_and_pixel_remainders(cout, dtype):
    """Every vector count V = 1..4 and a partial last channel block."""
    rng = np.random.default_rng(cout)
    _sweep_rows("blocked", rng.standard_normal((1, 2, 3, 37, 3)).astype(dtype),
                rng.standard_normal((1, 2, 3, 3, cout)).astype(dtype))


PACKED_GROUPS = [
    ("float32", 2, 3, 8), ("float32", 4, 2, 4), ("float32", 8, 1, 2), ("float32", 16, 1, 1),
    ("float32", 48, 1, 1), ("float32", 32, 2, 1), ("float32", 24, 1, 1), ("float32", 5, 2, 3),
    ("float32", 32, 1, 1), ("float32", 64, 1, 1), ("float64", 2, 3, 4), ("float64", 8, 1, 1),
    ("float64", 16, 1, 1), ("float64", 24, 1, 1), ("float64", 4, 5, 2), ("float64", 6, 1, 1),
    ("float32", 8, 8, 8), ("float32", 4, 4, 4), ("float32", 2, 6, 2), ("float32", 6, 4, 8), ("float64", 4, 4, 4),
    ("float64", 2, 6, 2)]


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", PACKED_GROUPS)
def test_blocked_packed_groups(dtype, groups, cin_g, cout_g):
    """Small groups packed K to a vector (K = 2 .. 16; K * Cout_g filling the vector or not: 24
    depthwise channels are 2 x 12 in float32, 5 groups of 3 take 15 lanes), depthwise included,
    with interleaved inputs and lanes reordered into channel order at the store; or, where K (a power
    of two) divides Cin_g, one group per vector with K input phases added up at the store (the last
    six cases: K = 2 and 4, 3 units, 4 of 16 lanes). Depthwise with whole vectors (V = 1..4 of LANES
    channels) loads each input once along stride-1 rows (a sliding window, or weights held in
    registers: `target.Blocking.held`), and reads every tap afresh where strides, dilations or row
    ends prevent it."""
    rng = np.random.default_rng(groups * cout_g)
    _sweep_rows("blocked", rng.standard_normal((1, 2, 3, 37, groups * cin_g)).astype(dtype),
                rng.standard_normal((2, 2, 3, cin_g, groups * cout_g)).astype(dtype), groups=groups)


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", PACKED_GROUPS + [("float32", 1, 5, 70), ("float64", 2, 3, 9)])
def test_gathered_packing_is_pack_weights(dtype, groups, cin_g, cout_g):
    """The per-call packing (a precomputed gather where K > 1) puts every weight and bias value where
    `pack_weights`, the layout's definition, does; the bias as a 1-tap kernel in input phase 0."""
    rng = np.random.default_rng(groups + cin_g)
    w = rng.standard_normal((2, 3, 1, cin_g, groups * cout_g)).astype(dtype)
    bias = rng.standard_normal(groups * cout_g).astype(dtype)
    geometry = conv_geometry((1, 4, 4, 4, groups * cin_g), w.shape, stride=1, padding="SAME", lhs_dilation=1,
                             rhs_dilation=1, groups=groups, channel_first=False)
    blocking, weight_index, bias_index = blocked._packing(geometry, np.dtype(dtype))
    bias_taps = np.zeros((1, 1, 1, blocking.phases, bias.size), dtype)
    bias_taps[..., 0, :] = bias
    assert (weight_index is None) == (blocking.spread == 1)
    if weight_index is not None:
        np.testing.assert_array_equal(blocked._gather(w, weight_index), blocked.pack_weights(w, blocking))
    np.testing.assert_array_equal(blocked._gather(bias, bias_index), blocked.pack_weights(bias_taps, blocking))


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", [("float32", 1, 16, 128), ("float64", 1, 8, 64),
                                                       ("float32", 2, 8, 96), ("float32", 1, 16, 70)])
@pytest.mark.parametrize("layout", ["C", "read-only", "F"])
def test_dense_packing_is_pack_weights(dtype, groups, cin_g, cout_g, layout, monkeypatch):
    """The per-call packing of dense and wide-group weights (K = 1) is `pack_weights`, the layout's
    definition: whole blocks of C-contiguous weights (read-only ones too, as JAX passes them) cut
    apart on every thread, without `pack_weights`; the zero-padded 70 channels and F-ordered weights
    through it."""
    rng = np.random.default_rng(cin_g)
    w = rng.standard_normal((3, 3, 3, cin_g, groups * cout_g)).astype(dtype)  # over PARALLEL_PACK_BYTES
    w = np.asfortranarray(w) if layout == "F" else w
    w.flags.writeable = layout != "read-only"
    geometry = conv_geometry((1, 4, 4, 4, groups * cin_g), w.shape, stride=1, padding="SAME", lhs_dilation=1,
                             rhs_dilation=1, groups=groups, channel_first=False)
    blocking, weight_index, _ = blocked._packing(geometry, np.dtype(dtype))
    assert weight_index is None and blocking.spread == 1
    want = blocked.pack_weights(w, blocking)
    assert w.nbytes >= blocked.PARALLEL_PACK_BYTES
    if layout != "F" and cout_g != 70:  # every target's vectors split these channels into whole blocks
        monkeypatch.setattr(blocked, "pack_weights", None)
    np.testing.assert_array_equal(blocked._packed(w, blocking, None), want)


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g, phases", [
    ("float32", 8, 8, "L/2", 2),
    ("float32", 4, 4, "L/4", lambda lanes: 4 if lanes > 4 else 1),  # K = 4 = L groups: whole vectors
    ("float64", 2, 6, 2, lambda lanes: 2 if lanes >= 4 else 1),  # two groups of 2 fit 4 lanes, not 2
    ("float32", 4, 2, "L/4", 1), ("float32", 64, 1, 1, 1), ("float32", 32, 2, 1, 1), ("float32", 3, 3, 4, 1),
    ("float32", 1, 8, 32, 1)])
def test_blocked_input_phases_where_k_divides_the_group_inputs(dtype, groups, cin_g, cout_g, phases):
    """The blocked kernel's choice: K input phases of one group per vector when K (a power of two,
    below a whole vector) divides Cin_g, else K groups (or K = 1). Cout_g "L/n" is a fraction of the
    target's lanes L (K = n groups fit a vector); where the choice depends on L, `phases` says how
    (every target's lane count: SSE and NEON's 4 float32 lanes, AVX2's 8, AVX-512's 16)."""
    lanes = blocked.lanes(dtype)
    if isinstance(cout_g, str):
        cout_g = lanes // int(cout_g[2:])
    phases = phases(lanes) if callable(phases) else phases
    geometry = conv_geometry((1, 4, 4, 4, groups * cin_g), (3, 3, 3, cin_g, groups * cout_g), stride=1,
                             padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=groups, channel_first=False)
    assert blocked._blocking(geometry, np.dtype(dtype)).phases == phases


@pytest.mark.parametrize("dtype, cin, cout, options", [
    ("float32", 32, 3, {"padding": "SAME"}), ("float32", 64, 1, {"padding": 1, "lhs_dilation": 2}),
    ("float32", 8, 2, {"stride": (1, 2, 3), "padding": "SAME"}), ("float64", 8, 1, {"rhs_dilation": 2, "padding": 2})])
def test_blocked_few_output_channels_as_input_phases(dtype, cin, cout, options):
    """A layer to fewer than 4 channels (groups = 1; an input gradient of an RGB or single-channel
    layer) runs on the blocked kernel, its vectors K input phases of the one group, not on the loop
    nest: where K = Cin_g / 2**j fits Cout * K <= LANES (all of them on AVX2 and AVX-512)."""
    geometry = conv_geometry((1, 4, 5, 13, cin), (3, 3, 3, cin, cout), stride=options.get("stride", 1),
                             padding=options["padding"], lhs_dilation=options.get("lhs_dilation", 1),
                             rhs_dilation=options.get("rhs_dilation", 1), groups=1, channel_first=False)
    blocking, width = blocked._blocking(geometry, np.dtype(dtype)), blocked.lanes(dtype)
    kernel = conv._plan(geometry, dtype, None)[0]
    if width < 4 or 2 * cout > width:  # no vector holds 4 channels (float64 on 128-bit vectors), or
        # half a vector's channels are one group's: the loop nest
        assert kernel is conv.KERNELS["grouped"]
    else:
        assert blocking.phases > 1 and blocking.phases * cout <= width and kernel is blocked.run
    rng = np.random.default_rng(cin)
    x = rng.standard_normal((2, 4, 5, 13, cin)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, cin, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    assert_conv_close(nbconv.conv3d(x, w, bias=bias, backend="cpu", **options), x, w, bias=bias, **options)


@pytest.mark.parametrize("options", [
    {"padding": "SAME"}, {"stride": (1, 1, 2), "padding": 1}, {"rhs_dilation": 2, "padding": "SAME"},
    {"lhs_dilation": (1, 1, 2), "padding": 1}])
@pytest.mark.parametrize("dtype, groups, cin_g, cout_g, volumes", [
    ("float32", 4, 8, 9, True), ("float64", 3, 3, 9, True),
    ("float32", 32, 2, 2, lambda lanes: lanes > 4),  # on 4 lanes K = 2 input phases instead: no copy
    ("float32", 2, 16, 12, False), ("float32", 1, 5, 20, False)])
def test_blocked_unit_volumes(dtype, groups, cin_g, cout_g, volumes, options):
    """Units of short taps (here fewer than 16 input channels a group; on every x86 target one
    vector of output channels a group, or packed groups whose inputs are interleaved anyway) read x
    copied into a volume per unit, the others x as it is; both against the reference, with row ends,
    strides and both dilations. Where the choice depends on the target's lanes, `volumes` says how."""
    volumes = volumes(blocked.lanes(dtype)) if callable(volumes) else volumes
    rng = np.random.default_rng(groups * cin_g)
    x = rng.standard_normal((2, 3, 5, 13, groups * cin_g)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, cin_g, groups * cout_g)).astype(dtype)
    bias = rng.standard_normal(groups * cout_g).astype(dtype)
    geometry = conv_geometry(x.shape, w.shape, stride=options.get("stride", 1), padding=options["padding"],
                             lhs_dilation=options.get("lhs_dilation", 1), rhs_dilation=options.get("rhs_dilation", 1),
                             groups=groups, channel_first=False)
    assert blocked._blocking(geometry, np.dtype(dtype)).volumes == volumes
    with forced_kernel("blocked"):
        got = nbconv.conv3d(x, w, bias=bias, groups=groups, backend=BACKEND, **options)
    assert_conv_close(got, x, w, bias=bias, groups=groups, **options)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", [
    ("float32", 1, 32, 32), ("float32", 64, 1, 1), ("float32", 8, 8, 8), ("float32", 5, 2, 3), ("float64", 1, 3, 20)])
def test_blocked_large_result_stores(monkeypatch, tiny_l2, dtype, groups, cin_g, cout_g, aligned):
    """Results too large for the caches (here: every result): streamed (non-temporal stores) into an
    `out` that starts on a cache line where each block of a unit's channels spans whole lines of a
    pixel, else (an `out` one element off, or blocks of partial lines) prefetched for writing; dense
    with taps long enough to prefetch inputs, depthwise along stride-1 rows, input phases, packed groups."""
    monkeypatch.setattr(blocked, "PREFETCH_OUT_BYTES", 0)
    rng = np.random.default_rng(cin_g)
    x = rng.standard_normal((1, 3, 9, 29, groups * cin_g)).astype(dtype)
    w = rng.standard_normal((3, 3, 3, cin_g, groups * cout_g)).astype(dtype)
    shape = (1, 3, 9, 29, groups * cout_g)
    memory = np.full(np.prod(shape) + 64, np.nan, dtype)
    first = -memory.ctypes.data % 64 // memory.itemsize + (0 if aligned else 1)
    out = memory[first:first + np.prod(shape)].reshape(shape)
    geometry = conv_geometry(x.shape, w.shape, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1,
                             groups=groups, channel_first=False)
    blocking = blocked._blocking(geometry, np.dtype(dtype))
    unit_bytes = groups * cout_g // blocking.units * out.itemsize
    block_bytes = unit_bytes if blocking.blocks == 1 else blocking.vectors * blocked.lanes(dtype) * out.itemsize
    whole_lines = unit_bytes % 64 == 0 and block_bytes % 64 == 0
    assert blocked._store_mode(out, blocking, True) == (emitter.STREAMED if aligned and whole_lines
                                                  else emitter.PREFETCHED)
    with forced_kernel("blocked"):
        got = nbconv.conv3d(x, w, groups=groups, padding="SAME", backend=BACKEND, out=out)
    assert got is out
    assert_conv_close(got, x, w, groups=groups, padding="SAME")


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", [
    ("float32", 1, 3, 5), ("float32", 1, 2, 40), ("float32", 4, 2, 4), ("float32", 4, 4, 4), ("float64", 16, 1, 1),
    ("float64", 1, 3, 9)])
@pytest.mark.parametrize("options", [
    {"padding": "SAME"}, {"stride": (1, 2, 1), "padding": ((0, 0), (2, 1), (1, 2))},
    {"lhs_dilation": (1, 2, 1), "stride": (1, 2, 1), "padding": 2}, {"lhs_dilation": (1, 3, 2), "padding": 2},
    {"rhs_dilation": (1, 2, 3), "padding": "SAME"}])
def test_blocked_edge_columns(options, dtype, groups, cin_g, cout_g):
    """Narrow rows at padded W edges go down H through stretches of rows with the same taps, in
    bands of 8 rows (full, partial, split at padded H edges), through stride and input dilation in H;
    channel blocks full and partial (masked stores); groups packed K to a vector and input phases."""
    rng = np.random.default_rng(cout_g)
    w = rng.standard_normal((2, 3, 3, cin_g, groups * cout_g)).astype(dtype)
    for width in (1, 3, 6):
        x = rng.standard_normal((1, 2, 19, width, groups * cin_g)).astype(dtype)
        with forced_kernel("blocked"):
            got = nbconv.conv3d(x, w, groups=groups, backend=BACKEND, **options)
        assert_conv_close(got, x, w, groups=groups, **options)


@pytest.fixture
def tiny_l2(monkeypatch):
    """An L2 cache of no bytes: every geometry with KD > 1 takes a band's planes in turn."""
    monkeypatch.setattr(blocked, "l2_bytes", lambda: 0)
    blocked._launch_args.cache_clear()
    yield
    blocked._launch_args.cache_clear()


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", [
    ("float32", 1, 3, 20), ("float32", 16, 1, 1), ("float32", 4, 2, 4), ("float64", 1, 2, 9)])
@pytest.mark.parametrize("options", [
    {"padding": "SAME"}, {"stride": (2, 1, 2), "padding": "VALID"}, {"rhs_dilation": (2, 1, 1), "padding": 1},
    {"lhs_dilation": (2, 1, 1), "padding": 1}])
def test_blocked_planes_in_turn(tiny_l2, options, dtype, groups, cin_g, cout_g):
    """Tasks that take a band's output planes in turn (`_planes_first`) cover every plane and band once:
    several bands (19 rows), a partial last one, two samples, the threads claiming runs."""
    rng = np.random.default_rng(cout_g)
    x = rng.standard_normal((2, 6, 19, 5, groups * cin_g)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, cin_g, groups * cout_g)).astype(dtype)
    geometry = conv_geometry(x.shape, w.shape, **{"stride": 1, "lhs_dilation": 1, "rhs_dilation": 1, **options},
                             groups=groups, channel_first=False)
    assert blocked._planes_first(geometry, np.dtype(dtype))
    with forced_kernel("blocked"):
        got = nbconv.conv3d(x, w, groups=groups, backend=BACKEND, **options)
    assert_conv_close(got, x, w, groups=groups, **options)


@pytest.mark.parametrize("dtype, groups, cin_g, cout_g", PACKED_GROUPS + [("float32", 1, 5, 70), ("float64", 2, 3, 9)])
def test_launch_sizes_are_those_of_the_packed_arrays(dtype, groups, cin_g, cout_g):
    """The kernel's sizes, cached per geometry, are those of the arrays a call passes: the packed
    weights and bias (`pack_weights`), x and the tap tables."""
    w = np.zeros((2, 3, 1, cin_g, groups * cout_g), dtype)
    geometry = conv_geometry((1, 4, 5, 6, groups * cin_g), w.shape, stride=(1, 2, 1), padding="SAME",
                             lhs_dilation=1, rhs_dilation=1, groups=groups, channel_first=False)
    blocking = blocked._packing(geometry, np.dtype(dtype))[0]
    _, workers, meta = blocked._launch_args(geometry, np.dtype(dtype), 2, emitter.CACHED)
    bias = blocked.pack_weights(np.zeros((1, 1, 1, blocking.phases, w.shape[-1]), dtype), blocking)
    tables = [size for table in geometry.tap_tables() for size in table.shape]
    assert meta[1] == workers and meta[12] == bias.size
    assert meta[13] == microkernel.lines_address(blocking.shape, dtype)
    assert meta[14] == blocked._planes_first(geometry, np.dtype(dtype))
    n_od, n_oh, _ = geometry.out_spatial
    assert meta[0] == n_od * -(-n_oh // meta[15]) * meta[16]  # tasks: each plane's bands, in segments
    # x's layout: how far apart (in elements) pixels and units start in the x the call passes
    x = np.zeros((1, 4, 5, 6, groups * cin_g), dtype)
    if blocking.volumes:
        inputs = blocked.group_inputs(x, blocking.units, blocking.per_unit)  # (N * units, D, H, W, channels)
        layout = [inputs.strides[-2] // x.itemsize, inputs.strides[0] // x.itemsize]
    else:
        layout = [x.strides[-2] // x.itemsize, x.shape[-1] // blocking.units]
    assert list(meta[17:19]) == layout
    assert list(meta[19:]) == [4, 5, 6, groups * cin_g, *blocked.pack_weights(w, blocking).shape, *tables]
