"""Tasks of a parallel loop handed out as the threads ask for them, not split evenly up front.

`prange` gives each thread an equal, contiguous share. On these shared 2-vCPU machines one vCPU often
runs 10-15% slower than the other for many calls in a row, so with equal shares the fast thread waited
for the slow one at the end of every call (dilated_r2: 200-500 us of a 3.9 ms call, measured with a
cycle counter per task; Numba's `parallel_chunksize` did not change the shares with the OpenMP layer).
Here a loop runs one `prange` iteration per thread, and each thread claims runs of consecutive tasks
from a shared counter: long runs first (a thread keeps neighbouring tasks, which share input rows),
shorter ones as the tasks run out (`guided` scheduling), so both threads finish within a short run of
each other. Same-process A/B against equal shares, two threads: depthwise_c64 1.13-1.14x, medical_s2
1.10-1.11x, grouped_g8 1.06-1.13x, video_c3 and lhs_dilated_2 1.06-1.12x, dilated_r2 1.02-1.04x, dense
unchanged; one thread unchanged.
"""
from numba import njit, types
from numba.extending import intrinsic


@njit(inline="always")
def claim(counter, done, n_tasks, workers):
    """The next run (first, end) of tasks for a thread whose last run ended at `done` (0 at first):
    a share of what it saw left, split among twice the workers, at least one task. first >= n_tasks
    when none are left."""
    size = max(1, (n_tasks - done) // (2 * workers))
    first = _fetch_add(counter, size)
    return first, min(first + size, n_tasks)


@intrinsic
def _fetch_add(typingctx, counter, amount):
    """counter[0] += amount atomically; -> the value before."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, args[1], "monotonic")
    if isinstance(counter, types.Array) and counter.dtype == types.int64 and amount == types.int64:
        return types.int64(counter, amount), codegen
    return None
