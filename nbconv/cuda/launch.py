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
    x5 = canonical_input(x, call, compute)
    w_dev = to_device(w, compute)
    n_out = geometry.out_channels
    bias_dev = _zeros(n_out, compute) if bias is None else to_device(_flat(bias), compute)
    if geometry.flops:
        y = cuda.device_array(geometry.out_shape, compute)
        launch_conv(x5, w_dev, bias_dev, device_tables(geometry), y, geometry)
    else:  # an empty result, or no input channels to sum (JAX: zeros): the bias alone
        bias_host = bias_dev.copy_to_host()
        y = cuda.to_device(np.ascontiguousarray(np.broadcast_to(bias_host, geometry.out_shape)))
    if not on_device:
        return to_caller_layout(y.copy_to_host(), call, out)
    return device_result(y, call, out)


def choose_kernel(geometry):
    """The GEMM tile pays off once a group has enough output and input channels to fill it;
    config.CUDA_KERNEL forces one (both apply to every call)."""
    if config.CUDA_KERNEL in ("tiled", "channels"):
        return config.CUDA_KERNEL
    cin_g = geometry.in_channels // geometry.groups
    cout_g = geometry.out_channels // geometry.groups
    return "tiled" if cout_g >= 16 and cin_g >= 4 else "channels"


def launch_conv(x, w, bias, tables, y, geometry):
    kernels = k.KERNELS[8 * y.dtype.itemsize]
    n, od, oh, ow, cout = y.shape
    if choose_kernel(geometry) == "tiled":
        pixels = n * od * oh * ow
        grid = (-(-pixels // k.TILE_P), channel_tiles(geometry))
        kernels.conv_tiled[grid, (k.THREADS_X, k.THREADS_Y)](x, w.reshape(w.size // cout, cout), bias, *tables,
                                                             y.reshape(pixels, cout))
    else:
        threads = n * od * oh * -(-ow // k.RW) * cout
        kernels.conv_channels[-(-threads // k.CHANNEL_BLOCK), k.CHANNEL_BLOCK](x, w, bias, *tables, y)


def channel_tiles(geometry):
    """Blocks along the output channels of the tiled kernels: TILE_C channels of one group each."""
    return geometry.groups * -(-(geometry.out_channels // geometry.groups) // k.TILE_C)


def device_tables(geometry):
    """The tap tables (nbconv.geometry) on the current GPU, copied there once per geometry and
    context: a call in a loop then copies nothing to the device but its operands."""
    return _cached(geometry, lambda: tuple(cuda.to_device(table) for table in geometry.tap_tables()))


def _zeros(n, dtype):
    """A zero bias on the device, made once (the kernels only read it)."""
    return _cached((n, dtype), lambda: cuda.to_device(np.zeros(n, dtype)))


# id of a Numba CUDA context -> (the context, {key: device arrays}). Holding the context keeps its id
# unique: after cuda.close() the next context is a new object, so no call meets freed memory.
_CACHES = {}
CACHE_SIZE = 64


def _cached(key, make):
    context = cuda.current_context()
    if not hasattr(context, "handle"):  # the simulator makes a new context object each time; it has one
        context = None
    _, cache = _CACHES.setdefault(id(context), (context, {}))
    if key not in cache:
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[key] = make()
    return cache[key]


def standardize_columns(columns, eps, gains):
    """Weight standardization of the (fan_in, Cout) host matrix `columns` on the device -> host."""
    out = cuda.device_array(columns.shape, columns.dtype)
    if columns.size:
        standardize = k.KERNELS[8 * columns.dtype.itemsize].standardize_columns
        # A power of 2 threads, ~8 elements each, from a warp up to WS_THREADS.
        threads = min(k.WS_THREADS, max(32, 1 << (columns.shape[0] // 8).bit_length()))
        standardize[columns.shape[1], threads](cuda.to_device(columns), eps, cuda.to_device(gains), out)
    return out.copy_to_host()


def to_host(a):
    """A NumPy copy of any device array (Numba, CuPy, PyTorch, the simulator's)."""
    return as_device(a).copy_to_host()


def _flat(a):
    return (to_host(a) if is_device_array(a) else np.asarray(a)).reshape(-1)


def to_device(a, dtype):
    if is_device_array(a) and np.dtype(a.dtype) == dtype and _c_contiguous(a):
        return as_device(a)
    host = to_host(a) if is_device_array(a) else a
    return cuda.to_device(np.ascontiguousarray(host, dtype=dtype))


def canonical_input(x, call, dtype):
    """x (or a cotangent of the result) in the caller's layout as a C-contiguous (N, D, H, W, C) device
    array of `dtype`."""
    if not is_device_array(x):
        x5 = np.asarray(x) if call.batched else np.asarray(x)[None]
        x5 = np.moveaxis(x5, 1, -1) if call.channel_first else x5
        return cuda.to_device(np.ascontiguousarray(x5, dtype=dtype))
    x5 = as_device(x)
    x5 = x5 if call.batched else x5.reshape(1, *x5.shape)
    if not call.channel_first and np.dtype(x5.dtype) == dtype and _c_contiguous(x5):
        return x5
    n, *rest = x5.shape
    shape = (n, *rest[1:], rest[0]) if call.channel_first else x5.shape
    dst = cuda.device_array(shape, dtype)
    relayout(x5, dst, TO_CHANNELS_LAST if call.channel_first else COPY)
    return dst


def device_result(y, call, out, dtype=None):
    """A channels-last (N, D, H, W, C) device array `y` in the caller's layout and `dtype` (default
    the result's), on the device: the inverse of `canonical_input`."""
    n, *spatial, c = y.shape
    shape = (n, c, *spatial) if call.channel_first else y.shape
    dtype = call.result_dtype if dtype is None else dtype
    if out is not None:
        dst = as_device(out).reshape(*shape)
    elif call.channel_first or dtype != y.dtype:
        dst = cuda.device_array(shape, dtype)
    else:
        dst = y
    if dst is not y:
        relayout(y, dst, TO_CHANNELS_FIRST if call.channel_first else COPY)
    return out if out is not None else dst if call.batched else dst.reshape(*shape[1:])


def relayout(src, dst, mode):
    if dst.size:
        k.relayout[-(-dst.size // RELAYOUT_BLOCK), RELAYOUT_BLOCK](src, dst, mode)


def as_device(a):
    """A Numba device-array view of any `__cuda_array_interface__` object (CuPy, PyTorch, ...)."""
    return a if hasattr(a, "copy_to_host") else cuda.as_cuda_array(a)


def _c_contiguous(a):
    """Whether a device array's strides are C order (read on the Numba view: CuPy and PyTorch
    arrays have no is_c_contiguous, and a Fortran-ordered one must be copied before a reshape)."""
    return as_device(a).is_c_contiguous()
