"""conv3d_vjp against the NumPy reference (property tests over random shapes and every option) and
jax.vjp; weight_standardization_vjp and the layers' vjp against jax.vjp and brainstate (test extras;
CI installs them). Only the tests that compare with JAX or brainstate need them: the others run
without."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from nbconv.cpu import weight_grad
from nbconv.geometry import conv_geometry
from nbconv.reference import conv3d_vjp_reference
from tests.support import SIMULATED
from tests.test_conv3d import conv_problems
from tests.test_standardization import _standardize_parts

pytestmark = pytest.mark.skipif(SIMULATED, reason="conv3d_vjp runs on the CPU backend only")


def _jax():
    """jax and jax.numpy in float64 (brainstate, imported by other modules, switches it off), or the
    test is skipped."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax, jax.numpy


def lax_vjp(x, w, dy, stride, padding, lhs_dilation, rhs_dilation, groups, channel_first, bias=None):
    """dx, dw of jax.lax.conv_general_dilated in float64, and the sum of dy per output channel."""
    jax, jnp = _jax()
    from tests.test_against_jax import _three
    layout = "NCDHW" if channel_first else "NDHWC"
    if not isinstance(padding, str):
        padding = np.broadcast_to(np.array(padding).reshape(-1, 2 if np.ndim(padding) == 2 else 1), (3, 2))
        padding = [tuple(int(v) for v in row) for row in padding]
    batched = x.ndim == 5

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x if batched else x[None], w, _three(stride), padding, lhs_dilation=_three(lhs_dilation),
            rhs_dilation=_three(rhs_dilation), dimension_numbers=(layout, "DHWIO", layout),
            feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)

    _, back = jax.vjp(conv, jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64))
    dx, dw = back(jnp.asarray(dy if batched else dy[None], jnp.float64))
    return np.asarray(dx), np.asarray(dw)


def _bounds(x, w, dy, options, u):
    """Each gradient is a sum of products: |err| <= L * u * (the same sum over |terms|), L its
    length (dx sums taps * Cout / groups terms, dw N * prod(out_spatial)), plus one rounding to the
    result's dtype; the reference sums in longdouble."""
    abs_dx, abs_dw = conv3d_vjp_reference(np.abs(x), np.abs(w), np.abs(dy), **options)
    out_spatial = dy.shape[-3:] if options["channel_first"] else dy.shape[-4:-1]
    batch = x.shape[0] if x.ndim == 5 else 1
    terms_dx = np.prod(w.shape[:3]) * w.shape[4] // options["groups"]
    terms_dw = batch * np.prod(out_spatial)
    return (terms_dx + 2) * u * abs_dx + 1e-300, (terms_dw + 2) * u * abs_dw + 1e-300


def _cotangent(x, w, options):
    y = nbconv.conv3d(x, w, **options)
    return np.random.default_rng(y.size).standard_normal(y.shape).astype(y.dtype)


@settings(max_examples=75, deadline=None)
@given(conv_problems())
def test_conv3d_vjp_matches_the_reference(problem):
    """Against the NumPy reference's transposed steps (nbconv.reference.conv3d_vjp_reference), for
    every option, float32 and float64 (each within its own precision's bound)."""
    x, w, options = problem
    options = {k: v for k, v in options.items() if k != "bias"}
    dy = _cotangent(x, w, options)
    dx, dw, dbias = nbconv.conv3d_vjp(x, w, dy, **options)
    want_dx, want_dw = conv3d_vjp_reference(x, w, dy, **options)
    bound_dx, bound_dw = _bounds(x, w, dy, options, np.finfo(x.dtype).eps / 2)
    assert dx.shape == x.shape and dx.dtype == x.dtype and dw.shape == w.shape and dw.dtype == w.dtype
    assert np.all(np.abs(dx - want_dx) <= bound_dx) and np.all(np.abs(dw - want_dw) <= bound_dw)
    channel_axis = (dy.ndim - 4 if options["channel_first"] else -1) % dy.ndim
    want_dbias = dy.sum(axis=tuple(i for i in range(dy.ndim) if i != channel_axis), dtype=np.float64)
    assert dbias.shape == (w.shape[-1],)
    atol = dy.size * np.finfo(x.dtype).eps * np.abs(dy).max(initial=0)
    np.testing.assert_allclose(dbias, want_dbias, rtol=0, atol=atol)


# (x shape, w shape, options) through every layout of the weight-gradient kernel (nbconv.cpu.weight_grad):
# W phases (stride), classes (input dilation), both, kernel dilation, negative and uneven padding, groups
# with partial and several vector blocks, input channels in several runs (1x1x1 kernel), tiles' remainders.
WEIGHT_GRADIENT_CASES = [
    ((2, 4, 5, 11, 13), (3, 3, 3, 13, 20), dict(stride=(1, 1, 2), padding="SAME")),
    ((1, 4, 5, 13, 7), (2, 3, 3, 7, 9), dict(stride=(2, 1, 3), padding=((1, 0), (0, -1), (2, -1)))),
    ((1, 3, 4, 9, 6), (2, 2, 3, 3, 18), dict(lhs_dilation=(1, 2, 2), padding=1, groups=2)),
    ((2, 3, 4, 9, 5), (3, 2, 3, 5, 40), dict(stride=(1, 2, 2), lhs_dilation=(2, 1, 3), rhs_dilation=(1, 2, 2),
                                             padding=((2, 1), (1, 2), (3, 0)))),
    ((1, 3, 4, 6, 40), (1, 1, 1, 40, 8), dict(padding="VALID")),
    # x's rows transposed in 8 x 8 register blocks (`layout.swapped`): groups of whole vectors, and
    # input dilation's classes with several blocks of output channels copied as runs
    ((1, 2, 3, 20, 32), (2, 2, 3, 16, 40), dict(groups=2, padding="SAME")),
    ((1, 2, 3, 9, 16), (1, 2, 3, 16, 200), dict(lhs_dilation=(1, 1, 2), padding=1)),
    ((2, 3, 3, 8, 3), (3, 3, 3, 3, 32), dict(padding="SAME", rhs_dilation=(1, 1, 2))),
    # groups narrower than a vector, packed K to one: W taps as pixels (depthwise, a channel multiplier,
    # two input channels a group, W dilation), and transposed rows (W stride: phases; W input dilation:
    # classes; more groups than a unit's MOST_VECTORS vectors hold: several units)
    ((2, 3, 4, 9, 16), (3, 3, 3, 1, 16), dict(padding="SAME", groups=16)),
    ((1, 3, 4, 11, 6), (2, 3, 3, 1, 12), dict(padding=((1, 0), (0, 1), (2, -1)), groups=6)),
    ((1, 3, 4, 9, 16), (3, 2, 3, 2, 16), dict(padding="SAME", rhs_dilation=(1, 1, 2), groups=8)),
    ((1, 4, 5, 13, 24), (3, 3, 3, 3, 16), dict(stride=(1, 2, 2), padding="SAME", groups=8)),
    ((1, 3, 4, 7, 12), (2, 3, 3, 1, 24), dict(lhs_dilation=(1, 2, 3), padding=1, groups=12)),
    ((1, 3, 3, 6, 512), (3, 3, 3, 1, 512), dict(stride=(2, 1, 3), padding="VALID", groups=512)),
]


def _weight_gradient_problem(x_shape, w_shape, options, dtype):
    """(options with every key, geometry, x, w, dy) of a random convolution."""
    options = {"stride": 1, "lhs_dilation": 1, "rhs_dilation": 1, "groups": 1, "channel_first": False, **options}
    rng = np.random.default_rng(x_shape[-1])
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    return options, conv_geometry(x_shape, w_shape, **options), x, w, _cotangent(x, w, options)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, options", WEIGHT_GRADIENT_CASES)
def test_weight_gradient_kernel_matches_the_reference(x_shape, w_shape, options, dtype):
    """dw on the weight-gradient kernel (asserted to be the one used) against the reference; a NaN in x
    reaches exactly the weights whose products read it."""
    options, geometry, x, w, dy = _weight_gradient_problem(x_shape, w_shape, options, dtype)
    assert weight_grad.usable(geometry, np.dtype(dtype))
    dw = nbconv.conv3d_vjp(x, w, dy, wrt="w", **options)[1]
    want = conv3d_vjp_reference(x, w, dy, **options)[1]
    assert np.all(np.abs(dw - want) <= _bounds(x, w, dy, options, np.finfo(x.dtype).eps / 2)[1])
    x[0, 1, 2, 3, 0] = np.nan
    nan_dw = nbconv.conv3d_vjp(x, w, dy, wrt="w", **options)[1]
    np.testing.assert_array_equal(np.isnan(nan_dw), np.isnan(conv3d_vjp_reference(x, w, dy, **options)[1]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, options", [
    ((2, 3, 4, 9, 3), (3, 2, 3, 3, 20), dict(padding="SAME")),
    ((1, 4, 5, 13, 1), (3, 3, 3, 1, 16), dict(stride=(2, 1, 2), padding=((1, 0), (0, 1), (2, -1)))),
    ((2, 3, 4, 9, 16), (3, 3, 3, 1, 16), dict(padding="SAME", groups=16)),
    ((1, 3, 4, 10, 8), (2, 3, 5, 2, 8), dict(padding=((1, 0), (0, 1), (3, 1)), rhs_dilation=(1, 1, 2), groups=4))])
def test_weight_gradient_of_few_input_channels_folds_w_taps(x_shape, w_shape, options, dtype):
    """An RGB or single-channel layer's dw takes folded rows (pixels kw * Cin + i, W zero-padded), and
    so do groups packed K to a vector along a stride-1 W (pixels: the W taps); an Inf in dy where the
    zero padding meets it takes transposed rows instead, so that no 0 * Inf is formed that JAX does
    not form: JAX's values (float64) and JAX's NaN both ways."""
    options, geometry, x, w, dy = _weight_gradient_problem(x_shape, w_shape, options, dtype)
    assert weight_grad._foldable(geometry, np.dtype(dtype))
    bound = 2 * _bounds(x, w, dy, options, np.finfo(x.dtype).eps / 2)[1]
    for edge in (False, True):
        if edge:
            dy[0, 1, 1, 0, 0] = np.inf  # ow = 0: a W tap on the padding
            assert not weight_grad.finite_at_w_edges(dy, geometry)
        dw = nbconv.conv3d_vjp(x, w, dy, wrt="w", **options)[1]
        want = lax_vjp(x, w, dy, **options)[1]
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isnan(dw), np.isnan(want))
        np.testing.assert_array_equal(dw[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
        assert np.all(np.abs(dw[finite] - want[finite]) <= bound[finite])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_weight_gradient_of_narrow_groups_matches_the_reference(data):
    """dw of groups of 1-4 input and output channels (depthwise, channel multipliers, small groups: K of
    them to a vector where the kernel packs them) over random strides, dilations and paddings (empty
    results among them), float32 and float64, against the reference within the bound of its sums."""
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    groups, cin_g, cout_g = (data.draw(st.sampled_from(choices))
                             for choices in ([2, 3, 4, 6, 8, 16, 24, 32], [1, 1, 2, 3, 4], [1, 1, 2, 3, 4]))
    kernel = data.draw(st.tuples(*[st.integers(1, 3)] * 3))
    spatial = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 11)))
    stride, lhs, rhs = (data.draw(st.tuples(*[st.integers(1, 2)] * 3)) for _ in range(3))
    padding = data.draw(st.sampled_from(["SAME", 1, ((1, 0), (0, 2), (2, -1))]))
    options = dict(stride=stride, padding=padding, lhs_dilation=lhs, rhs_dilation=rhs, groups=groups,
                   channel_first=False)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((data.draw(st.integers(1, 2)), *spatial, groups * cin_g)).astype(dtype)
    w = rng.standard_normal((*kernel, cin_g, groups * cout_g)).astype(dtype)
    dy = _cotangent(x, w, options)
    dw = nbconv.conv3d_vjp(x, w, dy, wrt="w", **options)[1]
    want = conv3d_vjp_reference(x, w, dy, **options)[1]
    assert np.all(np.abs(dw - want) <= _bounds(x, w, dy, options, np.finfo(x.dtype).eps / 2)[1])


JAX_CASES = [
    ((2, 5, 6, 7, 4), (3, 3, 3, 4, 6), dict(stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1)),
    ((2, 5, 6, 7, 4), (3, 2, 3, 2, 6), dict(stride=(2, 1, 3), padding=((1, 2), (0, -1), (2, 0)), lhs_dilation=1,
                                          rhs_dilation=(1, 2, 1), groups=2)),
    ((1, 5, 6, 7, 4), (2, 3, 3, 1, 4), dict(stride=(1, 2, 1), padding=((0, 1), (1, 1), (-1, 2)),
                                          lhs_dilation=(2, 1, 3), rhs_dilation=(2, 1, 1), groups=4)),
    ((2, 3, 6, 5, 3), (3, 1, 2, 3, 2), dict(stride=2, padding="VALID", lhs_dilation=1, rhs_dilation=1, groups=1)),
]


@pytest.mark.parametrize("channel_first", [False, True])
@pytest.mark.parametrize("x_shape, w_shape, options", JAX_CASES)
def test_conv3d_vjp_matches_jax(x_shape, w_shape, options, channel_first):
    """Against jax.vjp of lax.conv_general_dilated in float64: both sides round, so twice the bound."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    if channel_first:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    options = {**options, "channel_first": channel_first}
    dy = _cotangent(x, w, options)
    want_dx, want_dw = lax_vjp(x, w, dy, **options)
    dx, dw, _ = nbconv.conv3d_vjp(x, w, dy, **options)
    bound_dx, bound_dw = _bounds(x, w, dy, options, 2**-53)
    assert np.all(np.abs(dx - want_dx) <= 2 * bound_dx) and np.all(np.abs(dw - want_dw) <= 2 * bound_dw)


def test_only_what_is_asked():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 4, 4, 4, 2)), rng.standard_normal((3, 3, 3, 2, 3))
    dy = rng.standard_normal((1, 4, 4, 4, 3))
    dx, dw, dbias = nbconv.conv3d_vjp(x, w, dy, wrt="w")
    assert dx is None and dbias is None and dw.shape == w.shape
    dx, dw, dbias = nbconv.conv3d_vjp(x, w, dy, wrt=("x", "bias"))
    assert dw is None and dx.shape == x.shape and dbias.shape == (3,)
    dbias = nbconv.conv3d_vjp(x, w, dy, bias=np.zeros((1, 1, 1, 3), np.float32), wrt="bias")[2]
    assert dbias.shape == (1, 1, 1, 3) and dbias.dtype == np.float32  # bias's shape and dtype, as JAX's


@pytest.mark.parametrize("call, match", [
    (lambda x, w, dy: nbconv.conv3d_vjp(x, w, dy[:, :2]), "dy must have the result's shape"),
    (lambda x, w, dy: nbconv.conv3d_vjp(x, w, dy, wrt=("x", "b")), "wrt must name some of"),
    (lambda x, w, dy: nbconv.conv3d_vjp(x, w, dy, wrt=3), "wrt must name some of"),
    (lambda x, w, dy: nbconv.conv3d_vjp(x, w, dy.astype(complex)), "dy must be real"),
    (lambda x, w, dy: nbconv.conv3d_vjp(x, w, None), "dy must be an array"),
])
def test_bad_arguments(call, match):
    x, w, dy = np.ones((1, 4, 4, 4, 2)), np.ones((3, 3, 3, 2, 3)), np.ones((1, 4, 4, 4, 3))
    with pytest.raises((TypeError, ValueError), match=match):
        call(x, w, dy)


def test_nan_in_dy_reaches_the_inputs_its_taps_read_as_in_jax():
    x, w = np.ones((1, 5, 5, 5, 1)), np.ones((3, 3, 3, 1, 1))
    dy = np.zeros((1, 5, 5, 5, 1))
    dy[0, 0, 0, 0, 0] = np.nan
    dx, dw, _ = nbconv.conv3d_vjp(x, w, dy)
    want_dx, want_dw = lax_vjp(x, w, dy, 1, "SAME", 1, 1, 1, False)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want_dx))
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want_dw))


@pytest.mark.parametrize("options", [dict(padding="SAME"), dict(padding=2, lhs_dilation=2),
                                     dict(padding=((1, 0), (2, 1), (0, 2)), stride=2, rhs_dilation=2)])
def test_the_reference_forms_no_product_with_padding_in_dw_either(options):
    """Inf and NaN in dy at the borders: the reference's dw has NaN exactly where nbconv's (and JAX's,
    above) has, since neither multiplies dy by padding or an inserted zero."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 4, 5, 4, 2)), rng.standard_normal((3, 3, 3, 2, 3))
    dy = _cotangent(x, w, options)
    dy[0, 0, 0, 0, 0], dy[0, -1, -1, -1, 1], dy[0, 0, -1, 0, 2] = np.inf, np.nan, -np.inf
    dx, dw, _ = nbconv.conv3d_vjp(x, w, dy, **options)
    want_dx, want_dw = conv3d_vjp_reference(x, w, dy, **options)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want_dw))
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want_dx))
    assert np.isnan(want_dw).any() and not np.isnan(want_dw).all()


def lax_standardization_vjp(w, dw_hat, eps, gain, out_axis):
    """jax.vjp of brainstate's formula in float64 (gain * (w - mean) * rsqrt(max(var * fan_in, eps)))."""
    jax, jnp = _jax()
    axes = tuple(i for i in range(w.ndim) if i != out_axis % w.ndim)
    fan_in = np.prod([w.shape[i] for i in axes])

    def standardize(w, gain):
        scale = jax.lax.rsqrt(jnp.maximum(jnp.var(w, axis=axes, keepdims=True) * fan_in, eps))
        scale = scale if gain is None else scale * gain.reshape(scale.shape if gain.size > 1 else ())
        return w * scale - jnp.mean(w, axis=axes, keepdims=True) * scale

    args = (jnp.asarray(w, jnp.float64), None if gain is None else jnp.asarray(gain, jnp.float64))
    _, back = jax.vjp(standardize, *args)
    dw, dgain = back(jnp.asarray(dw_hat, jnp.float64))
    return np.asarray(dw), None if dgain is None else np.asarray(dgain)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=5), data=st.data(),
       gain_kind=st.sampled_from([None, "one", "per_channel"]), eps=st.sampled_from([1e-4, 1e-2, 10.0]))
def test_weight_standardization_vjp_matches_jax(shape, data, gain_kind, eps):
    out_axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal(shape) * 3 + 1
    dw_hat = rng.standard_normal(shape)
    gain = {None: None, "one": rng.uniform(0.5, 2, (1,)),
            "per_channel": rng.uniform(0.5, 2, shape[out_axis])}[gain_kind]
    want_dw, want_dgain = lax_standardization_vjp(w, dw_hat, eps, gain, out_axis)
    dw, dgain = nbconv.weight_standardization_vjp(w, dw_hat, eps, gain, out_axis)
    # Both sides sum fan_in terms in float64, terms of at most |scale| * |dw_hat| * (2 + fan_in)
    # (dw_hat, its mean, and the standardized column times its dot product with dw_hat): each side
    # is within about fan_in * u of that, whatever the gradient's own size (it cancels to zero for
    # a column of two elements, whose standardization is +-1 whatever w is). And w - mean is rounded
    # to u * |w|, against centred values of about 1 / scale: a nearly constant column (two elements
    # 0.04 apart, scale 40) magnifies that by 1 + scale * |w|.
    fan_in = w.size // shape[out_axis]
    scale = _standardize_parts(w, eps, gain, out_axis)[1].max()
    tolerance = 4 * fan_in * 2**-53 * scale * np.abs(dw_hat).max() * (2 + fan_in) * (1 + scale * np.abs(w).max())
    np.testing.assert_allclose(dw, want_dw, rtol=0, atol=tolerance)
    if gain is None:
        assert dgain is None
    else:
        assert dgain.shape == gain.shape
        # dgain sums dw_hat * standardized / gain over fan_in (or all) elements, each below |dw_hat|
        atol = 4 * w.size * 2**-53 * np.abs(dw_hat).max() * (1 + np.abs(w).max() * scale)
        np.testing.assert_allclose(dgain, want_dgain, rtol=0, atol=atol)


def test_the_tie_of_the_max_splits_like_jax():
    """var * fan_in == eps exactly: half of each side (JAX's max), not one of them."""
    w = np.array([[0.0], [1.0]])  # var * fan_in = 0.5
    dw_hat = np.array([[1.0], [3.0]])
    dw, _ = nbconv.weight_standardization_vjp(w, dw_hat, eps=0.5)
    np.testing.assert_allclose(dw, lax_standardization_vjp(w, dw_hat, 0.5, None, -1)[0], atol=1e-15)


LAYER_OPTIONS = [
    dict(in_size=(5, 6, 5, 3), out_channels=4, kernel_size=3),
    dict(in_size=(6, 5, 6, 4), out_channels=6, kernel_size=(3, 2, 3), stride=(2, 1, 2), padding="VALID", groups=2),
    dict(in_size=(4, 5, 6, 5), out_channels=4, kernel_size=2, padding=1, lhs_dilation=(2, 1, 2), rhs_dilation=2,
         channel_first=True),
]


@pytest.mark.parametrize("options", LAYER_OPTIONS, ids=range(len(LAYER_OPTIONS)))
@pytest.mark.parametrize("kind", ["Conv3d", "ScaledWSConv3d"])
def test_layer_vjp_matches_brainstate(options, kind):
    """layer.vjp against jax.vjp through brainstate's layer with the same parameters, both in
    float32. Each gradient is a float32 sum of L <= 400 products here, off by up to L * u * sum|terms|
    on each side, and on these normal draws sum|terms| stays within 100 x the largest |gradient|:
    400 * 2**-24 * 100 ~ 2.4e-3 of it."""
    brainstate = pytest.importorskip("brainstate")
    jax, jnp = _jax()
    from tests.test_against_brainstate import _parameters

    rng = np.random.default_rng(4)
    w, bias, mask, x = _parameters(options, rng)
    ours = getattr(nbconv, kind)(**options, w_init=w, b_init=bias, w_mask=mask)
    theirs = getattr(brainstate.nn, kind)(**options, w_init=jnp.asarray(w), b_init=bias, w_mask=mask)
    if kind == "ScaledWSConv3d":
        gain = rng.uniform(0.5, 2.0, (1, 1, 1, 1, w.shape[-1])).astype(np.float32)
        ours.weight.value["gain"] = gain
        theirs.weight.value = {**theirs.weight.value, "gain": gain}
    dy = rng.standard_normal((2, *ours.out_size)).astype(np.float32)
    jax.config.update("jax_enable_x64", False)
    theirs.weight.value = {k: jnp.asarray(v) for k, v in theirs.weight.value.items()}

    def loss(x):  # its gradient is the vjp with dy
        return jnp.sum(theirs(x) * dy)

    want_grads, want_dx = brainstate.transform.grad(loss, grad_states=theirs.weight, argnums=0)(jnp.asarray(x))
    dx, grads = ours.vjp(x, dy)
    assert set(grads) == set(ours.weight.value)
    for got, want in [(dx, want_dx), *((grads[k], want_grads[k]) for k in grads)]:
        want = np.asarray(want)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("index", range(12))
def test_family_layer_vjp_matches_brainstate(index):
    """layer.vjp of the 1-D, 2-D and transposed layers against brainstate's through jax, as above
    (sums of at most 150 products here)."""
    brainstate = pytest.importorskip("brainstate")
    jax, jnp = _jax()
    from tests.test_against_brainstate import FAMILY

    name, options = FAMILY[index]
    rng = np.random.default_rng(index)
    ours = getattr(nbconv, name)(**options, b_init=nbconv.init.Normal(seed=index))
    params = {k: np.asarray(v) for k, v in ours.weight.value.items()}
    theirs = getattr(brainstate.nn, name)(**options, w_init=jnp.asarray(params["weight"]), b_init=params["bias"])
    x = rng.standard_normal((2, *ours.in_size)).astype(np.float32)
    dy = rng.standard_normal((2, *ours.out_size)).astype(np.float32)
    jax.config.update("jax_enable_x64", False)
    theirs.weight.value = {k: jnp.asarray(v) for k, v in theirs.weight.value.items()}

    def loss(x):
        return jnp.sum(theirs(x) * dy)

    want_grads, want_dx = brainstate.transform.grad(loss, grad_states=theirs.weight, argnums=0)(jnp.asarray(x))
    dx, grads = ours.vjp(x, dy)
    assert set(grads) == set(params)
    for got, want in [(dx, want_dx), *((grads[k], want_grads[k]) for k in grads)]:
        want = np.asarray(want)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("batch, width, padding, rhs_dilation, groups, dtype", [
    (1, 4100, (1, 1), 1, 1, np.float32), (1, 4099, (300, -200), 2, 1, np.float64),
    (2, 4100, (-1500, 2000), 1, 4, np.float32), (3, 4097, (0, 0), 3, 8, np.float64)])
def test_a_long_signals_dw_runs_in_segments(batch, width, padding, rhs_dilation, groups, dtype, monkeypatch):
    """A 1-D call's dw runs as a batch of segments along W (`gradients._as_segments`), so that the
    threads share it: the reference's dw within its bound, across every cut, crop and pad, and where
    the last segment is filled up with outputs of zero cotangent."""
    from nbconv import gradients
    cuts = []
    real = gradients._as_segments
    monkeypatch.setattr(gradients, "_as_segments", lambda *args: cuts.append(real(*args)) or cuts[-1])
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, width, 8)).astype(dtype)
    w = rng.standard_normal((3, 8 // groups, 8)).astype(dtype)
    options = dict(padding=[padding], rhs_dilation=rhs_dilation, groups=groups)
    dy = rng.standard_normal(nbconv.conv1d(x, w, backend="cpu", **options).shape).astype(dtype)
    dw = nbconv.conv1d_vjp(x, w, dy, wrt="w", backend="cpu", **options)[1]
    assert cuts[-1] is not None and cuts[-1][2].batch > batch
    assert cuts[-1][1].size > dy.size or width != 4099  # 4195 outputs: no count of segments splits them evenly
    lifted = dict(padding=[(0, 0), (0, 0), padding], rhs_dilation=(1, 1, rhs_dilation), groups=groups,
                  channel_first=False)
    x3, w3, dy3 = x[:, None, None], w[None, None], dy[:, None, None]
    want = conv3d_vjp_reference(x3, w3, dy3, **lifted)[1][0, 0]
    bound = _bounds(x3, w3, dy3, lifted, np.finfo(dtype).eps / 2)[1][0, 0]
    assert np.all(np.abs(dw - want) <= bound)


@pytest.mark.parametrize("where", ["x at the end", "dy at a padded edge"])
def test_an_inf_that_segments_would_make_nan_keeps_one_plane(where):
    """A segment's padding is zeros in its copy of x, and the last segment is filled up with outputs of
    zero cotangent that read the signal's last inputs: an Inf in dy where taps fall on padding, or in
    x where those outputs read it, would make NaN (0 * Inf) where JAX forms no product. Such a call's
    dw runs whole, as JAX's."""
    from nbconv import gradients
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4097, 8))
    w = rng.standard_normal((3, 8, 8))
    dy = rng.standard_normal((1, 4097, 8))
    if where == "x at the end":
        x[0, -1, 2] = np.inf
    else:
        dy[0, 0, 3] = np.inf
    geometry = conv_geometry((1, 1, 1, 4097, 8), (1, 1, 3, 8, 8), stride=1, padding="SAME", lhs_dilation=1,
                             rhs_dilation=1, groups=1, channel_first=False)
    assert gradients._as_segments(x[:, None, None], dy[:, None, None], geometry) is None
    dw = nbconv.conv1d_vjp(x, w, dy, wrt="w", backend="cpu")[1]
    want = conv3d_vjp_reference(x[:, None, None], w[None, None], dy[:, None, None])[1][0, 0]
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(dw[finite], want[finite], rtol=1e-10, atol=1e-10 * np.abs(want[finite]).max())
