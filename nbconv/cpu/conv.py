"""Kernel choice for a CPU convolution."""
from nbconv import config
from nbconv.cpu import blocked, direct, threads


def _loop_nest(x, w, bias, geometry, tables, out):
    # Its rows are split into equal prange shares up front, so a worker still asleep would hold the
    # call back (`threads`); the blocked kernel's threads claim their tasks as they go and need no wake.
    threads.wake()
    direct.conv_grouped(x, w, bias, *tables, out)


# name -> run(x, w, bias, geometry, tables, out); each computes every convolution.
KERNELS = {"blocked": blocked.conv3d, "grouped": _loop_nest}


def choose_kernel(geometry, dtype):
    """config.CPU_KERNEL when set, else the register-blocked micro-kernel once a vector holds 4 or
    more output channels (of one or several groups), the plain loop nest for the few-channel rest."""
    if config.CPU_KERNEL in KERNELS:
        return config.CPU_KERNEL
    channels_per_vector = blocked.spread_for(geometry, dtype) * geometry.out_channels // geometry.groups
    return "blocked" if channels_per_vector >= 4 else "grouped"


def conv3d(x, w, bias, geometry, out):
    """Fill `out` (N, D', H', W', Cout) with conv(x, w) + bias; all arrays channels-last, C-contiguous,
    of one float dtype."""
    KERNELS[choose_kernel(geometry, x.dtype)](x, w, bias, geometry, geometry.tap_tables(), out)
