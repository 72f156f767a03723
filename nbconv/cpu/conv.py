"""Kernel choice for a CPU convolution."""
from functools import lru_cache

from nbconv import config
from nbconv.cpu import blocked, direct, threads
from nbconv.cpu.tasks import in_slices


def _loop_nest(x, w, bias, geometry, tables, out, final):  # (`final` unused: its stores are always plain)
    # Its rows are split into equal prange shares up front, so a worker still asleep would hold the
    # call back (`threads`); the blocked kernel's threads claim their tasks as they go and need no wake.
    threads.wake()
    rows = out.shape[0] * out.shape[1] * out.shape[2]
    in_slices(lambda first, end: direct.conv_grouped(x, w, bias, *tables, out, first, end), rows,
              geometry.valid_flops)


# name -> run(x, w, bias, geometry, tables, out); each computes every convolution.
KERNELS = {"blocked": blocked.run, "grouped": _loop_nest}


def compute(x, w, bias, geometry, out, final):
    """Fill `out` (N, D', H', W', Cout) with conv(x, w) + bias; all arrays channels-last, C-contiguous,
    of one float dtype. `final`: whether `out` is what the caller gets, not an array that nbconv reads
    back at once (into the caller's layout or dtype), which decides how the kernel stores it."""
    if geometry.flops == 0:  # an empty result, or no input channels to sum (JAX: zeros): the bias alone
        out[...] = bias
        return
    kernel, tables = _plan(geometry, x.dtype, config.CPU_KERNEL)
    kernel(x, w, bias, geometry, tables, out, final)


@lru_cache(maxsize=64)
def _plan(geometry, dtype, forced):
    """The kernel and the tap tables for a geometry, one lookup per call. The kernel: `forced`
    (config.CPU_KERNEL) when set, else the register-blocked micro-kernel once a vector holds 4 or
    more output channels (of one or several groups), the plain loop nest for the few-channel rest."""
    channels_per_vector = blocked.spread_for(geometry, dtype) * geometry.out_channels // geometry.groups
    name = forced if forced in KERNELS else "blocked" if channels_per_vector >= 4 else "grouped"
    return KERNELS[name], geometry.tap_tables()
