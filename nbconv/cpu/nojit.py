"""What runs in place of nbconv's LLVM intrinsics under NUMBA_DISABLE_JIT=1, where every njit
function runs as plain Python (how Numba code is debugged), so that the blocked kernel still runs,
slowly but right, through the same code as when compiled."""
import ctypes

import numba
import numpy as np


def python_twin(python):
    """Decorator of an intrinsic: `python`, a function of the same arguments (without the typing
    context), replaces it under NUMBA_DISABLE_JIT=1."""
    return lambda compiled: python if numba.config.DISABLE_JIT else compiled


def pointer(array):
    """A typed ctypes pointer to an array's data (what `numba.carray` takes in Python)."""
    return array.ctypes.data_as(ctypes.POINTER(np.ctypeslib.as_ctypes_type(array.dtype)))
