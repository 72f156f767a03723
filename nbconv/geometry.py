"""Argument normalisation, validation and output-shape rules, shared by every backend and the layers.

Pure Python and NumPy: nothing here compiles. The rules are those of ``jax.lax.conv_general_dilated``
(docs/semantics.md); ``"SAME"`` with input dilation, which JAX rejects, follows the same formula.
"""
import numbers
from dataclasses import dataclass
from functools import cached_property, lru_cache
from math import prod

import numpy as np

SPATIAL = 3


def spatial_tuple(value, name, count=SPATIAL):
    """An int or a sequence of 1 or `count` positive ints -> a tuple of `count` ints (one per spatial axis)."""
    items = _int_sequence(value, name)
    if len(items) not in (1, count):
        raise ValueError(f"{name} must be an int or a sequence of {_one_or(count)} ints, got {value!r}")
    if any(v < 1 for v in items):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return items * count if len(items) == 1 else items


def _one_or(count):
    """How many values an option of `count` spatial axes takes, in words."""
    return "1" if count == 1 else f"1 or {count}"


def _entries(count):
    """What a padding sequence of `count` spatial axes holds, in words."""
    return "1 entry (or one (lo, hi) pair of ints)" if count == 1 else f"1 or {count} entries"


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sequence(value):
    """The items of a tuple, list or 1-D array; None for anything else (a string, bytes, a set or a
    dict is not a sequence of sizes, even though it iterates)."""
    if isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return tuple(value)
    return None


def _int_sequence(value, name):
    if _is_int(value):
        return (int(value),)
    items = _sequence(value)
    if items is None or not all(_is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a sequence (tuple or list) of ints, got {value!r}")
    return tuple(int(v) for v in items)


def normalize_padding(padding, count=SPATIAL):
    """'SAME' / 'VALID' (any case), int, `count` ints, one (lo, hi) pair or `count` pairs -> 'SAME',
    'VALID' or a tuple of `count` (lo, hi) pairs. Explicit pads may be negative (they crop). With one
    spatial axis, two ints are its (lo, hi) pair, as brainstate's Conv1d reads them."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID', an int or (lo, hi) pairs, got {padding!r}")
        return mode
    if _is_int(padding):
        return ((int(padding),) * 2,) * count
    items = _sequence(padding)
    if items is None:
        raise TypeError(f"padding must be 'SAME', 'VALID', an int or a sequence (tuple or list), got {padding!r}")
    if count == 1 and len(items) == 2 and all(_is_int(p) for p in items):
        return (_pad_pair(items, padding),)
    if len(items) in (1, count) and all(_is_int(p) for p in items):
        pads = tuple((int(p), int(p)) for p in items)
    elif len(items) in (1, count):
        pads = tuple(_pad_pair(p, padding) for p in items)
    else:
        raise ValueError(f"padding must have {_entries(count)}, got {padding!r}")
    return pads * count if len(pads) == 1 else pads


def _pad_pair(pair, padding):
    items = _sequence(pair)
    if items is None or len(items) != 2:
        raise ValueError(f"padding entries must be ints or (lo, hi) pairs, got {padding!r}")
    lo, hi = items
    if not (_is_int(lo) and _is_int(hi)):
        raise TypeError(f"padding pairs must hold ints, got {padding!r}")
    return int(lo), int(hi)


def dilated(size, dilation):
    """Extent of an axis of `size` elements with `dilation - 1` zeros between neighbours."""
    return max((size - 1) * dilation + 1, 0)


def resolve_padding(padding, in_spatial, kernel, stride, lhs_dilation, rhs_dilation):
    """Normalised padding -> explicit (lo, hi) pairs for these sizes."""
    if padding == "VALID":
        return ((0, 0),) * SPATIAL
    if padding != "SAME":
        return padding
    pads = []
    for n, k, s, lhs, rhs in zip(in_spatial, kernel, stride, lhs_dilation, rhs_dilation):
        n_eff = dilated(n, lhs)
        out = -(-n_eff // s)
        total = max((out - 1) * s + dilated(k, rhs) - n_eff, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def output_spatial(in_spatial, kernel, stride, pads, lhs_dilation, rhs_dilation):
    """Output extent per spatial axis; 0 when the window never fits (an empty result, not an error)."""
    sizes = []
    for n, k, s, (lo, hi), lhs, rhs in zip(in_spatial, kernel, stride, pads, lhs_dilation, rhs_dilation):
        span = dilated(n, lhs) + lo + hi - dilated(k, rhs)
        sizes.append(span // s + 1 if span >= 0 else 0)
    return tuple(sizes)


@dataclass(frozen=True)
class ConvGeometry:
    """Every size a kernel needs, in channels-last order, for one call."""

    batch: int
    in_spatial: tuple
    in_channels: int
    kernel: tuple
    out_channels: int
    groups: int
    stride: tuple
    pads: tuple
    lhs_dilation: tuple
    rhs_dilation: tuple

    @cached_property
    def out_spatial(self):
        return output_spatial(self.in_spatial, self.kernel, self.stride, self.pads,
                              self.lhs_dilation, self.rhs_dilation)

    @property
    def out_shape(self):
        """Channels-last, batched output shape."""
        return (self.batch, *self.out_spatial, self.out_channels)

    @cached_property
    def flops(self):
        """2 * N * prod(out_spatial) * Cout * prod(kernel) * Cin / groups."""
        return (2 * self.batch * prod(self.out_spatial) * self.out_channels * prod(self.kernel)
                * self.in_channels // self.groups)

    @cached_property
    def valid_flops(self):
        """The flops the kernels do: `flops` without the taps that land on padding or on a zero of
        input dilation, which they skip (lhs_dilated_2 does an eighth of its `flops`)."""
        taps = prod(int((table >= 0).sum()) for table in self.tap_tables())
        return 2 * self.batch * taps * self.out_channels * self.in_channels // self.groups

    def dilated_axes(self):
        """Per spatial axis (N, K, O, lo): the dilated input, kernel and output extents (input
        dilation, rhs dilation, stride) and the low pad, what the gradients' transpose rules take
        (nbconv.gradients)."""
        return [(dilated(n, lhs), dilated(k, rhs), dilated(o, s), lo) for n, k, o, s, (lo, _), lhs, rhs
                in zip(self.in_spatial, self.kernel, self.out_spatial, self.stride, self.pads, self.lhs_dilation,
                       self.rhs_dilation)]

    def input_gradient_options(self):
        """The conv3d options under which dy convolved with the flipped kernel is dx: the forward's
        input dilation as stride, its stride as input dilation (docs/gradients.md)."""
        pads = [(k - lo - 1, n + k - 1 - o - (k - lo - 1)) for n, k, o, lo in self.dilated_axes()]
        return dict(stride=self.lhs_dilation, padding=pads, lhs_dilation=self.stride, rhs_dilation=self.rhs_dilation,
                    groups=self.groups)

    def input_window(self, axis, o0, o1):
        """The input range [i0, i1) that outputs o0... o1 - 1 of `axis` read, and the (lo, hi) padding
        of a convolution of that range alone that gives them; None when they read no real input (the
        Dask graph's windows, `nbconv.chunked`; a 1-D dw's segments, `nbconv.gradients`)."""
        n, k = self.in_spatial[axis], self.kernel[axis]
        stride, (lo, _), lhs, rhs = self.stride[axis], self.pads[axis], self.lhs_dilation[axis], self.rhs_dilation[axis]
        if o1 <= o0:
            return None
        # taps of outputs o0 .. o1 - 1 reach dilated-and-padded positions first .. last; real input i
        # sits at i * lhs
        first, last = o0 * stride - lo, (o1 - 1) * stride + (k - 1) * rhs - lo
        i0, i1 = max(0, -(-first // lhs)), min(n, last // lhs + 1)
        if i1 <= i0:
            return None
        lo_window = lo - o0 * stride + i0 * lhs
        hi_window = (o1 - o0 - 1) * stride + dilated(k, rhs) - dilated(i1 - i0, lhs) - lo_window
        return i0, i1, (lo_window, hi_window)

    def tap_tables(self):
        """`tap_index` of the three spatial axes (cached: calls repeat with the same shapes)."""
        return _tap_tables(self)

    def tap_index(self, axis):
        """Table ``t[o, k]``: the input index that output ``o`` reads through kernel tap ``k`` on this
        spatial axis, or -1 where it lands on padding or on a zero inserted by input dilation."""
        n, k = self.in_spatial[axis], self.kernel[axis]
        out = self.out_spatial[axis]
        lhs, lo = self.lhs_dilation[axis], self.pads[axis][0]
        pos = (np.arange(out)[:, None] * self.stride[axis]
               + np.arange(k)[None, :] * self.rhs_dilation[axis] - lo)
        real = (pos >= 0) & (pos % lhs == 0) & (pos // lhs < n)
        return np.where(real, pos // lhs, -1).astype(np.int64)


@lru_cache(maxsize=64)
def _tap_tables(geometry):
    tables = tuple(geometry.tap_index(axis) for axis in range(SPATIAL))
    for table in tables:
        table.flags.writeable = False  # shared by every call with this geometry
    return tables


# The kernels index with 64-bit integers (tap tables, offsets into x and the output): every extent
# they form must fit, with room for the sum of two.
INDEX_LIMIT = 2**62


def _check_extents(in_spatial, kernel, stride, pads, lhs, rhs):
    """ValueError for options whose extents would overflow the kernels' index arithmetic (which
    would wrap around silently): the dilated kernel, strides, pads, the dilated and padded input."""
    if any(dilated(k, r) > INDEX_LIMIT for k, r in zip(kernel, rhs)):
        raise ValueError(f"rhs_dilation={rhs} makes the kernel span more than 2**62 elements on an axis: too "
                         "large for 64-bit index arithmetic")
    for name, values in (("stride", stride), ("padding", [abs(p) for pair in pads for p in pair])):
        if max(values) > INDEX_LIMIT:
            raise ValueError(f"{name} must be at most 2**62 in magnitude, got {values}")
    if any(dilated(n, d) + abs(lo) + abs(hi) > INDEX_LIMIT for n, d, (lo, hi) in zip(in_spatial, lhs, pads)):
        raise ValueError(f"lhs_dilation={lhs} and padding {pads} make the input span more than 2**62 elements "
                         "on an axis: too large for 64-bit index arithmetic")


def conv_geometry(x_shape, w_shape, *, stride, padding, lhs_dilation, rhs_dilation, groups,
                  channel_first):
    """Validate shapes and options of one conv3d call; `x_shape` is batched (5-D)."""
    if len(w_shape) != SPATIAL + 2:
        raise ValueError(f"w must be 5-D (KD, KH, KW, Cin // groups, Cout), got shape {tuple(w_shape)}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if channel_first:
        batch, cin, *in_spatial = x_shape
    else:
        batch, *in_spatial, cin = x_shape
    *kernel, w_cin, cout = w_shape
    if any(k < 1 for k in kernel):
        raise ValueError(f"w must have spatial sizes >= 1, got shape {tuple(w_shape)}")
    if cin % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({cin}) and the output "
                         f"channels ({cout})")
    if w_cin * groups != cin:
        raise ValueError(f"w.shape[-2] * groups must equal x's input channels: {w_cin} * {groups} != {cin} "
                         f"(channel_first={channel_first})")
    stride = spatial_tuple(stride, "stride")
    lhs = spatial_tuple(lhs_dilation, "lhs_dilation")
    rhs = spatial_tuple(rhs_dilation, "rhs_dilation")
    pads = resolve_padding(normalize_padding(padding), in_spatial, kernel, stride, lhs, rhs)
    _check_extents(in_spatial, kernel, stride, pads, lhs, rhs)
    return ConvGeometry(batch, tuple(in_spatial), cin, tuple(kernel), cout, groups, stride, pads, lhs, rhs)
