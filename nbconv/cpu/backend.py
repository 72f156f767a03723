"""The CPU backend's entries, those of every backend (`nbconv.dispatch`): a validated call's arrays
into the kernels' layout, the kernel, and the result back in the caller's layout."""
import numpy as np

from nbconv import buffers
from nbconv.call import ConvCall
from nbconv.cpu import conv, standardize
from nbconv.cpu.layout import to_caller_layout, to_kernel_layout


def convolve(call: ConvCall, x: np.ndarray, w: np.ndarray, bias, out) -> np.ndarray:
    """conv(x, w) + bias of the validated `call`, in the caller's layout and result dtype; into
    `out` when given."""
    geometry, compute = call.geometry, call.compute_dtype
    x5 = to_kernel_layout(x, call, compute)
    w = np.ascontiguousarray(w, dtype=compute)
    bias = (np.zeros(geometry.out_channels, compute) if bias is None
            else np.ascontiguousarray(bias.reshape(-1), dtype=compute))
    # Write straight into `out` when it already has the kernel's layout and dtype.
    direct = out is not None and not call.channel_first and out.dtype == compute
    y = out.reshape(geometry.out_shape) if direct else buffers.empty(geometry.out_shape, compute)
    final = direct or (out is None and not call.channel_first and compute == call.result_dtype)
    conv.compute(x5, w, bias, geometry, y, final)
    return out if direct else to_caller_layout(y, call, out)


def standardize_columns(columns: np.ndarray, eps: float, gains: np.ndarray) -> np.ndarray:
    """brainstate's weight standardization of each column of the (fan_in, Cout) matrix `columns`."""
    standardized = np.empty_like(columns)
    standardize.standardize_columns(columns, eps, gains, standardized)
    return standardized
