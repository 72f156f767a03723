"""One parallel loop, compiled once, that runs a kernel family's compiled entry point on every thread.

A `parallel=True` function is compiled twice more than a plain one (its parfor gufunc, and the
function around it), each time with everything it calls linked in, optimised and turned into machine
code again, and Numba's parfor passes take seconds of their own. Compiled per kernel family, that was
most of a family's cold compile. So each kernel is compiled once per dtype, as a C function of data
pointers (`blocked._entry`, `weight_grad._entry`), and this loop, compiled once for all of them, calls
it by address on each of Numba's threads. (The kernels in turn call their family's micro-kernel loop
by address: `microkernel.lines_address`.)
"""
import hashlib
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import cfunc, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nbconv.config import CACHE
from nbconv.cpu import emitter, microkernel, nojit, parallel, target, tasks
from nbconv.cpu.tasks import in_slices

# Numba's cache checks the source file of a cached function only, but an entry's machine code also
# comes from the micro-kernel generator, its target tables and the task counter: a digest of their
# source is a constant of every entry (a cell of its closure, which Numba's cache keys by), so that an
# edit there (a `git pull`) compiles the entries anew instead of loading stale ones.
LINKED_SOURCES = hashlib.sha256(b"".join(Path(module.__file__).read_bytes()
                                         for module in (emitter, microkernel, target, tasks))).hexdigest()


def entry_point(function, dtype):
    """`function` of (4 pointers to `dtype` values, 5 to int64) as a compiled C function that `run`
    calls by address; the Python function itself under NUMBA_DISABLE_JIT (`_call_python`)."""
    if numba.config.DISABLE_JIT:
        return function
    values, integers = types.CPointer(numba.from_dtype(dtype)), types.CPointer(types.int64)
    return cfunc(types.void(*[values] * 4, *[integers] * 5), error_model="numpy", cache=CACHE)(function)


def address(entry):
    """What `run` takes for an entry point (the Python function under NUMBA_DISABLE_JIT)."""
    return getattr(entry, "address", entry)


# The tap tables' place in the arguments of a copy, which reads none (read-only, as the kernels'
# are, so that the loop's argument types are theirs and it compiles once for all).
_NO_TABLE = np.zeros((1, 1), np.int64)
_NO_TABLE.flags.writeable = False


def copy_arrays(source, target, meta):
    """The arguments of a copy's entry (`regroup`, `layout`) from `source` into `target`, 5-D arrays,
    in the kernels' places: (x, 2 unused, out, 3 tables, the task counter, meta)."""
    return source, target, target, target, _NO_TABLE, _NO_TABLE, _NO_TABLE, np.zeros(3, np.int64), meta


def run_tasks(entry, workers, arrays, n_tasks, flops):
    """An entry whose threads claim n_tasks tasks from counter = arrays[7] (`tasks.claim`: counter[0]
    the next task, counter[1:] this launch's first and end), in slices that Ctrl-C can interrupt
    between (`tasks.in_slices`); `flops`, the work of all of them, sizes the slices."""
    counter = arrays[7]

    def launch(first, end):
        counter[0] = counter[1] = first  # (three scalar stores: a third of the tuple's assignment)
        counter[2] = end
        run(entry, workers, arrays)
    in_slices(launch, n_tasks, flops)


@parallel.kernel(cache=CACHE)
def run(entry, workers, arrays):
    """entry(*data pointers of arrays) on `workers` threads at once."""
    for _ in prange(workers):
        _call(entry, arrays)


def _call_python(entry, arrays):
    entry(*map(nojit.pointer, arrays))


@nojit.python_twin(_call_python)
@intrinsic
def _call(typingctx, address, arrays):
    """Call the C function at `address` with the data pointers of the tuple `arrays`."""
    def codegen(context, builder, signature, args):
        items = cgutils.unpack_tuple(builder, args[1])
        pointers = [context.make_array(ty)(context, builder, item).data for ty, item in zip(arrays, items)]
        function = ir.FunctionType(ir.VoidType(), [p.type for p in pointers])
        builder.call(builder.inttoptr(args[0], function.as_pointer()), pointers)
        return context.get_dummy_value()
    if address == types.intp and isinstance(arrays, types.BaseTuple):
        return types.void(address, arrays), codegen
    return None
