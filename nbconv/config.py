"""Tunables with their defaults, in one place (read at call time, so tests may change them)."""
import warnings

import numba

# Numba fast-math flags for the CPU kernels. Only 'contract' (fused multiply-add): the others would let
# LLVM assume finite values or reorder sums, and NaN/Inf must propagate exactly as in the reference.
FASTMATH = {"contract"}


def _disk_cache_usable():
    """Whether Numba finds a writable folder for the kernels' on-disk cache: NUMBA_CACHE_DIR, the
    package's __pycache__ or the user's cache folder. A read-only install (a container image run
    read-only, AWS Lambda, a root-owned site-packages with HOME unwritable) has none, and every
    `cache=True` kernel would then fail at import; they compile in memory instead."""
    try:
        numba.njit(cache=True)(_disk_cache_usable)
    except RuntimeError:  # Numba's "cannot cache function ...: no locator available"
        warnings.warn("nbconv: Numba finds no writable folder for its on-disk cache, so the kernels compile in "
                      "memory in each process; set NUMBA_CACHE_DIR to a writable folder to keep them "
                      "(docs/getting-started.md)", stacklevel=2)
        return False
    return True


# Cache compiled CPU kernels on disk (NUMBA_CACHE_DIR chooses where), where Numba can write.
CACHE = _disk_cache_usable()

# Force one kernel by name instead of the automatic choice (CPU: 'blocked' or 'grouped', see
# nbconv.cpu.conv; CUDA: 'tiled' or 'channels'). None = automatic. The tests run every kernel on
# every problem this way.
CPU_KERNEL = None
CUDA_KERNEL = None

# Kernel threads of each task of a conv3d on a Dask array (nbconv.chunked): 1, since Dask's schedulers
# run a task per core already (threads or worker processes); None = Numba's count for the thread.
DASK_TASK_THREADS = 1
