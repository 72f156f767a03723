"""One XLA FFI target, ``nbconv_host``, through which XLA programs call nbconv on the host.

XLA calls the handler with its operands and its result buffers; the handler wraps them as NumPy
arrays, without a copy, and runs the host function that the call's ``index`` attribute names, which
fills the result buffers. ``jax.pure_callback`` would instead copy every operand into
a JAX array, and every result out of a NumPy array that the callback allocated: some 50 us a call,
and a page-faulting copy of every result (docs/jax.md).

The handler is a ``ctypes`` function, so it takes the GIL whichever XLA thread calls it. The
structures below are those of XLA's FFI C API (``xla/ffi/api/c_api.h`` under
``jax.ffi.include_dir()``), a stable binary interface whose structs grow only at their end. Any
exception in a host function becomes an XLA error, which JAX raises in the caller with its message:
Ctrl-C stops the kernel between two of its slices (docs/threads.md) and reaches the caller as JAX's
runtime error naming ``KeyboardInterrupt``.

Reloading this module (``importlib.reload``) is not supported: XLA keeps the first handler.
"""
import atexit
import ctypes
import threading
import traceback
from math import prod

import jax
import numpy as np

TARGET = "nbconv_host"
_c = ctypes


class _Extension(_c.Structure):
    pass


_Extension._fields_ = [("struct_size", _c.c_size_t), ("type", _c.c_int), ("next", _c.POINTER(_Extension))]


class _Version(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("major", _c.c_int),
                ("minor", _c.c_int)]


class _Metadata(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("api_version", _Version), ("traits", _c.c_uint32)]


class _MetadataExtension(_c.Structure):
    _fields_ = [("extension_base", _Extension), ("metadata", _c.POINTER(_Metadata))]


class _Buffer(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("dtype", _c.c_int),
                ("data", _c.c_void_p), ("rank", _c.c_int64), ("dims", _c.POINTER(_c.c_int64))]


class _List(_c.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("size", _c.c_int64),
                ("types", _c.c_void_p), ("items", _c.POINTER(_c.POINTER(_Buffer)))]


class _ByteSpan(_c.Structure):
    _fields_ = [("ptr", _c.c_char_p), ("len", _c.c_size_t)]


class _Scalar(_c.Structure):
    _fields_ = [("dtype", _c.c_int), ("value", _c.POINTER(_c.c_int64))]


class _Attrs(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("size", _c.c_int64),
                ("types", _c.c_void_p), ("names", _c.POINTER(_c.POINTER(_ByteSpan))),
                ("attrs", _c.POINTER(_c.POINTER(_Scalar)))]


class _ErrorArgs(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("message", _c.c_char_p),
                ("errc", _c.c_int)]


_ErrorCreate = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_ErrorArgs))


class _Api(_c.Structure):  # the head of XLA_FFI_Api, up to the function that creates an error
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.c_void_p), ("api_version", _Version),
                ("internal_api", _c.c_void_p), ("error_create", _ErrorCreate)]


class _CallFrame(_c.Structure):
    _fields_ = [("struct_size", _c.c_size_t), ("extension_start", _c.POINTER(_Extension)),
                ("api", _c.POINTER(_Api)), ("ctx", _c.c_void_p), ("stage", _c.c_int), ("args", _List),
                ("rets", _List), ("attrs", _Attrs), ("future", _c.c_void_p)]


_METADATA = 1  # XLA_FFI_Extension_Metadata
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
_DTYPES = {11: np.dtype(np.float32), 12: np.dtype(np.float64)}  # XLA_FFI_DataType F32, F64

_functions = []  # host functions, by index: f(operands, results) fills `results`
_indices = {}
_lock = threading.Lock()


def index(key, make):
    """The index of the host function `make()` under `key`, made once."""
    with _lock:
        if key not in _indices:
            _indices[key] = len(_functions)
            _functions.append(make())
        return _indices[key]


def _array(buffer, writeable):
    """An XLA buffer as a NumPy array over the same memory."""
    buffer = buffer.contents
    dtype = _DTYPES[buffer.dtype]
    shape = tuple(buffer.dims[i] for i in range(buffer.rank))
    if prod(shape) == 0:
        return np.empty(shape, dtype)
    memory = (_c.c_char * (prod(shape) * dtype.itemsize)).from_address(buffer.data)
    array = np.frombuffer(memory, dtype).reshape(shape)
    array.flags.writeable = writeable
    return array


def _describe(frame):
    """Answer registration's question: which version of the API the handler speaks. 0.1, the first:
    the structures read here are its prefixes, and XLA accepts it as long as it supports 0.1."""
    metadata = _c.cast(frame.extension_start, _c.POINTER(_MetadataExtension)).contents.metadata.contents
    metadata.api_version.major, metadata.api_version.minor = 0, 1
    metadata.traits = 0


def _handle(pointer):
    # Nothing may escape into XLA's C++ frames: ctypes would hand XLA an undefined error pointer.
    # So the error is made here, in this frame (a Ctrl-C can land at the entry of any function).
    try:
        frame = pointer.contents
        if frame.extension_start and frame.extension_start.contents.type == _METADATA:
            _describe(frame)
            return None
        function = _functions[frame.attrs.attrs[0].contents.value[0]]  # the one attribute, "index"
        operands = [_array(frame.args.items[i], False) for i in range(frame.args.size)]
        results = [_array(frame.rets.items[i], True) for i in range(frame.rets.size)]
        function(operands, results)
        return None
    except BaseException as err:  # noqa: B036
        failure = err
    while True:  # a second Ctrl-C while the error is made is reported instead
        try:
            message = "".join(traceback.format_exception_only(type(failure), failure)).strip().encode()
            create = pointer.contents.api.contents.error_create
            return create(_c.byref(_ErrorArgs(_c.sizeof(_ErrorArgs), None, message, _INTERNAL)))
        except BaseException as again:  # noqa: B036
            failure = again


@atexit.register
def _finish():
    """Let work still in flight end while its host calls can take the GIL: at exit, XLA's threads
    wait for it, and a handler that can no longer run would leave the process hanging."""
    for array in jax.live_arrays():
        try:
            array.block_until_ready()
        except Exception:  # noqa: BLE001, S110 - a failed or deleted array has nothing left to wait for
            pass


_HANDLER = _c.CFUNCTYPE(_c.c_void_p, _c.POINTER(_CallFrame))(_handle)  # kept alive here, for XLA
jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_HANDLER), platform="cpu")
