"""The FMA peak of the cores for the compile target: a loop of independent vector multiply-adds held
in registers (no memory traffic), on every thread; FMAs where the target has them, else a multiply
and an add each, as the kernels compute. The ceiling the benchmark's GFLOP/s are read against
(`python -m nbconv bench` prints it)."""
import time

import numpy as np
from llvmlite import ir
from numba import get_num_threads, prange
from numba.core import cgutils
from numba.extending import intrinsic

from nbconv.cpu import parallel
from nbconv.cpu.emitter import splat
from nbconv.cpu.microkernel import TARGET

# Independent accumulators: more than the pipes x latency the micro-kernel assumes
# (`target.Blocking.chains`), fewer than 16 registers with the two operands.
CHAINS = 12


@intrinsic
def _fma_chains(typingctx, steps, scale, shift):
    """CHAINS vectors of the target's width of scale's float type, each `steps` times acc = acc *
    scale + shift; -> the sum of their first lanes (so that nothing is optimised away)."""
    lanes = TARGET.lanes(scale)

    def codegen(context, builder, signature, args):
        n, m, a = args
        vec = ir.VectorType(m.type, lanes)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fmuladd.v{lanes}f{scale.bitwidth}")
        operands = [splat(builder, vec, value) for value in (m, a)]
        acc = [cgutils.alloca_once_value(builder, splat(builder, vec, a)) for _ in range(CHAINS)]
        with cgutils.for_range(builder, n):
            for slot in acc:
                builder.store(builder.call(fma, [builder.load(slot), *operands]), slot)
        total = ir.Constant(m.type, 0.0)
        for slot in acc:
            total = builder.fadd(total, builder.extract_element(builder.load(slot), ir.Constant(ir.IntType(32), 0)))
        return total

    return scale(steps, scale, shift), codegen



@parallel.kernel(cache=True)
def _run(threads, steps, scale, shift):
    total = 0.0
    for _ in prange(threads):
        total += _fma_chains(steps, scale, shift)
    return total


def fma_peak_gflops(threads=None, seconds=0.2):
    """float32 GFLOP/s of `threads` threads (Numba's count by default) doing nothing but FMAs: the
    best of 5 runs of about `seconds` / 5 each."""
    threads = threads or get_num_threads()
    steps, scale, shift = 1 << 16, np.float32(0.999), np.float32(1e-3)
    _run(threads, steps, scale, shift)
    start = time.perf_counter()
    _run(threads, steps, scale, shift)
    steps = max(steps, int(steps * seconds / 5 / (time.perf_counter() - start)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        _run(threads, steps, scale, shift)
        best = min(best, time.perf_counter() - start)
    return 2 * threads * steps * CHAINS * TARGET.lanes("float32") / best / 1e9
