"""Tunables with their defaults, in one place (read at call time, so tests may change them)."""

# Numba fast-math flags for the CPU kernels. Only 'contract' (fused multiply-add): the others would let
# LLVM assume finite values or reorder sums, and NaN/Inf must propagate exactly as in the reference.
FASTMATH = {"contract"}

# Cache compiled CPU kernels on disk (NUMBA_CACHE_DIR chooses where).
CACHE = True

# Force one kernel by name instead of the automatic choice (CPU: 'blocked' or 'grouped', see
# nbconv.cpu.conv; CUDA: 'tiled' or 'channels'). None = automatic. The tests run every kernel on
# every problem this way.
CPU_KERNEL = None
CUDA_KERNEL = None

# Kernel threads of each task of a conv3d on a Dask array (nbconv.chunked): 1, since Dask's schedulers
# run a task per core already (threads or worker processes); None = Numba's count for the thread.
DASK_TASK_THREADS = 1
