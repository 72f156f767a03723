"""nbconv's parallel kernels, launched safely on whichever threading layer Numba picks (docs/threads.md).

Numba runs `parallel=True` code on one threading layer per process: by default TBB where it finds
it, else OpenMP, else its own `workqueue`; `NUMBA_THREADING_LAYER` chooses. TBB is safe under
threads and fork, but on the public workloads it ran slower than GNU OpenMP (nbconv alone and
beside PyTorch: docs/threads.md), so nbconv does not bring it in
(the `tbb` extra does, for NUMBA_THREADING_LAYER=tbb); it makes up for the other two instead,
as nbconv is called from other people's thread pools and `multiprocessing` workers:
- GNU OpenMP (Linux) is not fork-safe: in a process forked after it ran (multiprocessing's `fork`,
  PyTorch's DataLoader workers), Numba kills the process at its first parallel launch. There each
  kernel runs its serial twin instead (the same code compiled without `parallel`): one thread,
  as a DataLoader worker runs anyway.
- workqueue is not thread-safe: two Python threads launching at once abort the process. Under it,
  and until a first launch has shown which layer Numba chose, launches take turns through one lock.
"""
import ctypes
import os
import sys
import threading
from types import FunctionType

import numba
from numba import njit

# GNU OpenMP's wait: a thread left without work spins GOMP_SPINCOUNT times (300,000 by default: several
# milliseconds) before it sleeps. After an idle spell the scheduler may queue a woken worker on the main
# thread's CPU, behind the main thread spinning at the region's end for that very worker, so a short call
# lasted the whole spin (docs/threads.md). A short spin, still longer than the gap between back-to-back
# calls, gives the CPU up soon. Set only where the user set neither variable, and before GNU OpenMP is
# loaded (at the first parallel launch), since it reads them once.
GOMP_SPINCOUNT = "10000"
if not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT

# Where pip puts TBB's library (the `tbb` wheel's <prefix>/lib), by the name Numba asks for.
_TBB_LIBRARIES = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib"}


def _load_tbb():
    """When TBB is asked for (NUMBA_THREADING_LAYER=tbb, or 'safe', which is TBB), make pip's TBB
    findable: Numba looks it up by its bare name, which the dynamic loader does not find in a
    virtual environment's lib folder, where pip installs it (numba issue 6108: `pip install tbb`
    alone leaves TBB unused); loaded from there by its path first, it is found loaded."""
    name = _TBB_LIBRARIES.get(sys.platform)
    path = os.path.join(sys.prefix, "lib", name) if name else None
    if str(numba.config.THREADING_LAYER).lower() in ("tbb", "safe") and path and os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:  # a broken install: Numba then says that it found no TBB
            pass


_load_tbb()


def kernel(**options):
    """Decorator: `njit(parallel=True, nogil=True, **options)` with a serial twin, launched as
    described above. The kernels release the GIL, so that Python threads (Dask's threaded scheduler,
    a server's pool) run them at once; they touch nothing but the arrays they are given."""
    return lambda function: Kernel(function, {"nogil": True, **options})


class Kernel:
    """A parallel kernel and its serial twin; calling it runs the one this process can run."""

    def __init__(self, function, options):
        self.__name__, self.__doc__ = function.__name__, function.__doc__
        self.parallel = njit(parallel=True, **options)(function)
        self.serial = njit(**options)(_twin(function))

    def __call__(self, *args):
        if _STATE.unguarded:  # the usual case, once known: one attribute lookup per call
            return self.parallel(*args)
        if _STATE.forked_from_gnu_openmp:
            return self.serial(*args)
        if _layer() in _THREAD_SAFE:
            _STATE.unguarded = True
            return self.parallel(*args)
        with _STATE.lock:
            return self.parallel(*args)

    def inspect_asm(self):
        """The machine code of both, by (which, signature)."""
        return {(which, sig): asm for which in ("parallel", "serial")
                for sig, asm in getattr(self, which).inspect_asm().items()}


def _twin(function):
    """A copy of `function` under another qualified name: Numba's cache files are named after it
    (and keyed by the bytecode, not by `parallel`), so the twins do not load each other's code."""
    twin = FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__,
                        function.__closure__)
    twin.__qualname__ = f"{function.__qualname__}_serial"
    return twin


# Layers under which Python threads may launch at once.
_THREAD_SAFE = ("tbb", "omp")


def _layer():
    """The threading layer Numba chose, None before the first parallel launch (then it stays)."""
    if _STATE.layer is None:
        try:
            _STATE.layer = numba.threading_layer()
        except ValueError:
            pass
    return _STATE.layer


def _gnu_openmp():
    if _layer() != "omp":
        return False
    from numba.np.ufunc import omppool
    return omppool.openmp_vendor == "GNU"


class _State:
    def __init__(self, forked_from_gnu_openmp=False, layer=None):
        self.lock = threading.Lock()  # new in a child: another thread may have held the parent's
        self.forked_from_gnu_openmp = forked_from_gnu_openmp
        self.layer = layer
        self.unguarded = False  # a thread-safe layer, in a process that can run it


_STATE = _State()


def _after_fork_in_child():
    global _STATE
    _STATE = _State(_STATE.forked_from_gnu_openmp or _gnu_openmp(), _STATE.layer)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
