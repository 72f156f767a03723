"""Register-blocked FMA micro-kernels, emitted as LLVM vector IR (LLVM will not block registers for us
from plain loops: DESIGN.md §5).

``fma_tile(V, P, x, x_base, x_step, taps, w, w_base, y, y_base, y_step, bias, bias_base)`` computes
P output pixels x V vectors of LANES output channels, held as P * V accumulators in vector registers
across the whole reduction, and stores them plus the bias:

    y[y_base + p * y_step + v * LANES + l] = bias[bias_base + v * LANES + l] + sum over taps t, over
        i < taps[t, 2] of x[x_base + taps[t, 0] + p * x_step + i] * w[w_base + taps[t, 1] + i * V * LANES + v * LANES + l]

`fma_channels` (depthwise) has the same arguments and reads x as vectors too, one input channel per
lane: ``x[x_base + taps[t, 0] + p * x_step + i + v * LANES + l]``.

Vectors are 512 bits (16 float32 or 8 float64 lanes, ``llvm.fma.v16f32`` / ``v8f64``): this CPU has
two 512-bit FMA pipes and 32 vector registers. V and P are run-time values; the IR holds one unrolled
body per (V, P) in VARIANTS behind a switch, so callers need no compile-time constants. `bias` must
have V * LANES readable values from `bias_base`.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 64

# Pixel counts per vector count: the largest keeps P * V accumulators and V weight vectors within the
# 32 registers; the halvings cover the ends of rows without falling back to one pixel at a time.
VARIANTS = {1: (16, 8, 4, 2, 1), 2: (12, 6, 3, 1), 3: (8, 4, 2, 1), 4: (6, 3, 1)}
MAX_PIXELS = 16
# VARIANTS as a table for compiled code: row V - 1, descending, padded with 1.
_CHOICES = np.array([counts + (1,) * (5 - len(counts)) for counts in VARIANTS.values()], np.int64)


def lanes(dtype):
    """Lanes of one 512-bit vector of a NumPy or Numba float dtype."""
    return VECTOR_BYTES // np.dtype(str(dtype)).itemsize


@njit(inline="always")
def pixel_block(vectors, remaining):
    """The most pixels one micro-kernel call for `vectors` vectors takes from `remaining` (>= 1)."""
    for pixels in _CHOICES[vectors - 1]:
        if pixels <= remaining:
            return pixels
    return 1


def _intrinsic(elementwise):
    def typer(typingctx, vectors, pixels, x, x_base, x_step, taps, w, w_base, y, y_base, y_step, bias,
              bias_base):
        sig = types.void(vectors, pixels, x, x_base, x_step, taps, w, w_base, y, y_base, y_step, bias,
                         bias_base)
        return sig, _codegen(x.dtype, elementwise)
    typer.__name__ = "fma_channels" if elementwise else "fma_tile"
    return intrinsic(typer)


def _codegen(dtype, elementwise):
    def codegen(context, builder, signature, args):
        tys = signature.args
        vectors, pixels, x, x_base, x_step, taps, w, w_base, y, y_base, y_step, bias, bias_base = args
        emit = _Emitter(context, builder, dtype, elementwise)
        data = {name: context.make_array(tys[i])(context, builder, args[i]).data
                for name, i in (("x", 2), ("w", 6), ("y", 8), ("bias", 11))}
        taps_ary = context.make_array(tys[5])(context, builder, taps)
        n_taps = cgutils.unpack_tuple(builder, taps_ary.shape)[0]
        done = builder.append_basic_block("fma_done")
        key = builder.add(builder.mul(vectors, emit.const(64)), pixels)
        switch = builder.switch(key, done)
        for n_vec, pixel_counts in VARIANTS.items():
            for n_pix in pixel_counts:
                block = builder.append_basic_block(f"fma_v{n_vec}_p{n_pix}")
                switch.add_case(ir.Constant(key.type, n_vec * 64 + n_pix), block)
                builder.position_at_end(block)
                emit.body(n_vec, n_pix, data, taps_ary.data, n_taps, x_base, x_step, w_base, y_base,
                          y_step, bias_base)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return codegen


class _Emitter:
    """IR for one (V, P) body: accumulate over the taps, then add the bias and store."""

    def __init__(self, context, builder, dtype, elementwise):
        self.builder = builder
        self.elementwise = elementwise
        self.width = lanes(dtype)
        self.align = VECTOR_BYTES // self.width
        self.vec = ir.VectorType(context.get_value_type(dtype), self.width)
        name = f"llvm.fma.v{self.width}f{8 * self.align}"
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vec, [self.vec] * 3), name)

    def const(self, value):
        return ir.Constant(ir.IntType(64), value)

    def load_vector(self, ptr, index):
        address = self.builder.bitcast(self.builder.gep(ptr, [index]), self.vec.as_pointer())
        return self.builder.load(address, align=self.align)

    def store_vector(self, value, ptr, index):
        address = self.builder.bitcast(self.builder.gep(ptr, [index]), self.vec.as_pointer())
        self.builder.store(value, address, align=self.align)

    def broadcast(self, value):
        b = self.builder
        one = b.insert_element(ir.Constant(self.vec, ir.Undefined), value, self.const(0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [0] * self.width)
        return b.shuffle_vector(one, ir.Constant(self.vec, ir.Undefined), zeros)

    def body(self, n_vec, n_pix, data, taps, n_taps, x_base, x_step, w_base, y_base, y_step, bias_base):
        b, c, width = self.builder, self.const, self.width
        acc = [[cgutils.alloca_once_value(b, ir.Constant(self.vec, None)) for _ in range(n_vec)]
               for _ in range(n_pix)]
        with cgutils.for_range(b, n_taps) as tap:
            row = b.mul(tap.index, c(3))
            entry = [b.load(b.gep(taps, [b.add(row, c(k))])) for k in range(3)]
            x_first, w_first = b.add(x_base, entry[0]), b.add(w_base, entry[1])
            with cgutils.for_range(b, entry[2]) as step:
                w_row = b.add(w_first, b.mul(step.index, c(n_vec * width)))
                weights = [self.load_vector(data["w"], b.add(w_row, c(v * width))) for v in range(n_vec)]
                x_row = b.add(x_first, step.index)
                for p in range(n_pix):
                    at = b.add(x_row, b.mul(x_step, c(p)))
                    if self.elementwise:
                        inputs = [self.load_vector(data["x"], b.add(at, c(v * width))) for v in range(n_vec)]
                    else:
                        inputs = [self.broadcast(b.load(b.gep(data["x"], [at])))] * n_vec
                    for v in range(n_vec):
                        b.store(b.call(self.fma, [inputs[v], weights[v], b.load(acc[p][v])]), acc[p][v])
        for v in range(n_vec):
            shift = self.load_vector(data["bias"], b.add(bias_base, c(v * width)))
            for p in range(n_pix):
                at = b.add(b.add(y_base, b.mul(y_step, c(p))), c(v * width))
                self.store_vector(b.fadd(b.load(acc[p][v]), shift), data["y"], at)


fma_tile = _intrinsic(elementwise=False)
fma_channels = _intrinsic(elementwise=True)
