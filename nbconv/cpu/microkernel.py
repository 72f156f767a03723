"""A register-blocked FMA micro-kernel, emitted as LLVM vector IR (LLVM will not block registers for
us from plain loops: DESIGN.md §5).

``fma_tile(P, V, x, x_base, x_step, taps, w, w_base, tile)`` computes, for P output pixels and V
vectors of LANES output channels, held as P * V accumulators in vector registers across the whole
reduction:

    tile[p, v * LANES + l] = sum over taps t, over i < taps[t, 2] of
        x[x_base + taps[t, 0] + p * x_step + i] * w[w_base + taps[t, 1] + i * V * LANES + v * LANES + l]

Vectors are 512 bits (16 float32 or 8 float64 lanes, ``llvm.fma.v16f32`` / ``v8f64``): this CPU has
two 512-bit FMA pipes and 32 zmm registers, and the accumulators plus V weight vectors must fit in
them. Inputs are broadcast from memory, one load per pixel per reduction step; weights are loaded
once per step and used P times. `P` and `V` must be compile-time literals.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

VECTOR_BYTES = 64


def lanes(dtype):
    """Lanes of one 512-bit vector of `dtype` (a NumPy or Numba float type)."""
    return VECTOR_BYTES // (dtype.bitwidth // 8 if hasattr(dtype, "bitwidth") else dtype.itemsize)


@intrinsic
def fma_tile(typingctx, pixels, vectors, x, x_base, x_step, taps, w, w_base, tile):
    if not (isinstance(pixels, types.IntegerLiteral) and isinstance(vectors, types.IntegerLiteral)):
        raise TypingError("fma_tile needs literal pixel and vector counts")
    sig = types.void(pixels, vectors, x, x_base, x_step, taps, w, w_base, tile)
    return sig, _codegen(pixels.literal_value, vectors.literal_value, x.dtype)


def _codegen(n_pix, n_vec, dtype):
    width = lanes(dtype)

    def codegen(context, builder, signature, args):
        _, _, x_ty, _, _, taps_ty, w_ty, _, tile_ty = signature.args
        _, _, x, x_base, x_step, taps, w, w_base, tile = args
        x_ptr = context.make_array(x_ty)(context, builder, x).data
        w_ptr = context.make_array(w_ty)(context, builder, w).data
        tile_ptr = context.make_array(tile_ty)(context, builder, tile).data
        taps_ary = context.make_array(taps_ty)(context, builder, taps)
        n_taps = cgutils.unpack_tuple(builder, taps_ary.shape)[0]
        scalar = context.get_value_type(dtype)
        vec = ir.VectorType(scalar, width)
        name = f"llvm.fma.v{width}f{dtype.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), name)
        i64 = ir.IntType(64)
        const = lambda v: ir.Constant(i64, v)
        acc = [[cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(n_vec)]
               for _ in range(n_pix)]

        def load_vector(ptr, index):
            address = builder.bitcast(builder.gep(ptr, [index]), vec.as_pointer())
            return builder.load(address, align=dtype.bitwidth // 8)

        def broadcast(value):
            one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, const(0))
            return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))

        with cgutils.for_range(builder, n_taps) as tap_loop:
            row = builder.mul(tap_loop.index, const(3))
            entry = [builder.load(builder.gep(taps_ary.data, [builder.add(row, const(k))])) for k in range(3)]
            x_first = builder.add(x_base, entry[0])
            w_first = builder.add(w_base, entry[1])
            with cgutils.for_range(builder, entry[2]) as step:
                w_row = builder.add(w_first, builder.mul(step.index, const(n_vec * width)))
                weights = [load_vector(w_ptr, builder.add(w_row, const(v * width))) for v in range(n_vec)]
                x_row = builder.add(x_first, step.index)
                for p in range(n_pix):
                    at = builder.add(x_row, builder.mul(x_step, const(p)))
                    value = broadcast(builder.load(builder.gep(x_ptr, [at])))
                    for v in range(n_vec):
                        builder.store(builder.call(fma, [value, weights[v], builder.load(acc[p][v])]),
                                      acc[p][v])
        for p in range(n_pix):
            for v in range(n_vec):
                at = builder.bitcast(builder.gep(tile_ptr, [const((p * n_vec + v) * width)]), vec.as_pointer())
                builder.store(builder.load(acc[p][v]), at, align=dtype.bitwidth // 8)
        return context.get_dummy_value()

    return codegen
