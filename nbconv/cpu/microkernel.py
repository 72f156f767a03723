"""Register-blocked FMA micro-kernels, emitted as LLVM vector IR (LLVM will not block registers for us
from plain loops: DESIGN.md §5).

``fma_tile(vectors, spread, group, phased, P, x, (x_base, x_step), taps, n_taps, w, (w_base, bias_base),
bias, y, (y_base, y_step, channels, prefetch))`` computes P output pixels x V vectors of LANES lanes, held as
P * V accumulators in vector registers across the whole reduction, and stores them plus the bias;
V, K, G and D are given by the types of `vectors`, `spread`, `group` and `phased`, tuples of as many
zeros. Lane l of vector v computes

    bias[bias_base + v * LANES + l] + sum over the taps t < n_taps, over
        i < taps[t, 2] of x[x_base + taps[t, 0] + p * x_step + i * S + v * D + l % K]
                          * w[w_base + taps[t, 1] + i * V * LANES + v * LANES + l]

K input values are spread over the lanes: K = 1 broadcasts one input to every output channel (dense
and grouped convolutions; the V vectors share their inputs, S = 1). With K > 1 lane l = c * K + j
serves output channel c of slot j, G channels per slot. Slots are groups (D = 1 in `phased`, taken
as K: small groups; depthwise with K = LANES, where x is read as whole vectors): each vector has its
own K groups, the V * K inputs of one reduction step side by side in x (S = V * K; `group_inputs`
interleaves them). Or slots are input phases (D > 1: the group's input channels): each vector is one
group, lane c * K + j summing its inputs j, j + K, j + 2K... (S = K), so x needs no interleaving.
Only x_step is a run-time stride, so a pixel needs one address register.

Pixel p's channels go to y[y_base + p * y_step + c] for c < channels, in order: a K = 1 vector v holds
c = v * LANES + l; a vector of K groups is reordered group by group (c = v * K * G + j * G + c'); a
vector of K phases adds them up (c = v * G + c'). Masked stores write no further than `channels`, so
a partial block needs no scratch tile. With `prefetch` set, the body first prefetches the lines it will
store to, for writing (`_Emitter.prefetch_out`).

Vectors are 512 bits (16 float32 or 8 float64 lanes, ``llvm.fma.v16f32`` / ``v8f64``): this CPU has
two 512-bit FMA pipes and 32 vector registers. Each (V, K, G, D) compiles separately, with only its own
bodies. P is a run-time value: the IR holds one unrolled body per pixel count of VARIANTS[V] behind a
switch; with K = LANES, bodies of 4 to SLIDING_PIXELS pixels also hold a sliding-window variant,
taken when x_step = S (`_Emitter.slide`). `bias` must have V * LANES readable values from `bias_base`.
"""
from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 64

# Pixel counts per vector count: the largest keeps P * V accumulators and V weight vectors within the
# 32 registers; the powers of two below it cover the ends of rows and columns (28 = 12 + 12 + 4, a
# column of 8 in one call) without falling back to one pixel at a time.
VARIANTS = {1: (16, 8, 4, 2, 1), 2: (12, 8, 4, 2, 1), 3: (8, 4, 2, 1), 4: (6, 4, 2, 1)}
FMA_CHAINS = 8
# Taps of this many reduction steps or more first prefetch the next tap's inputs, PREFETCH_LINES cache
# lines per pixel (see `_Emitter.prefetch_next`); shorter taps spent more on the prefetches than they saved.
PREFETCH_STEPS = 16
PREFETCH_LINES = 2
# Most pixels of a sliding-window body: their accumulators and input windows take 2 registers each.
SLIDING_PIXELS = 12
# VARIANTS as a table for compiled code: row V - 1, descending, padded with 1.
_CHOICES = np.array([counts + (1,) * (5 - len(counts)) for counts in VARIANTS.values()], np.int64)


@lru_cache(maxsize=16)
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


@intrinsic
def fma_tile(typingctx, vectors, spread, group, phased, pixels, x, x_at, taps, n_taps, w, w_at, bias, y, y_at):
    sig = types.void(vectors, spread, group, phased, pixels, x, x_at, taps, n_taps, w, w_at, bias, y, y_at)
    return sig, _codegen(x.dtype, vectors.count, spread.count, group.count, phased.count)


def _codegen(dtype, n_vec, spread, group, distance):
    def codegen(context, builder, signature, args):
        tys = signature.args
        _, _, _, _, pixels, x, x_at, taps, n_taps, w, w_at, bias, y, y_at = args
        x_at, y_at = cgutils.unpack_tuple(builder, x_at), cgutils.unpack_tuple(builder, y_at)
        w_base, bias_base = cgutils.unpack_tuple(builder, w_at)
        emit = _Emitter(context, builder, dtype, spread, group, distance)
        data = {name: context.make_array(tys[i])(context, builder, args[i]).data
                for name, i in (("x", 5), ("w", 9), ("bias", 11), ("y", 12))}
        taps_ary = context.make_array(tys[7])(context, builder, taps)
        done = builder.append_basic_block("fma_done")
        switch = builder.switch(pixels, done)
        for n_pix in VARIANTS[n_vec]:
            block = builder.append_basic_block(f"fma_v{n_vec}_p{n_pix}")
            switch.add_case(ir.Constant(pixels.type, n_pix), block)
            builder.position_at_end(block)
            emit.body(n_vec, n_pix, data, taps_ary.data, n_taps, x_at, w_base, y_at, bias_base)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()
    return codegen


class _Emitter:
    """IR for one (V, P) body: accumulate over the taps, then add the bias and store."""

    def __init__(self, context, builder, dtype, spread, group, distance):
        self.builder = builder
        self.spread = spread
        self.group = group
        self.phased = distance > 1
        # x distance between the inputs of consecutive vectors
        self.distance = distance if self.phased else spread
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

    def load_spread(self, ptr, index):
        """K values from ptr[index], repeated over the lanes (lane l gets value l % K): a broadcast
        for K = 1, a plain vector load for K = LANES."""
        b, k = self.builder, self.spread
        part = ir.VectorType(self.vec.element, k)
        values = b.load(b.bitcast(b.gep(ptr, [index]), part.as_pointer()), align=self.align)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), self.width), [lane % k for lane in range(self.width)])
        return b.shuffle_vector(values, ir.Constant(part, ir.Undefined), mask)

    def body(self, n_vec, n_pix, data, taps, n_taps, x_at, w_base, y_at, bias_base):
        b, c = self.builder, self.const
        x_base, x_step = x_at
        # An FMA waits ~4 cycles for its accumulator and two issue per cycle, so 8 independent chains
        # keep the pipes full; small blocks (row ends) get extra accumulator sets, used in turn by
        # consecutive reduction steps and summed at the end.
        sets = max(1, FMA_CHAINS // (n_pix * n_vec))
        acc = [[[cgutils.alloca_once_value(b, ir.Constant(self.vec, None)) for _ in range(n_vec)]
                for _ in range(n_pix)] for _ in range(sets)]
        with b.if_then(b.icmp_signed("!=", y_at[3], c(0))):
            self.prefetch_out(data["y"], y_at, n_vec, n_pix)
        if self.spread == self.width and not self.phased and 4 <= n_pix <= SLIDING_PIXELS:
            # Whole-vector inputs one reduction step apart (stride-1 depthwise rows): slide a window.
            slides = b.icmp_signed("==", x_step, c(n_vec * self.spread))
            with b.if_else(slides) as (window, plain):
                with window:
                    self.slide(acc[0], n_vec, n_pix, data, taps, n_taps, x_base, w_base)
                with plain:
                    self.accumulate(acc, n_vec, n_pix, data, taps, n_taps, x_at, w_base)
        else:
            self.accumulate(acc, n_vec, n_pix, data, taps, n_taps, x_at, w_base)
        self.store(acc, n_vec, n_pix, data, y_at, bias_base)

    def accumulate(self, acc, n_vec, n_pix, data, taps, n_taps, x_at, w_base):
        """acc[set][p][v] += the taps' products, reduction steps dealt to the accumulator sets in turn."""
        b, c, sets = self.builder, self.const, len(acc)
        x_base, x_step = x_at
        with cgutils.for_range(b, n_taps) as tap:
            x_tap, w_tap, length = self.tap_entry(taps, tap.index, x_base, w_base)
            with b.if_then(b.icmp_signed(">=", length, c(PREFETCH_STEPS))):
                self.prefetch_next(taps, tap.index, n_taps, data["x"], x_at, n_pix)
            operands = (data, x_tap, x_step, w_tap, n_vec, n_pix)
            unrolled = b.sub(length, b.srem(length, c(sets)))
            with cgutils.for_range_slice(b, c(0), unrolled, c(sets)) as (step, _):
                for k in range(sets):
                    self.step(acc[k], b.add(step, c(k)), *operands)
            with cgutils.for_range_slice(b, unrolled, length, c(1)) as (step, _):
                self.step(acc[0], step, *operands)

    def prefetch_next(self, taps, t, n_taps, x, x_at, n_pix):
        """Prefetch the first lines of every pixel's inputs for tap t + 1 into L1. A tap starts P new
        input streams, one per pixel, whose first loads the hardware prefetcher does not foresee;
        issued a whole tap ahead, they arrive in time (dilated_r2: one thread 1.09x, two 1.03x)."""
        b, c = self.builder, self.const
        following = b.add(t, c(1))
        with b.if_then(b.icmp_signed("<", following, n_taps)):
            x_base, x_step = x_at
            start = b.add(x_base, b.load(b.gep(taps, [b.mul(following, c(3))])))
            for p in range(n_pix):
                pixel = b.add(start, b.mul(x_step, c(p)))
                for line in range(PREFETCH_LINES):
                    self.prefetch(x, b.add(pixel, c(line * self.width)), write=False)

    def prefetch_out(self, y, y_at, n_vec, n_pix):
        """Prefetch, for writing, the output lines this body will store to: the stores then find their
        lines owned instead of waiting for them when the body ends. It pays where the stores, not the
        FMAs, are the work and the result is too large to stay cached between calls (depthwise_c64 and
        video_c3: 1.11x and 1.2x on two threads), and costs a few percent elsewhere, so the caller
        asks for it."""
        b, c = self.builder, self.const
        y_base, y_step = y_at[:2]
        for p in range(n_pix):
            pixel = b.add(y_base, b.mul(y_step, c(p)))
            for v in range(n_vec):
                self.prefetch(y, b.add(pixel, c(v * self.stored)), write=True)

    def prefetch(self, ptr, index, write):
        """llvm.prefetch of ptr[index] into every cache level."""
        b = self.builder
        byte_ptr = ir.IntType(8).as_pointer()
        declared = cgutils.get_or_insert_function(b.module, ir.FunctionType(
            ir.VoidType(), [byte_ptr] + [ir.IntType(32)] * 3), "llvm.prefetch.p0")
        # (read 0 / write 1, locality 3: keep in all levels, 1: data)
        hints = [ir.Constant(ir.IntType(32), value) for value in (int(write), 3, 1)]
        b.call(declared, [b.bitcast(b.gep(ptr, [index]), byte_ptr), *hints])

    def tap_entry(self, taps, t, x_base, w_base):
        """Tap t's first x and packed-weight offsets (from x_base, w_base) and its length."""
        b = self.builder
        x_off, w_off, length = (b.load(b.gep(taps, [b.add(b.mul(t, self.const(3)), self.const(j))]))
                                for j in range(3))
        return b.add(x_base, x_off), b.add(w_base, w_off), length

    def slide(self, acc, n_vec, n_pix, data, taps, n_taps, x_base, w_base):
        """acc[p][v] += the taps' products when pixel p + 1 reads at step i what pixel p reads at step
        i + 1 (x_step = S, K = LANES): a window of P input vectors per vector moves one step at a time,
        so a step loads one input instead of P (an FMA with a memory operand per pixel and step made
        the L1 loads, not the FMAs, the limit). A few vectors at a time keep their SLIDING_PIXELS
        accumulators and windows in registers."""
        b, c, width, k = self.builder, self.const, self.width, self.spread
        window = [[cgutils.alloca_once(b, self.vec) for _ in range(n_vec)] for _ in range(n_pix)]
        together = max(1, SLIDING_PIXELS // n_pix)
        for first_v in range(0, n_vec, together):
            vs = range(first_v, min(n_vec, first_v + together))
            with cgutils.for_range(b, n_taps) as tap:
                x_tap, w_tap, length = self.tap_entry(taps, tap.index, x_base, w_base)
                for p in range(n_pix - 1):
                    for v in vs:
                        b.store(self.load_vector(data["x"], b.add(x_tap, c(p * n_vec * k + v * k))), window[p][v])
                with cgutils.for_range(b, length) as step:
                    newest = b.add(x_tap, b.mul(b.add(step.index, c(n_pix - 1)), c(n_vec * k)))
                    w_row = b.add(w_tap, b.mul(step.index, c(n_vec * width)))
                    for v in vs:
                        b.store(self.load_vector(data["x"], b.add(newest, c(v * k))), window[n_pix - 1][v])
                        weight = self.load_vector(data["w"], b.add(w_row, c(v * width)))
                        for p in range(n_pix):
                            b.store(b.call(self.fma, [b.load(window[p][v]), weight, b.load(acc[p][v])]), acc[p][v])
                        for p in range(n_pix - 1):
                            b.store(b.load(window[p + 1][v]), window[p][v])

    def store(self, acc, n_vec, n_pix, data, y_at, bias_base):
        """y = the sum of the accumulator sets + bias, through the store mask."""
        b, c = self.builder, self.const
        y_base, y_step, channels, _ = y_at
        sets = len(acc)
        width, stored = self.width, self.stored
        for v in range(n_vec):
            shift = self.load_vector(data["bias"], b.add(bias_base, c(v * width)))
            mask = self.store_mask(b.sub(channels, c(v * stored)))
            for p in range(n_pix):
                total = b.load(acc[0][p][v])
                for k in range(1, sets):
                    total = b.fadd(total, b.load(acc[k][p][v]))
                at = b.add(b.add(y_base, b.mul(y_step, c(p))), c(v * stored))
                self.store_channels(b.fadd(total, shift), data["y"], at, mask)

    @property
    def stored(self):
        """Output channels one vector holds: LANES, its K groups of G, or the G of its group."""
        return self.width if self.spread == 1 else self.group if self.phased else self.spread * self.group

    def store_mask(self, left):
        """Lanes to store of a vector whose channels start `left` before the end of the block."""
        b, width = self.builder, self.width
        limit = b.select(b.icmp_signed("<", left, self.const(self.stored)), left, self.const(self.stored))
        lanes_ = ir.Constant(ir.VectorType(ir.IntType(64), width), list(range(width)))
        splat = b.shuffle_vector(b.insert_element(ir.Constant(lanes_.type, ir.Undefined), limit, self.const(0)),
                                 ir.Constant(lanes_.type, ir.Undefined),
                                 ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width))
        return b.icmp_signed("<", lanes_, splat)

    def store_channels(self, value, ptr, index, mask):
        """Store one vector's channels in order, only the lanes of `mask`: K > 1 lanes are reordered
        group by group, or their phases added up first."""
        b, k, g = self.builder, self.spread, self.group
        if self.phased:
            value = self.shuffle(self.add_phases(value), [pos * k if pos < g else 0 for pos in range(self.width)])
        elif k > 1:
            value = self.shuffle(value, [(pos % g) * k + pos // g if pos < k * g else 0 for pos in range(self.width)])
        address = b.bitcast(b.gep(ptr, [index]), self.vec.as_pointer())
        store = cgutils.get_or_insert_function(b.module, ir.FunctionType(
            ir.VoidType(), [self.vec, self.vec.as_pointer(), ir.IntType(32), mask.type]),
            f"llvm.masked.store.v{self.width}f{8 * self.align}.p0")
        b.call(store, [value, address, ir.Constant(ir.IntType(32), self.align), mask])

    def add_phases(self, value):
        """Lane c * K of the result = the sum of lanes c * K ... c * K + K - 1 (K a power of two:
        butterflies of distance 1, 2, 4...)."""
        distance = 1
        while distance < self.spread:
            value = self.builder.fadd(value, self.shuffle(value, [lane ^ distance for lane in range(self.width)]))
            distance *= 2
        return value

    def shuffle(self, value, order):
        return self.builder.shuffle_vector(value, ir.Constant(self.vec, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), self.width), order))

    def step(self, acc, i, data, x_first, x_step, w_first, n_vec, n_pix):
        """One reduction element `i` of the current tap into the P x V accumulators `acc`."""
        b, c, width, k = self.builder, self.const, self.width, self.spread
        w_row = b.add(w_first, b.mul(i, c(n_vec * width)))
        weights = [self.load_vector(data["w"], b.add(w_row, c(v * width))) for v in range(n_vec)]
        x_row = b.add(x_first, b.mul(i, c(1 if k == 1 else k if self.phased else n_vec * k)))
        for p in range(n_pix):
            at = b.add(x_row, b.mul(x_step, c(p)))
            # K = 1: one broadcast serves every vector; else vector v reads its own K inputs.
            values = [self.load_spread(data["x"], b.add(at, c(v * self.distance)))
                      for v in range(1 if k == 1 else n_vec)]
            for v in range(n_vec):
                b.store(b.call(self.fma, [values[0 if k == 1 else v], weights[v], b.load(acc[p][v])]), acc[p][v])
