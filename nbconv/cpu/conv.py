"""Kernel choice for a CPU convolution."""
from nbconv import config
from nbconv.cpu import blocked, direct


def _direct(kernel):
    return lambda x, w, bias, geometry, tables, out: kernel(x, w, bias, *tables, out)


def _is_depthwise(geometry, dtype):
    return geometry.in_channels == geometry.out_channels == geometry.groups


def _always(geometry, dtype):
    return True


# name -> (run(x, w, bias, geometry, tables, out), can it run this geometry and dtype?)
KERNELS = {
    "blocked": (blocked.conv3d, _always),
    "depthwise": (_direct(direct.conv_depthwise), _is_depthwise),
    "grouped": (_direct(direct.conv_grouped), _always),
}


def choose_kernel(geometry, dtype):
    """The forced kernel (config.CPU_KERNEL) when it can run, else the best for the shape: the
    register-blocked micro-kernels where channels fill vectors, the plain loop nests elsewhere."""
    forced = KERNELS.get(config.CPU_KERNEL)
    if forced and forced[1](geometry, dtype):
        return config.CPU_KERNEL
    if blocked.spread_for(geometry, dtype) > 1 or geometry.out_channels // geometry.groups >= 8:
        return "blocked"
    return "depthwise" if _is_depthwise(geometry, dtype) else "grouped"


def conv3d(x, w, bias, geometry, out):
    """Fill `out` (N, D', H', W', Cout) with conv(x, w) + bias; all arrays channels-last, C-contiguous,
    of one float dtype."""
    tables = geometry.tap_tables()
    KERNELS[choose_kernel(geometry, x.dtype)][0](x, w, bias, geometry, tables, out)
