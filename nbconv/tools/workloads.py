"""The benchmark workloads (workloads.json and the other sets): arrays and options for each.

A workload has 1, 2 or 3 spatial axes (len(in) - 1); its geometry is that of the 3-D call nbconv makes
of it (`nbconv.lifting`), and `axes` gives the caller's axes of it back, for the peers.
"""
import json
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np

import nbconv
from nbconv.call import geometry_of

SEED_CASES = ("video_c3", "medical_s2", "grouped_g8")


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    shape: tuple  # (D, H, W, Cin), (H, W, Cin) or (W, Cin)
    out_channels: int
    kernel: int
    stride: int
    padding: object
    rhs_dilation: int
    lhs_dilation: int
    groups: int
    dtype: str

    @property
    def options(self):
        return dict(stride=self.stride, padding=self.padding, lhs_dilation=self.lhs_dilation,
                    rhs_dilation=self.rhs_dilation, groups=self.groups)

    @property
    def spatial(self):
        """The number of spatial axes."""
        return len(self.shape) - 1

    @property
    def x_shape(self):
        """Channels-last (N, *spatial, Cin)."""
        return (self.batch, *self.shape)

    @property
    def w_shape(self):
        """(K, ..., K, Cin // groups, Cout)."""
        return (self.kernel,) * self.spatial + (self.shape[-1] // self.groups, self.out_channels)

    @property
    def geometry(self):
        """The geometry of the 3-D call nbconv makes (unit axes in front of fewer spatial axes)."""
        return geometry_of(self.x_shape, self.w_shape, (*self.options.values(), False), self.spatial)

    @property
    def axes(self):
        """(kernel, stride, pads, lhs_dilation, rhs_dilation, out_spatial) of the workload's own spatial axes."""
        g = self.geometry
        return Axes(*(values[3 - self.spatial:] for values in (g.kernel, g.stride, g.pads, g.lhs_dilation,
                                                               g.rhs_dilation, g.out_spatial)))

    @property
    def out_shape(self):
        """Channels-last (N, *out_spatial, Cout)."""
        return (self.batch, *self.axes.out_spatial, self.out_channels)

    def conv(self, x, w, **options):
        """nbconv's convolution of this workload's number of axes."""
        return CONV[self.spatial](x, w, **self.options, **options)

    def vjp(self, x, w, dy, **options):
        """nbconv's vector-Jacobian product of `conv`."""
        return VJP[self.spatial](x, w, dy, **self.options, **options)

    @property
    def flops(self):
        return self.geometry.flops

    def arrays(self, seed=0):
        """Random x and w of `x_shape` and `w_shape`."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.x_shape).astype(self.dtype)
        return x, rng.standard_normal(self.w_shape).astype(self.dtype)


class Axes(NamedTuple):
    kernel: tuple
    stride: tuple
    pads: tuple
    lhs_dilation: tuple
    rhs_dilation: tuple
    out_spatial: tuple


CONV = {1: nbconv.conv1d, 2: nbconv.conv2d, 3: nbconv.conv3d}
VJP = {1: nbconv.conv1d_vjp, 2: nbconv.conv2d_vjp, 3: nbconv.conv3d_vjp}

# Workload sets: the public one, shapes of the same kinds that nothing is tuned for, the public kinds
# at tiny sizes (for the CUDA simulator), grouped layers from 16 channels a group to depthwise, and
# the 1-D, 2-D and transposed layers (public and held out).
SETS = {"public": "workloads.json", "heldout": "heldout.json", "smoke": "smoke.json", "groups": "groups.json",
        "family": "family.json", "family_heldout": "family_heldout.json"}


def load_workloads(which="public"):
    """All workloads of a set (SETS), by name, in file order."""
    text = resources.files("nbconv.tools").joinpath(SETS[which]).read_text()
    rows = json.loads(text)["workloads"]
    return {row["name"]: Workload(row["name"], row["batch"], tuple(row["in"]), row["out_channels"],
                                  row["kernel"], row["stride"], row["padding"], row["rhs_dilation"],
                                  row["lhs_dilation"], row["groups"], row["dtype"])
            for row in rows}
