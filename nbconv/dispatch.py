"""The one place a backend is chosen, and the backend module that runs it.

A backend is 'cpu', 'cuda', or 'auto' (CUDA when an input is already on the device).

Every backend module offers the same entries: ``convolve(call, x, w, bias, out)`` for a validated
`ConvCall` (`nbconv.call`) and ``standardize_columns(columns, eps, gains)``; the CUDA backend also
``to_host(a)``, ``to_device(a)``, ``as_device(a)`` and ``vjp(...)``, conv3d_vjp on the device. Nothing
here touches CUDA at import time; `nbconv.cuda` is imported only when a call needs it.
"""
import os
from types import ModuleType

from nbconv import cpu
from nbconv.call import host_array, is_device_array

BACKENDS = ("auto", "cpu", "cuda")
ENV_VAR = "NBCONV_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine.

    Its message says why and what to install (``pip install 'nbconv[cuda]'`` and a GPU driver for
    ``backend="cuda"``), or how to run the CUDA kernels in Numba's simulator instead.
    """


def choose_backend(backend: str, *arrays) -> str:
    """Resolve `backend` for a call on `arrays` to 'cpu' or 'cuda'.

    'auto' takes the environment variable ``NBCONV_BACKEND`` when it is set, else CUDA when any of
    `arrays` is a device array, else the CPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got {backend!r}")
    on_device = any(is_device_array(a) for a in arrays)
    if backend == "auto":
        backend = "cuda" if on_device else "cpu"
    if backend == "cpu" and on_device:
        raise TypeError("backend='cpu' was given a CUDA device array; use backend='cuda' (or 'auto'), "
                        "or copy the array to the host first")
    return backend


def backend_module(backend: str) -> ModuleType:
    """Return the module of a resolved backend, 'cpu' or 'cuda'.

    `nbconv.cuda` only once it is known to run here, else `BackendUnavailableError` says why.
    """
    return cpu if backend == "cpu" else cuda_module()


def cuda_module() -> ModuleType:
    """Import the CUDA backend, or raise BackendUnavailableError saying why."""
    try:
        from numba import cuda
    except ImportError as err:  # pragma: no cover - numba is a dependency
        raise BackendUnavailableError(f"numba.cuda cannot be imported ({err})") from err
    if not cuda.is_available():
        raise BackendUnavailableError(
            "backend='cuda' needs an NVIDIA GPU with a working driver, and the CUDA libraries: "
            "pip install 'nbconv[cuda]' (numba-cuda[cu12]). numba.cuda.is_available() is False here; "
            "use backend='cpu', or set NUMBA_ENABLE_CUDASIM=1 to run the kernels in the simulator.")
    from nbconv import cuda as backend
    return backend


def device_views(*arrays):
    """Return Numba views of the device arrays among `arrays`, the others as they are.

    CuPy and PyTorch arrays then have NumPy dtypes and C-order checks.
    """
    if not any(is_device_array(a) for a in arrays):
        return arrays
    backend = cuda_module()
    return tuple(backend.as_device(a) if is_device_array(a) else a for a in arrays)


def on_host(a, name: str, optional: bool = False):
    """Copy a device array to the host; anything else as `nbconv.call.host_array` gives it."""
    return cuda_module().to_host(a) if is_device_array(a) else host_array(a, name, optional)
