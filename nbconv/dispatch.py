"""Backend choice for each call: 'cpu', 'cuda', or 'auto' (CUDA when an input is already on the device).

Nothing here touches CUDA at import time; `nbconv.cuda` is imported only when a call needs it.
"""
import os
import sys

import numpy as np

BACKENDS = ("auto", "cpu", "cuda")
ENV_VAR = "NBCONV_BACKEND"


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine; the message says why and what to install."""


def is_device_array(a):
    """True for anything exposing ``__cuda_array_interface__`` (Numba device arrays, CuPy, PyTorch CUDA
    tensors), and for the CUDA simulator's device arrays, which do not expose it."""
    if type(a) is np.ndarray:  # the common case, asked several times per call
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    simulator = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return simulator is not None and isinstance(a, simulator.FakeCUDAArray)


def choose_backend(backend, *arrays):
    """Resolve `backend` for a call on `arrays` to 'cpu' or 'cuda'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "cuda" if any(is_device_array(a) for a in arrays) else "cpu"
    if backend == "cpu" and any(is_device_array(a) for a in arrays):
        raise TypeError("backend='cpu' was given a CUDA device array; use backend='cuda' (or 'auto'), "
                        "or copy the array to the host first")
    return backend


def cuda_module():
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
