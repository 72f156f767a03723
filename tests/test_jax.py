"""nbconv.jax against jax.lax.conv_general_dilated and its jax.vjp in float64 (property tests over
random shapes, options and layouts, under jit, grad, vmap and scan), against the NumPy reference for
nbconv's own options, and its brainstate layers against brainstate's (jax and brainstate are test
extras; CI installs them)."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from nbconv.reference import conv3d_reference
from tests.support import SIMULATED, assert_conv_close
from tests.test_conv3d import conv_problems

pytestmark = pytest.mark.skipif(SIMULATED, reason="nbconv.jax runs on the CPU backend only")
jax = pytest.importorskip("jax")
brainstate = pytest.importorskip("brainstate")  # imported before x64 is switched on: it switches it off
jnp = jax.numpy
lax = jax.lax
nbjax = pytest.importorskip("nbconv.jax")
# Per count of spatial axes: channels-last, channels-first, mixed and scrambled layouts.
LAYOUTS = {3: [("NDHWC", "DHWIO", "NDHWC"), ("NCDHW", "OIDHW", "NCDHW"), ("NCDHW", "DHWIO", "NDHWC"),
               ("DHWNC", "IODHW", "CDHWN")],
           2: [("NHWC", "HWIO", "NHWC"), ("NCHW", "OIHW", "NCHW"), ("HWNC", "IOHW", "CHWN")],
           1: [("NWC", "WIO", "NWC"), ("NCW", "OIW", "NCW"), ("WNC", "IOW", "NWC")]}


@pytest.fixture(autouse=True)
def x64():
    """float64 for the comparisons with JAX, whatever an earlier import switched."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@st.composite
def lax_problems(draw):
    """lhs, rhs with 1-3 spatial axes in one of LAYOUTS and conv_general_dilated's arguments, every
    form of padding."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.sampled_from([3, 3, 2, 1]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 6), min_size=count, max_size=count))
    kernel = draw(st.lists(st.integers(1, 3), min_size=count, max_size=count))
    triple = st.lists(st.integers(1, 2), min_size=count, max_size=count).map(tuple)
    lhs_dilation = draw(st.one_of(st.none(), triple))
    pairs = st.lists(st.tuples(st.integers(-1, 2), st.integers(-1, 2)), min_size=count, max_size=count)
    padding = draw(pairs if lhs_dilation and max(lhs_dilation) > 1 else st.one_of(
        st.sampled_from(["SAME", "VALID", "SAME_LOWER"]), pairs))
    layout = draw(st.sampled_from(LAYOUTS[count]))
    axes = "DHW"[3 - count:]
    logical_x = rng.standard_normal((draw(st.integers(1, 2)), cin, *spatial))  # N, C, spatial
    logical_w = rng.standard_normal((cout, cin // groups, *kernel))  # O, I, spatial
    lhs = np.transpose(logical_x, [("N", "C", *axes).index(a) for a in layout[0]])
    rhs = np.transpose(logical_w, [("O", "I", *axes).index(a) for a in layout[1]])
    args = dict(window_strides=draw(triple), padding=padding, lhs_dilation=lhs_dilation,
                rhs_dilation=draw(st.one_of(st.none(), triple)), dimension_numbers=layout,
                feature_group_count=groups)
    return lhs, rhs, args


def _close(got, want, scale):
    """float64 dot products of a few hundred terms: far inside 1e-12 of |terms|' sum."""
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-12 * max(float(scale), 1.0))


@settings(max_examples=60, deadline=None)
@given(lax_problems())
def test_conv_general_dilated_matches_lax_under_jit_and_grad(problem):
    lhs, rhs, args = problem
    ours = jax.jit(lambda a, b: nbjax.conv_general_dilated(a, b, **args))
    theirs = lambda a, b: lax.conv_general_dilated(a, b, **args, precision=lax.Precision.HIGHEST)  # noqa: E731
    try:
        want = theirs(lhs, rhs)
    except ValueError as err:  # e.g. a negative pad larger than the input: the same error
        with pytest.raises(ValueError) as raised:
            ours(lhs, rhs)
        assert str(raised.value) == str(err)
        return
    got = ours(lhs, rhs)
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = np.abs(lhs).max() * np.abs(rhs).max() * rhs.size
    _close(got, want, scale)
    dy = np.random.default_rng(1).standard_normal(want.shape)
    grads = jax.jit(lambda a, b: jax.vjp(ours, a, b)[1](dy))(lhs, rhs)
    for g, w in zip(grads, jax.vjp(theirs, lhs, rhs)[1](dy)):
        _close(g, w, scale * np.abs(dy).max(initial=0) * max(dy.size, 1))
    # vmap over a new leading axis of either operand, whatever the layout puts first
    pair = np.stack([lhs, -2 * lhs]), np.stack([rhs, rhs[::-1]])
    for in_axes in ((0, None), (None, 0)):
        operands = [pair[i] if axis == 0 else (lhs, rhs)[i] for i, axis in enumerate(in_axes)]
        _close(jax.jit(jax.vmap(ours, in_axes))(*operands), jax.vmap(theirs, in_axes)(*operands), 2 * scale)


@settings(max_examples=40, deadline=None)
@given(conv_problems(dtypes=("float64",)))
def test_conv3d_matches_the_reference(problem):
    """nbconv's own options (so "SAME" with input dilation), jitted, against the NumPy reference."""
    x, w, options = problem
    got = jax.jit(lambda x, w, b: nbjax.conv3d(x, w, bias=b, **{k: v for k, v in options.items() if k != "bias"}),
                  )(x, w, options.get("bias"))
    assert_conv_close(got, x, w, **options)


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (1, 0)])
def test_vmap_folds_the_mapped_axis_and_matches_lax(in_axes):
    """Shared weights fold into the batch, mapped weights into the groups: one kernel call, the
    same values as vmap of lax, forward and per-example gradients."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 2, 5, 6, 4, 4)), rng.standard_normal((3, 3, 2, 3, 2, 6))
    x = x if in_axes[0] is not None else x[0]
    x = np.moveaxis(x, 0, 1) if in_axes[0] == 1 else x
    w = w if in_axes[1] is not None else w[0]
    args = dict(window_strides=(1, 2, 1), padding="SAME", rhs_dilation=(2, 1, 1), feature_group_count=2,
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    ours = lambda a, b: nbjax.conv_general_dilated(a, b, **args)  # noqa: E731
    theirs = lambda a, b: lax.conv_general_dilated(a, b, **args)  # noqa: E731
    _close(jax.jit(jax.vmap(ours, in_axes))(x, w), jax.vmap(theirs, in_axes)(x, w), 1e3)
    jaxpr = str(jax.make_jaxpr(jax.vmap(ours, in_axes))(x, w))
    assert jaxpr.count("nbconv_convolution[") == 1
    loss = lambda f: lambda a, b: (f(a, b) ** 2).sum()  # noqa: E731
    for argnums in ((0,), (1,), (0, 1)):  # dx alone folds into the batch too
        for got, want in zip(jax.jit(jax.vmap(jax.grad(loss(ours), argnums), in_axes))(x, w),
                             jax.vmap(jax.grad(loss(theirs), argnums), in_axes)(x, w)):
            _close(got, want, 1e5)


def test_nested_vmap_and_scan():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 1, 4, 4, 4, 2)), rng.standard_normal((3, 3, 3, 2, 3))
    ours = lambda a: nbjax.conv3d(a, w, padding=1)  # noqa: E731
    want = conv3d_reference(x.reshape(6, 4, 4, 4, 2), w, padding=1).reshape(2, 3, 1, 4, 4, 4, 3)
    _close(jax.jit(jax.vmap(jax.vmap(ours)))(x), want, 1e2)

    def body(carry, xi):
        y = ours(xi)
        return carry + (y**2).sum(), y

    total, ys = jax.jit(lambda xs: lax.scan(body, 0.0, xs))(x[0])
    _close(ys, want[0], 1e2)
    _close(total, (want[0] ** 2).sum(), 1e4)


@pytest.mark.parametrize("argnums, wanted", [((0,), "('x',)"), ((1,), "('w',)"), ((0, 1), "('x', 'w')"),
                                             ((2,), None)])
def test_only_the_gradients_asked_for_are_computed(argnums, wanted):
    x, w, b = np.ones((1, 4, 4, 4, 2)), np.ones((3, 3, 3, 2, 4)), np.ones(4)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: nbjax.conv3d(a[0], a[1], bias=a[2]).sum(), argnums))(x, w, b))
    if wanted is None:
        assert "nbconv_convolution_vjp" not in jaxpr
    else:
        assert f"wrt={wanted}" in jaxpr


@pytest.mark.parametrize("case", ["batch_group_count", "int32", "mixed dtypes", "preferred_element_type",
                                  "4 spatial axes"])
def test_what_the_kernels_do_not_do_falls_back_to_lax(case):
    rng = np.random.default_rng(0)
    lhs, rhs = rng.standard_normal((2, 4, 5, 5, 5)), rng.standard_normal((4, 2, 3, 3, 3))
    args = dict(window_strides=(1, 1, 1), padding="SAME")
    if case == "batch_group_count":
        args["batch_group_count"], rhs = 2, rhs[:, :, ...].repeat(2, axis=1)[:, :4]
    elif case == "int32":
        lhs, rhs = lhs.astype(np.int32), rhs.astype(np.int32)
    elif case == "mixed dtypes":
        rhs = rhs.astype(np.float32)
    elif case == "preferred_element_type":
        lhs, rhs = lhs.astype(np.float32), rhs.astype(np.float32)
        args["preferred_element_type"] = np.float64
    else:
        lhs, rhs, args["window_strides"] = lhs[..., None], rhs[..., None], (1, 1, 1, 1)
    try:
        want = lax.conv_general_dilated(lhs, rhs, **args)
    except Exception as err:  # the same error, from JAX itself
        with pytest.raises(type(err), match=str(err)[:40].replace("(", r"\(").replace(")", r"\)")):
            nbjax.conv_general_dilated(lhs, rhs, **args)
        return
    jaxpr = str(jax.make_jaxpr(lambda a, b: nbjax.conv_general_dilated(a, b, **args))(lhs, rhs))
    assert "nbconv" not in jaxpr and "conv_general_dilated" in jaxpr
    np.testing.assert_array_equal(nbjax.conv_general_dilated(lhs, rhs, **args), want)


def test_lax_errors_are_laxs_and_conv3d_errors_name_the_argument():
    x, w = jnp.ones((1, 4, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 4))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    for bad in [dict(padding="SAME", lhs_dilation=(2, 2, 2)), dict(padding="FULL"),
                dict(padding="VALID", feature_group_count=3)]:
        with pytest.raises(Exception) as theirs:  # noqa: B017 - whatever JAX raises (KeyError for "FULL")
            lax.conv_general_dilated(x, w, (1, 1, 1), dimension_numbers=dn, **bad)
        with pytest.raises(type(theirs.value)) as ours:
            nbjax.conv_general_dilated(x, w, (1, 1, 1), dimension_numbers=dn, **bad)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="groups"):
        nbjax.conv3d(x, w, groups=3)
    with pytest.raises(TypeError, match="real"):
        nbjax.conv3d(x.astype(jnp.complex64), w)


def test_conv3d_dtypes_follow_jax():
    x, w = np.ones((1, 4, 4, 4, 2)), np.ones((3, 3, 3, 2, 4))
    assert nbjax.conv3d(x.astype(np.int32), w.astype(np.int32)).dtype == jnp.float64
    half = nbjax.conv3d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), padding="VALID")
    assert half.dtype == jnp.bfloat16 and float(half[0, 0, 0, 0, 0]) == 54.0
    assert nbjax.conv3d(x.astype(np.float32), w).dtype == jnp.float64
    jax.config.update("jax_enable_x64", False)
    assert nbjax.conv3d(x.astype(np.int32), w.astype(np.int32)).dtype == jnp.float32


def test_nan_and_empty_results_as_lax():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 4, 2))
    x[0, 1, 2, 3, 0], x[1, 0, 0, 0, 1] = np.nan, np.inf
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 2, 3))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    got = jax.jit(lambda a: nbjax.conv_general_dilated(a, w, (1, 1, 1), "SAME", dimension_numbers=dn))(x)
    want = lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    empty = jax.jit(lambda a: nbjax.conv3d(a, w, padding="VALID"))(x[:, :2])
    assert empty.shape == (2, 0, 2, 2, 3)


def test_an_error_in_the_kernel_reaches_the_caller(monkeypatch):
    def broken(*args):
        raise RuntimeError("the kernel failed")

    monkeypatch.setattr(nbconv.cpu, "convolve", broken)
    with pytest.raises(Exception, match="the kernel failed"):
        jax.jit(lambda a: nbjax.conv3d(a, jnp.ones((3, 3, 3, 2, 5))))(jnp.ones((1, 5, 4, 4, 2))).block_until_ready()


def test_calls_from_many_threads_at_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 3, 4, 8))
    f = jax.jit(jax.value_and_grad(lambda x, w: (nbjax.conv3d(x, w) ** 2).sum(), (0, 1)))
    xs = [rng.standard_normal((2, 6, 6, 6, 4)) for _ in range(8)]
    want = [jax.value_and_grad(lambda x, w: (lax.conv_general_dilated(
        x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")) ** 2).sum(), (0, 1))(x, w)
            for x in xs]
    got = [None] * len(xs)

    def run(i):
        for _ in range(5):
            got[i] = f(xs[i], w)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, want_i in zip(got, want):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want_i)):
            _close(a, b, 1e6)


# -- the brainstate layers --------------------------------------------------------------------------

LAYER_OPTIONS = [
    dict(in_size=(6, 7, 8, 4), out_channels=6, kernel_size=(3, 2, 3), stride=(2, 1, 2), padding="VALID", groups=2),
    dict(in_size=(4, 6, 6, 5), out_channels=5, kernel_size=3, padding=((1, 0), (2, 1), (0, 0)), rhs_dilation=2,
         groups=5),
    dict(in_size=(5, 4, 5, 6), out_channels=4, kernel_size=2, padding=1, lhs_dilation=(2, 1, 2),
         channel_first=True),
]


def _assert_gradients_match(ours, theirs, x, argnums):
    """The gradients of mean(layer(x) ** 2) in the parameters (argnums 0) and x (1): ours jitted,
    within float32 rounding of brainstate's (both sides sum the same products in another order)."""
    def loss(layer):
        return lambda params, x: (layer._conv_op(x, params) ** 2).mean()

    got = jax.jit(jax.grad(loss(ours), argnums))(ours.weight.value, x)
    want = jax.grad(loss(theirs), argnums)(theirs.weight.value, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.abs(b).max())),
                 got, want)


def _pair(kind, options, **extra):
    """brainstate's layer and nbconv.jax's, built alike from the same seed."""
    brainstate.random.seed(3)
    theirs = getattr(brainstate.nn, kind)(**options, **extra)
    brainstate.random.seed(3)
    return theirs, getattr(nbjax, kind)(**options, **extra)


@pytest.mark.parametrize("kind", ["Conv3d", "ScaledWSConv3d"])
@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=range(len(LAYER_OPTIONS)))
def test_layers_match_brainstate(kind, options):
    """Same parameters and attributes; outputs and every parameter's gradient within float32
    rounding (both sides sum the same products in another order)."""
    jax.config.update("jax_enable_x64", False)
    mask = (np.random.default_rng(2).random(nbconv.Conv3d(**options).kernel_shape) > 0.2).astype(np.float32)
    theirs, ours = _pair(kind, options, b_init=brainstate.nn.init.Normal(), w_mask=mask)
    for name in ("in_size", "out_size", "kernel_shape", "stride", "padding", "lhs_dilation", "rhs_dilation", "groups"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert jax.tree.structure(ours.weight.value) == jax.tree.structure(theirs.weight.value)
    jax.tree.map(np.testing.assert_array_equal, ours.weight.value, theirs.weight.value)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *options["in_size"])), jnp.float32)
    np.testing.assert_allclose(jax.jit(ours)(x), theirs(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours(x[0]), theirs(x[0]), rtol=1e-4, atol=1e-4)
    _assert_gradients_match(ours, theirs, x, (0, 1))


FAMILY_OPTIONS = [
    ("Conv1d", dict(in_size=(40, 4), out_channels=6, kernel_size=5, stride=2, padding=(4, 0), groups=2)),
    ("ScaledWSConv1d", dict(in_size=(30, 3), out_channels=5, kernel_size=3, rhs_dilation=3, padding="VALID")),
    ("Conv2d", dict(in_size=(9, 8, 4), out_channels=8, kernel_size=(3, 2), stride=(1, 2), padding=((1, 0), (2, 1)),
                    groups=4)),
    ("ScaledWSConv2d", dict(in_size=(7, 9, 6), out_channels=6, kernel_size=3, lhs_dilation=2, padding=1,
                            channel_first=True)),
]


@pytest.mark.parametrize("kind, options", FAMILY_OPTIONS, ids=[kind for kind, _ in FAMILY_OPTIONS])
def test_family_layers_match_brainstate(kind, options):
    """The 1-D and 2-D layers run on the kernels (a 3-D view, `nbconv.lifting`): brainstate's outputs
    and weight gradients within float32 rounding."""
    jax.config.update("jax_enable_x64", False)
    theirs, ours = _pair(kind, options, b_init=brainstate.nn.init.Normal())
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *options["in_size"])), jnp.float32)
    assert "nbconv_convolution" in str(jax.make_jaxpr(ours)(x))
    np.testing.assert_allclose(jax.jit(ours)(x), theirs(x), rtol=1e-4, atol=1e-4)
    _assert_gradients_match(ours, theirs, x, 0)


@st.composite
def transposed_layers(draw):
    """brainstate's ConvTranspose1d/2d/3d arguments: "SAME", "VALID", an int and (lo, hi) pairs of
    padding, strides, kernel dilation, groups, both channel layouts and a weight mask."""
    count = draw(st.sampled_from([1, 2, 3]))

    def per_axis(low, high):
        return st.lists(st.integers(low, high), min_size=count, max_size=count).map(tuple)

    groups, channel_first = draw(st.sampled_from([1, 1, 2])), draw(st.booleans())
    spatial, in_channels = draw(per_axis(1, 5)), groups * draw(st.integers(1, 3))
    pairs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=count, max_size=count)
    options = dict(in_size=(in_channels, *spatial) if channel_first else (*spatial, in_channels),
                   out_channels=groups * draw(st.integers(1, 3)), kernel_size=draw(per_axis(1, 3)),
                   stride=draw(per_axis(1, 3)), rhs_dilation=draw(per_axis(1, 2)), groups=groups,
                   padding=draw(st.one_of(st.sampled_from(["SAME", "VALID"]), st.integers(0, 2), pairs)),
                   channel_first=channel_first)
    if draw(st.booleans()):
        shape = (*options["kernel_size"], options["out_channels"], in_channels // groups)
        options["w_mask"] = (np.random.default_rng(count).random(shape) > 0.3).astype(np.float32)
    return f"ConvTranspose{count}d", options


@settings(max_examples=20, deadline=None)
@given(transposed_layers())
def test_transposed_layers_match_brainstate(layer):
    """The transposed layers (brainstate's kernel flipped over the input dilated by the stride, on
    the kernels): brainstate's attributes, outputs and weight, bias and input gradients within
    float32 rounding."""
    jax.config.update("jax_enable_x64", False)
    kind, options = layer
    theirs, ours = _pair(kind, options, b_init=brainstate.nn.init.Normal())
    for name in ("in_size", "out_size", "kernel_shape", "stride", "padding", "padding_mode", "rhs_dilation"):
        assert getattr(ours, name) == getattr(theirs, name), name
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, *options["in_size"])), jnp.float32)
    assert "nbconv_convolution" in str(jax.make_jaxpr(ours)(x))
    np.testing.assert_allclose(jax.jit(ours)(x), theirs(x), rtol=1e-4, atol=1e-4)
    _assert_gradients_match(ours, theirs, x, (0, 1))


def test_layer_errors_are_brainstates():
    for bad in [dict(in_size=(4, 4, 4), out_channels=2, kernel_size=3),
                dict(in_size=(4, 4, 4, 3), out_channels=2, kernel_size=3, groups=2),
                dict(in_size=(4, 4, 4, 2), out_channels=2, kernel_size=3, padding="FULL"),
                dict(in_size=(4, 4, 4, 2), out_channels=2, kernel_size=3, lhs_dilation=2)]:
        with pytest.raises(Exception) as theirs:
            brainstate.nn.Conv3d(**bad)
        with pytest.raises(type(theirs.value)) as ours:
            nbjax.Conv3d(**bad)
        assert str(ours.value) == str(theirs.value)
    layer = nbjax.Conv3d((4, 4, 4, 2), 3, 3)
    with pytest.raises(ValueError, match="expected input shape"):
        layer(jnp.ones((1, 4, 4, 5, 2)))


def test_use_nbconv_switches_a_model_and_back():
    jax.config.update("jax_enable_x64", False)
    net = brainstate.nn.Sequential(brainstate.nn.Conv3d((6, 6, 6, 2), 4, 3), brainstate.nn.ReLU(),
                                   brainstate.nn.ScaledWSConv3d((6, 6, 6, 4), 3, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 6, 2)), jnp.float32)
    image = brainstate.nn.Sequential(brainstate.nn.Conv2d((6, 6, 2), 4, 3),
                                     brainstate.nn.ScaledWSConv2d((6, 6, 4), 3, 3),
                                     brainstate.nn.ConvTranspose2d((6, 6, 3), 2, 2, stride=2))
    signal = brainstate.nn.Sequential(brainstate.nn.Conv1d((6, 2), 4, 3), brainstate.nn.ScaledWSConv1d((6, 4), 3, 3))
    inputs = [x, x[:, 0], x[:, 0, 0]]
    models = [net, image, signal]
    before, states = [m(a) for m, a in zip(models, inputs)], [net.layers[i].weight for i in (0, 2)]
    brainstates = [[type(m) for m in model.layers] for model in models]
    assert nbjax.use_nbconv(net) is net
    assert [type(m) for m in net.layers] == [nbjax.Conv3d, brainstate.nn.ReLU, nbjax.ScaledWSConv3d]
    nbjax.use_nbconv(image), nbjax.use_nbconv(signal)
    assert [type(m) for m in image.layers + signal.layers] == [nbjax.Conv2d, nbjax.ScaledWSConv2d,
                                                                 nbjax.ConvTranspose2d, nbjax.Conv1d,
                                                                 nbjax.ScaledWSConv1d]
    for model, a, want in zip(models, inputs, before):
        assert "nbconv_convolution" in str(jax.make_jaxpr(model.update)(a))
        np.testing.assert_allclose(model(a), want, rtol=1e-5, atol=1e-5)
    assert all(net.layers[i].weight is state for i, state in zip((0, 2), states))  # the same ParamStates
    for model in models:
        nbjax.use_nbconv(model, enable=False)
    assert [[type(m) for m in model.layers] for model in models] == brainstates


def test_another_default_backend_runs_on_lax(monkeypatch):
    """Where JAX computes on another device, both functions are lax's convolution (nbconv's
    "SAME" with input dilation too, through explicit pads)."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x, w = np.random.default_rng(0).standard_normal((2, 4, 5, 3, 2)), np.ones((3, 3, 3, 2, 4))
    ours = lambda a: nbjax.conv3d(a, w, padding="SAME", lhs_dilation=2, bias=np.arange(4.0))  # noqa: E731
    assert "nbconv" not in str(jax.make_jaxpr(ours)(x))
    assert_conv_close(ours(x), x, w, padding="SAME", lhs_dilation=2, bias=np.arange(4.0))
    lax_conv = lambda a: nbjax.conv_general_dilated(a, w, (1, 1, 1), "SAME", dimension_numbers=LAYOUTS[3][0])  # noqa
    assert "nbconv" not in str(jax.make_jaxpr(lax_conv)(x))


def _python(code):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_importing_nbconv_does_not_import_jax():
    _python("import sys, nbconv; assert 'jax' not in sys.modules; nbconv.jax.conv3d; assert 'jax' in sys.modules")


def test_without_jax_nbconv_has_no_jax_attribute():
    _python("import sys; sys.modules['jax'] = None; import nbconv; assert not hasattr(nbconv, 'jax')")


def test_the_layers_keep_the_users_x64_setting():
    """brainstate switches x64 off as it is imported; nbconv.jax imports it lazily, and keeps it on."""
    _python("import jax; jax.config.update('jax_enable_x64', True); import nbconv.jax; nbconv.jax.Conv3d; "
            "assert jax.config.jax_enable_x64")


def test_the_process_exits_with_work_in_flight():
    """Work still running at exit ends first (its host calls need the interpreter): no hang."""
    _python("import jax, jax.numpy as jnp, nbconv.jax as nj\n"
            "x = jnp.ones((4, 24, 24, 24, 8))\n"
            "for _ in range(3): y = jax.jit(lambda a: jnp.sin(nj.conv3d(jnp.cos(a), jnp.ones((3, 3, 3, 8, 8)))))(x)")


@pytest.mark.parametrize("shape, padding, lhs_dilation", [((40, 4), "SAME", 1), ((9, 8, 4), [(1, 1), (1, 1)], 2),
                                                   ((4, 5, 6, 4), "VALID", 1)])
def test_bench_jax_times_every_dimension(shape, padding, lhs_dilation):
    """`python -m nbconv bench --jax` on 1-D, 2-D (a transposed layer) and 3-D workloads: brainstate's
    layer of that dimension on XLA and on nbconv agree, and every runner is timed."""
    from nbconv.tools import jax_bench
    from nbconv.tools.workloads import Workload

    jax.config.update("jax_enable_x64", False)
    wl = Workload("tiny", 2, shape, 6, 3, 1, padding, 1, lhs_dilation, 2, "float32")
    row = jax_bench.measure(wl, 1)
    assert row["error"] < 1e-4
    assert all(row[f"{kind} {name}"] > 0 for kind in ("forward", "step") for name in jax_bench.RUNNERS)
