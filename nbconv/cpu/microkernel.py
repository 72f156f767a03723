"""Register-blocked FMA micro-kernels, emitted as LLVM vector IR (LLVM will not block registers for us
from plain loops: docs/design.md).

``fma_tile(vectors, spread, group, phased, remaining, x, (x_base, x_step, x_next), taps, n_taps, w,
(w_base, bias_base), bias, y, (y_base, y_step, channels, mode))`` computes P output pixels x V vectors
of LANES lanes, held as P * V accumulators in vector registers across the whole reduction, stores
them plus the bias, and returns P: the most of the target's pixel counts for V that `remaining` allows;
V, K, G and D are given by the types of `vectors`, `spread`, `group` and `phased`, tuples of as many
zeros. Lane l of vector v computes

    bias[bias_base + v * LANES + l] + sum over the taps t < n_taps, over
        i < taps[t, 2] of x[x_base + taps[t, 0] + p * x_step + i * S + v * D + l % K]
                          * w[w_base + taps[t, 1] + i * V * LANES + v * LANES + l]

K input values are spread over the lanes: K = 1 broadcasts one input to every output channel (dense
and grouped convolutions; the V vectors share their inputs, S = D: 1, or the weight gradient's step
along a row of positions, `weight_grad`). With K > 1 lane l = c * K + j
serves output channel c of slot j, G channels per slot. Slots are groups (D = 1 in `phased`, taken
as K: small groups; depthwise with K = LANES, where x is read as whole vectors): each vector has its
own K groups, the V * K inputs of one reduction step side by side in x (S = V * K; `group_inputs`
interleaves them). Or slots are input phases (D > 1: the group's input channels): each vector is one
group, lane c * K + j summing its inputs j, j + K, j + 2K... (S = K), so x needs no interleaving.
Only x_step is a run-time stride, so a pixel needs one address register. x_next is how much further
in x the next call reads (0: no next call), whose new inputs the variant below prefetches.

Pixel p's channels go to y[y_base + p * y_step + c] for c < channels, in order: a K = 1 vector v holds
c = v * LANES + l; a vector of K groups is reordered group by group (c = v * K * G + j * G + c'); a
vector of K phases adds them up (c = v * G + c'). Masked stores write no further than `channels`, so
a partial block needs no scratch tile; a vector whose channels all lie in the block is stored plainly.
`mode` says how a large result is stored (`emitter.Emitter.store`): 0 plainly, 1 with its lines
prefetched for writing first (`emitter.Emitter.prefetch_out`), 2 streamed past the caches (non-temporal
stores; every whole vector's address a multiple of the vector size).

Vectors are as wide as the compile target's registers (`nbconv.cpu.target`: 16 float32 lanes on
AVX-512, 8 on AVX2, 4 on SSE and NEON), multiplied and added by ``llvm.fmuladd`` (an FMA where the
target has one, a multiply and an add where not: never a call to libm's fma). Each (V, K, G, D)
compiles separately, with only its own bodies. P is a run-time value: the IR holds one unrolled body
per pixel count of the target's `pixels[V]` (`whole[V]` with K = LANES) behind a switch; with K =
LANES, bodies also hold a variant that loads each input vector once for all the pixels it serves,
taken when x_step = S: for taps of the target's `held` steps or fewer, with their weights in
registers (`emitter.Emitter.hold`); else, for its `sliding` pixel counts, a sliding window (`emitter.Emitter.slide`).
`bias` must have V * LANES readable values from `bias_base`. `tile_module` emits the same bodies as a
plain LLVM module for any target, to read their machine code (tests/test_isa.py). The kernels call a
family's bodies through a C function (`lines_address`, `fma_lines_at`), so that everything around
them compiles once for every family.
"""
import hashlib
from functools import lru_cache
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from nbconv.config import CACHE
from nbconv.cpu import emitter, nojit
from nbconv.cpu import target as target_module
from nbconv.cpu.emitter import ELEMENTS, Emitter, input_steps, stored_channels, whole_inputs
from nbconv.cpu.target import current

TARGET = current()


@lru_cache(maxsize=16)
def lanes(dtype):
    """Lanes of one vector of the compile target of a NumPy or Numba float dtype."""
    return TARGET.lanes(dtype)


def _fma_tile_python(vectors, spread, group, phased, remaining, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    """fma_tile's arithmetic in NumPy (NUMBA_DISABLE_JIT=1): the formula of this module's docstring."""
    n_vec, k, g, d = len(vectors), len(spread), len(group), len(phased)
    width, phased = lanes(x.dtype), d > 1 and k > 1
    (x_base, x_step, _), (w_base, bias_base), (y_base, y_step, channels, _) = x_at, w_at, y_at
    step, apart = input_steps(n_vec, k, d)
    whole = whole_inputs(width, k, phased)
    held = whole and x_step == step and 0 < n_taps and taps[0, 2] <= TARGET.blocking.held  # `emitter.Emitter.holds`
    pixels = max(n for n in TARGET.pixel_counts(n_vec, whole, held) if n <= remaining)
    lane, vector = np.arange(width), np.arange(n_vec)[:, None]
    for p in range(pixels):
        acc = bias[bias_base + vector * width + lane].astype(x.dtype)
        for x_off, w_off, length in taps[:n_taps]:
            for i in range(length):
                inputs = x[x_base + x_off + p * x_step + i * step + vector * apart + lane % k]
                acc = acc + inputs * w[w_base + w_off + i * n_vec * width + vector * width + lane]
        # lanes -> channels: c = v * LANES + l; K groups of G group by group; or K phases summed
        stored = stored_channels(width, k, g, phased)
        ordered = (acc[:, :g * k].reshape(n_vec, g, k).sum(axis=2) if phased else
                   acc[:, [(pos % g) * k + pos // g for pos in range(stored)]] if k > 1 else acc)
        for v in range(n_vec):
            count = max(0, min(stored, channels - v * stored))
            start = y_base + p * y_step + v * stored
            y[start:start + count] = ordered[v, :count]
    return pixels


@nojit.python_twin(_fma_tile_python)
@intrinsic
def fma_tile(typingctx, vectors, spread, group, phased, remaining, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    """The module docstring's micro-kernel; x, taps, w, bias and y are pointers (compiled, it runs in the
    C functions of `lines_address`), arrays in Python."""
    if not all(isinstance(pointer, types.CPointer) for pointer in (x, taps, w, bias, y)):
        return None
    sig = types.int64(vectors, spread, group, phased, remaining, x, x_at, taps, n_taps, w, w_at, bias, y, y_at)
    return sig, _codegen(TARGET, x.dtype, vectors.count, spread.count, group.count, phased.count)


@njit(inline="always")
def over_lines(vectors, spread, group, phased, lines, count, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    """`lines` lines of `count` output pixels: x_at = (x_base, x_step, x_line), y_at = (y_base, y_step,
    y_line, channels, mode), pixels a step apart, lines a line; in `fma_tile` calls of as many pixels as
    each holds, the lines of one block of pixels in turn, so that they find their shared inputs in L1
    (and each call but a block's last prefetches the next line's: `emitter.Emitter.prefetch_window`).
    -> the pixels of the last call (one call where count is one of the target's pixel counts)."""
    x_base, x_step, x_line = x_at
    y_base, y_step, y_line, channels, mode = y_at
    p = pixels = 0
    while p < count:
        for i in range(lines):
            x_at_i = (x_base + i * x_line + p * x_step, x_step, x_line if i + 1 < lines else 0)
            y_at_i = (y_base + i * y_line + p * y_step, y_step, channels, mode)
            pixels = fma_tile(vectors, spread, group, phased, count - p, x, x_at_i, taps, n_taps, w, w_at, bias, y,
                              y_at_i)
        p += pixels
    return pixels


def lines_address(shape, dtype):
    """The address of one family's `over_lines` (V, K, G, D: `shape`, tuples of zeros) compiled as a C
    function (`compiled_lines`), which the kernels call through `fma_lines_at`. So a family is only its
    micro-kernel and this loop: the code around them (claiming tasks, tap lists, loops over units and
    blocks) is the same for every family and compiles once per dtype (compiled into each family, it was
    most of a family's cold compile). The loop is inside, so that a call does a run of micro-kernel
    calls (called one by one, each short call pays an indirect call and its setup)."""
    lines = compiled_lines(shape, dtype)
    return getattr(lines, "address", lines)


# (family, dtype) -> its compiled loop (`compiled_lines`)
COMPILED = {}
# Numba's cache checks this file's source for the compiled loops, but their code also comes from the
# emitter and the target's tables: a digest of those is a constant of each (a cell of its closure, which
# the cache keys by).
_GENERATOR_SOURCE = hashlib.sha256(b"".join(Path(module.__file__).read_bytes()
                                            for module in (target_module, emitter))).hexdigest()


def compiled_lines(shape, dtype):
    """`over_lines` of one family and dtype as a C function of `fma_lines_at`'s arguments, compiled (or
    loaded from Numba's cache) once per process; under NUMBA_DISABLE_JIT, its index in COMPILED."""
    key = shape, np.dtype(dtype)
    if key not in COMPILED:
        COMPILED[key] = len(COMPILED) if numba.config.DISABLE_JIT else _compile_lines(*key)
    return COMPILED[key]


def _compile_lines(shape, dtype):
    vectors, spread, group, phased = shape
    digest = _GENERATOR_SOURCE

    def lines_of_tiles(lines, count, x, x_base, x_step, x_line, taps, n_taps, w, w_base, bias_base, bias, y, y_base,
                       y_step, y_line, channels, mode):
        digest  # noqa: B018 (referenced, so that it is a cell of the closure)
        return over_lines(vectors, spread, group, phased, lines, count, x, (x_base, x_step, x_line), taps, n_taps, w,
                          (w_base, bias_base), bias, y, (y_base, y_step, y_line, channels, mode))
    values, i64 = types.CPointer(numba.from_dtype(dtype)), types.int64
    # fma_lines_at's arguments in order, arrays as pointers and tuples flattened
    signature = i64(i64, i64, values, i64, i64, i64, types.CPointer(i64), i64, values, i64, i64, values, values,
                    *[i64] * 5)
    return cfunc(signature, error_model="numpy", cache=CACHE)(lines_of_tiles)


def _fma_lines_at_python(address, lines, count, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    family = list(COMPILED)[address][0]
    return over_lines(*family, lines, count, x, x_at, taps, n_taps, w, w_at, bias, y, y_at)


@nojit.python_twin(_fma_lines_at_python)
@intrinsic
def fma_lines_at(typingctx, address, lines, count, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    """over_lines(*family, lines, count, x, x_at, ...) of the family whose C function is at `address`
    (`lines_address`): x, taps, w, bias and y arrays, passed as their data pointers."""
    def codegen(context, builder, signature, args):
        tys = signature.args
        values = []
        for value, ty in zip(args[1:], tys[1:]):
            if isinstance(ty, types.Array):
                values.append(context.make_array(ty)(context, builder, value).data)
            elif isinstance(ty, types.BaseTuple):
                values += [context.cast(builder, item, item_ty, types.int64)
                           for item, item_ty in zip(cgutils.unpack_tuple(builder, value), ty)]
            else:
                values.append(context.cast(builder, value, ty, types.int64))
        function = ir.FunctionType(ir.IntType(64), [value.type for value in values])
        return builder.call(builder.inttoptr(args[0], function.as_pointer()), values)
    return types.int64(address, lines, count, x, x_at, taps, n_taps, w, w_at, bias, y, y_at), codegen


@nojit.python_twin(lambda: None)
@intrinsic
def store_fence(typingctx):
    """A full memory fence: non-temporal stores are ordered by nothing weaker."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


def _codegen(target, dtype, n_vec, spread, group, distance):
    def codegen(context, builder, signature, args):
        _, _, _, _, remaining, x, x_at, taps, n_taps, w, w_at, bias, y, y_at = args
        x_at, y_at = cgutils.unpack_tuple(builder, x_at), cgutils.unpack_tuple(builder, y_at)
        w_base, bias_base = cgutils.unpack_tuple(builder, w_at)
        data = {"x": x, "w": w, "bias": bias, "y": y}  # pointers (`_compiled_lines`)
        emit = Emitter(builder, target, dtype, spread, group, distance)
        return emit.tile(n_vec, remaining, data, taps, n_taps, x_at, w_base, y_at, bias_base)
    return codegen


def tile_module(target, dtype, n_vec, spread, group, distance):
    """The bodies `fma_tile` compiles for (V, K, G, D), as the function `tile` of a module of their
    own for `target`: (remaining, x, x_base, x_step, x_next, taps, n_taps, w, w_base, bias, bias_base, y,
    y_base, y_step, channels, mode), pointers and 64-bit integers, -> pixels."""
    module = ir.Module("tile")
    module.triple = target.triple
    i64, array = ir.IntType(64), ELEMENTS[np.dtype(str(dtype)).itemsize].as_pointer()
    params = [i64, array, i64, i64, i64, i64.as_pointer(), i64, array, i64, array, i64, array, i64, i64, i64, i64]
    function = ir.Function(module, ir.FunctionType(i64, params), "tile")
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    (remaining, x, x_base, x_step, x_next, taps, n_taps, w, w_base, bias, bias_base, y, *y_at) = function.args
    data = {"x": x, "w": w, "bias": bias, "y": y}
    emit = Emitter(builder, target, dtype, spread, group, distance)
    builder.ret(emit.tile(n_vec, remaining, data, taps, n_taps, (x_base, x_step, x_next), w_base, y_at, bias_base))
    return module


