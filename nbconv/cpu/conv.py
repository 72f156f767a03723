"""Kernel choice for a CPU convolution."""
from nbconv import config
from nbconv.cpu import blocked, direct


def _direct(kernel):
    return lambda x, w, bias, geometry, tables, out: kernel(x, w, bias, *tables, out)


def _is_depthwise(geometry):
    return geometry.in_channels == geometry.out_channels == geometry.groups


# name -> (run(x, w, bias, geometry, tables, out), can it run this geometry?)
KERNELS = {
    "blocked": (blocked.conv3d, lambda geometry: True),
    "depthwise": (_direct(direct.conv_depthwise), _is_depthwise),
    "grouped": (_direct(direct.conv_grouped), lambda geometry: True),
}


def choose_kernel(geometry):
    """The forced kernel (config.CPU_KERNEL) when it can run, else the best for the shape: the
    register-blocked micro-kernel once a group has enough output channels to fill a vector."""
    forced = config.CPU_KERNEL
    if forced in KERNELS and KERNELS[forced][1](geometry):
        return forced
    if _is_depthwise(geometry):
        return "depthwise"
    return "blocked" if geometry.out_channels // geometry.groups >= 8 else "grouped"


def conv3d(x, w, bias, geometry, out):
    """Fill `out` (N, D', H', W', Cout) with conv(x, w) + bias; all arrays channels-last, C-contiguous,
    of one float dtype."""
    tables = [geometry.tap_index(axis) for axis in range(3)]
    KERNELS[choose_kernel(geometry)][0](x, w, bias, geometry, tables, out)
