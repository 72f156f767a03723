"""Host side of the CUDA backend: move or re-lay the operands, choose the kernel and its grid, return
NumPy for NumPy input and a device array for device input."""
import numpy as np
from numba import cuda

from nbconv import config
from nbconv.call import ConvCall, is_device_array, to_caller_layout
from nbconv.cuda import kernels as k

RELAYOUT_BLOCK = 256
COPY, TO_CHANNELS_LAST, TO_CHANNELS_FIRST = 0, 1, 2


def convolve(call: ConvCall, x, w, bias, out):
    """conv(x, w) + bias of the validated `call` on the GPU: NumPy for NumPy `x`, a device array
    (or `out`) for a device `x`."""
    geometry, compute = call.geometry, call.compute_dtype
    on_device = is_device_array(x)
    x5 = _canonical_input(x, call)
    w_dev = _to_device(w, compute)
    n_out = geometry.out_channels
    bias_host = np.zeros(n_out, compute) if bias is None else _flat(bias)
    bias_dev = _to_device(bias_host, compute)
    tables = [cuda.to_device(table) for table in geometry.tap_tables()]
    if geometry.flops:
        y = cuda.device_array(geometry.out_shape, compute)
        launch_conv(x5, w_dev, bias_dev, tables, y, geometry)
    else:  # an empty result, or no input channels to sum (JAX: zeros): the bias alone
        y = cuda.to_device(np.ascontiguousarray(np.broadcast_to(bias_host.astype(compute), geometry.out_shape)))
    if not on_device:
        return to_caller_layout(y.copy_to_host(), call, out)
    return _device_result(y, call, out)


def choose_kernel(geometry):
    """The GEMM tile pays off once a group has enough output and input channels to fill it;
    config.CUDA_KERNEL forces one (both apply to every call)."""
    if config.CUDA_KERNEL in ("tiled", "channels"):
        return config.CUDA_KERNEL
    cin_g = geometry.in_channels // geometry.groups
    cout_g = geometry.out_channels // geometry.groups
    return "tiled" if cout_g >= 16 and cin_g >= 4 else "channels"


def launch_conv(x, w, bias, tables, y, geometry):
    conv_tiled, conv_channels, _ = k.KERNELS[8 * y.dtype.itemsize]
    n, od, oh, ow, cout = y.shape
    if choose_kernel(geometry) == "tiled":
        pixels = n * od * oh * ow
        cout_g = cout // geometry.groups
        grid = (-(-pixels // k.TILE_P), geometry.groups * -(-cout_g // k.TILE_C))
        conv_tiled[grid, (k.THREADS_X, k.THREADS_Y)](x, w, bias, *tables, y.reshape(pixels, cout))
    else:
        threads = n * od * oh * -(-ow // k.RW) * cout
        conv_channels[-(-threads // k.CHANNEL_BLOCK), k.CHANNEL_BLOCK](x, w, bias, *tables, y)


def standardize_columns(columns, eps, gains):
    """Weight standardization of the (fan_in, Cout) host matrix `columns` on the device -> host."""
    out = cuda.device_array(columns.shape, columns.dtype)
    if columns.size:
        standardize = k.KERNELS[8 * columns.dtype.itemsize][2]
        # A power of 2 threads, ~8 elements each, from a warp up to WS_THREADS.
        threads = min(k.WS_THREADS, max(32, 1 << (columns.shape[0] // 8).bit_length()))
        standardize[columns.shape[1], threads](cuda.to_device(columns), eps, cuda.to_device(gains), out)
    return out.copy_to_host()


def to_host(a):
    """A NumPy copy of any device array (Numba, CuPy, PyTorch, the simulator's)."""
    return _as_device(a).copy_to_host()


def _flat(a):
    return (to_host(a) if is_device_array(a) else np.asarray(a)).reshape(-1)


def _to_device(a, dtype):
    if is_device_array(a) and np.dtype(a.dtype) == dtype and _c_contiguous(a):
        return _as_device(a)
    host = to_host(a) if is_device_array(a) else a
    return cuda.to_device(np.ascontiguousarray(host, dtype=dtype))


def _canonical_input(x, call):
    """x as a C-contiguous (N, D, H, W, Cin) device array of the compute dtype."""
    if not is_device_array(x):
        x5 = np.asarray(x) if call.batched else np.asarray(x)[None]
        x5 = np.moveaxis(x5, 1, -1) if call.channel_first else x5
        return cuda.to_device(np.ascontiguousarray(x5, dtype=call.compute_dtype))
    x5 = _as_device(x)
    x5 = x5 if call.batched else x5.reshape(1, *x5.shape)
    if not call.channel_first and np.dtype(x5.dtype) == call.compute_dtype and _c_contiguous(x5):
        return x5
    n, *rest = x5.shape
    shape = (n, *rest[1:], rest[0]) if call.channel_first else x5.shape
    dst = cuda.device_array(shape, call.compute_dtype)
    _relayout(x5, dst, TO_CHANNELS_LAST if call.channel_first else COPY)
    return dst


def _device_result(y, call, out):
    """The kernel's channels-last result in the caller's layout and dtype, on the device."""
    shape = call.result_shape if call.batched else (1, *call.result_shape)
    if out is not None:
        dst = _as_device(out).reshape(*shape)
    elif call.channel_first or call.result_dtype != y.dtype:
        dst = cuda.device_array(shape, call.result_dtype)
    else:
        dst = y
    if dst is not y:
        _relayout(y, dst, TO_CHANNELS_FIRST if call.channel_first else COPY)
    return (out if out is not None else dst if call.batched else dst.reshape(*call.result_shape))


def _relayout(src, dst, mode):
    if dst.size:
        k.relayout[-(-dst.size // RELAYOUT_BLOCK), RELAYOUT_BLOCK](src, dst, mode)


def _as_device(a):
    """A Numba device-array view of any `__cuda_array_interface__` object (CuPy, PyTorch, ...)."""
    return a if hasattr(a, "copy_to_host") else cuda.as_cuda_array(a)


def _c_contiguous(a):
    return bool(getattr(a, "is_c_contiguous", lambda: True)())
