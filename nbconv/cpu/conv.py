"""Kernel choice for a CPU convolution."""
from nbconv.cpu import direct


def conv3d(x, w, bias, geometry, out):
    """Fill `out` (N, D', H', W', Cout) with conv(x, w) + bias; all arrays channels-last, C-contiguous,
    of one float dtype."""
    tables = [geometry.tap_index(axis) for axis in range(3)]
    kernel = choose_kernel(geometry)
    kernel(x, w, bias, *tables, out)


def choose_kernel(geometry):
    cin_g = geometry.in_channels // geometry.groups
    cout_g = geometry.out_channels // geometry.groups
    return direct.conv_depthwise if cin_g == 1 and cout_g == 1 else direct.conv_grouped
