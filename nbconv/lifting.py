"""Calls with 1 or 2 spatial axes as calls with 3: one code path for conv1d, conv2d and conv3d.

A call with n < 3 spatial axes runs conv3d's path on views of its arrays (x, w, dy, out) with 3 - n
axes of size 1 in front of the spatial ones, and options to match (strides and dilations 1, pads
(0, 0) there). The caller's last spatial axis stays W, along which the micro-kernel's pixels run,
and the one before it H, whose rows the tasks split (docs/design.md). A unit axis is a view of a
NumPy, device or Dask array, so no copy is made for it.

The caller's arguments are checked here, against their own number of axes, so that an error names
the shapes and options the caller wrote, not the 3-D ones they become.
"""
from typing import NamedTuple

import numpy as np

from nbconv.geometry import SPATIAL, normalize_padding, spatial_tuple

_AXES = ("D", "H", "W")


class Lift(NamedTuple):
    """The lift of a call with `count` spatial axes to 3 (the identity for 3)."""

    count: int
    channel_first: bool

    @property
    def units(self):
        """How many unit axes the lift inserts."""
        return SPATIAL - self.count

    def layout(self):
        """The caller's batched layout, in words: (N, H, W, Cin)..."""
        axes = ", ".join(_AXES[self.units:])
        return f"(N, Cin, {axes})" if self.channel_first else f"(N, {axes}, Cin)"

    def batched(self, x, w):
        """Whether x has a batch axis; a ValueError naming the expected forms unless x and w have the
        ranks of `count` spatial axes (a TypeError for a channel_first that is not a bool)."""
        if not isinstance(self.channel_first, (bool, np.bool_)):
            raise TypeError(f"channel_first must be a bool, got {self.channel_first!r}")
        if len(x.shape) not in (self.count + 1, self.count + 2):
            raise ValueError(f"x must be {self.count + 2}-D {self.layout()} (or {self.count + 1}-D unbatched), "
                             f"got shape {tuple(x.shape)}")
        if len(w.shape) != self.count + 2:
            kernel = ", ".join(f"K{axis}" for axis in _AXES[self.units:])
            raise ValueError(f"w must be {self.count + 2}-D ({kernel}, Cin // groups, Cout), got shape "
                             f"{tuple(w.shape)}")
        if any(k < 1 for k in tuple(w.shape)[:self.count]):
            raise ValueError(f"w must have spatial sizes >= 1, got shape {tuple(w.shape)}")
        return len(x.shape) == self.count + 2

    def options(self, stride, padding, lhs_dilation, rhs_dilation):
        """The caller's (stride, padding, lhs_dilation, rhs_dilation) -> conv3d's, checked here for
        fewer than 3 axes (conv3d checks its own)."""
        if not self.units:
            return stride, padding, lhs_dilation, rhs_dilation
        unit = (1,) * self.units
        pads = normalize_padding(padding, self.count)
        return (unit + spatial_tuple(stride, "stride", self.count),
                pads if isinstance(pads, str) else ((0, 0),) * self.units + pads,
                unit + spatial_tuple(lhs_dilation, "lhs_dilation", self.count),
                unit + spatial_tuple(rhs_dilation, "rhs_dilation", self.count))

    def image(self, a, batched):
        """x, dy or out (or their shape) in the caller's layout -> the 3-D view."""
        return self._insert(a, int(batched) + int(self.channel_first))

    def lower_image(self, a, batched):
        """The inverse of `image`: a 3-D result (or its shape) -> the caller's axes."""
        return self._drop(a, int(batched) + int(self.channel_first))

    def kernel(self, w):
        """w (KH, KW, Cin // groups, Cout)... -> the 3-D kernel."""
        return self._insert(w, 0)

    def lower_kernel(self, w):
        """The inverse of `kernel`."""
        return self._drop(w, 0)

    def _insert(self, a, at):
        """`a` (an array or a shape) with the unit axes inserted before axis `at`."""
        if a is None or not self.units:
            return a
        if isinstance(a, tuple):
            return (*a[:at], *(1,) * self.units, *a[at:])
        return _view(a, self._insert(tuple(a.shape), at), _insert_strides(a, at, self.units))

    def _drop(self, a, at):
        """`a` (an array or a shape) without the unit axes at `at`."""
        if a is None or not self.units:
            return a
        if isinstance(a, tuple):
            return (*a[:at], *a[at + self.units:])
        strides = getattr(a, "strides", None)
        strides = None if strides is None else (*strides[:at], *strides[at + self.units:])
        return _view(a, self._drop(tuple(a.shape), at), strides)


def _insert_strides(a, at, units):
    strides = getattr(a, "strides", None)
    if strides is None:  # a Dask array: its reshape inserts unit axes lazily
        return None
    unit = strides[at] * a.shape[at] if at < len(strides) else a.dtype.itemsize  # any stride suits a unit axis
    return (*strides[:at], *(unit,) * units, *strides[at:])


def _view(a, shape, strides):
    """`a` as `shape`, with unit axes inserted or removed: a reshape for NumPy and Dask arrays; for a
    Numba device array a view with `strides` (its reshape of an F-ordered array would give C strides
    over F-ordered memory)."""
    if hasattr(a, "gpu_data"):
        return type(a)(shape, strides, a.dtype, stream=a.stream, gpu_data=a.gpu_data)
    return a.reshape(shape)
