"""Tasks of a parallel loop handed out as the threads ask for them, not split evenly up front, and
long loops cut into slices that Python can interrupt between (`in_slices`).

`prange` gives each thread an equal, contiguous share. On shared vCPUs one often runs slower than
another for many calls in a row, so with equal shares the fast thread waited for the slow one at the
end of every call (seen with a cycle counter per task; Numba's `parallel_chunksize` did not change the
shares with the OpenMP layer). Here a loop runs one `prange` iteration per thread, and each thread
claims runs of consecutive tasks from a shared counter: long runs first (a thread keeps neighbouring
tasks, which share input rows), shorter ones as the tasks run out (`guided` scheduling), so both
threads finish within a short run of each other. On one thread it changes nothing (docs/design.md).
"""
import time

from numba import njit, types
from numba.extending import intrinsic

from nbconv.cpu import nojit

# A long call runs as consecutive launches over slices of its tasks, each of about SLICE_SECONDS, so
# that Python runs its signal handlers (Ctrl-C's KeyboardInterrupt) between them; the first slice
# is FIRST_SLICE_FLOPS of work (a call shorter than that is one launch: no cost), the next ones sized
# from the time it took. 5e8 is about SLICE_SECONDS of the slowest kernel, the few-channel loop nest
# (a larger first slice kept a Ctrl-C waiting there), and enough work on the fastest that a second
# launch, one more thread wake-up, costs nothing measurable (docs/design.md).
SLICE_SECONDS = 0.1
FIRST_SLICE_FLOPS = 5e8


def in_slices(run, n_tasks, flops):
    """run(first, end) for consecutive slices of range(n_tasks), of about SLICE_SECONDS each; `flops`
    is the work of all of them. An exception between two slices (KeyboardInterrupt) leaves the
    tasks of the later ones undone."""
    if flops <= FIRST_SLICE_FLOPS:  # most calls: one launch, nothing to time
        run(0, n_tasks)
        return
    size, first = max(1, int(n_tasks * FIRST_SLICE_FLOPS / flops)), 0
    while first < n_tasks:
        end = min(n_tasks, first + size)
        began = time.perf_counter()
        run(first, end)
        took = max(time.perf_counter() - began, 1e-6)
        size, first = max(1, int((end - first) * SLICE_SECONDS / took)), end


@njit(inline="always")
def claim(counter, done, n_tasks, workers):
    """The next run (first, end) of tasks up to n_tasks (a slice's end) for a thread whose last run
    ended at `done` (the slice's first task at first): a share of what it saw left, split among
    twice the workers, at least one task. first >= n_tasks when none are left."""
    size = max(1, (n_tasks - done) // (2 * workers))
    first = fetch_add(counter, size)
    return first, min(first + size, n_tasks)


def _fetch_add_python(counter, amount):
    before = counter[0]
    counter[0] += amount
    return before


@nojit.python_twin(_fetch_add_python)
@intrinsic
def fetch_add(typingctx, counter, amount):
    """counter[0] += amount atomically; -> the value before."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, args[1], "monotonic")
    if isinstance(counter, types.Array) and counter.dtype == types.int64 and amount == types.int64:
        return types.int64(counter, amount), codegen
    return None
