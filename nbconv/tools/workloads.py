"""The public benchmark workloads (workloads.json): arrays and conv3d options for each."""
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from nbconv.geometry import conv_geometry

SEED_CASES = ("video_c3", "medical_s2", "grouped_g8")


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    shape: tuple  # (D, H, W, Cin)
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
    def x_shape(self):
        """Channels-last (N, D, H, W, Cin)."""
        return (self.batch, *self.shape)

    @property
    def w_shape(self):
        """(K, K, K, Cin // groups, Cout)."""
        return (self.kernel,) * 3 + (self.shape[-1] // self.groups, self.out_channels)

    @property
    def geometry(self):
        return conv_geometry(self.x_shape, self.w_shape, channel_first=False, **self.options)

    @property
    def flops(self):
        return self.geometry.flops

    def arrays(self, seed=0):
        """Random x and w of `x_shape` and `w_shape`."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.x_shape).astype(self.dtype)
        return x, rng.standard_normal(self.w_shape).astype(self.dtype)


# Workload sets: the public one, shapes of the same kinds that nothing is tuned for, the public kinds
# at tiny sizes (for the CUDA simulator), and grouped layers from 16 channels a group to depthwise.
SETS = {"public": "workloads.json", "heldout": "heldout.json", "smoke": "smoke.json", "groups": "groups.json"}


def load_workloads(which="public"):
    """All workloads of a set (SETS), by name, in file order."""
    text = resources.files("nbconv.tools").joinpath(SETS[which]).read_text()
    rows = json.loads(text)["workloads"]
    return {row["name"]: Workload(row["name"], row["batch"], tuple(row["in"]), row["out_channels"],
                                  row["kernel"], row["stride"], row["padding"], row["rhs_dilation"],
                                  row["lhs_dilation"], row["groups"], row["dtype"])
            for row in rows}
