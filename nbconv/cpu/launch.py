"""One parallel loop, compiled once, that runs a kernel family's compiled entry point on every thread.

A `parallel=True` function is compiled twice more than a plain one (its parfor gufunc, and the
function around it), each time with everything it calls linked in, optimised and turned into machine
code again, and Numba's parfor passes take seconds of their own. Compiled per kernel family, that was
most of a family's cold compile (grouped_g8 on Zen 3: 5.4 s, 2.4 without). So the family is compiled
once, as a C function of data pointers (`blocked._entry`), and this loop, compiled once for all
families, calls it by address on each of Numba's threads.
"""
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from nbconv.config import CACHE
from nbconv.cpu import nojit, parallel


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
