"""The LLVM IR of the micro-kernel's bodies (`Emitter`): what `nbconv.cpu.microkernel` compiles, for
any compile target (`nbconv.cpu.target`). The formula the bodies compute is microkernel's docstring.
"""
from functools import partial

import numpy as np
from llvmlite import ir
from numba.core import cgutils

from nbconv.cpu.target import CACHE_LINE

# How a result is stored (the `mode` of y_at): plainly, its lines prefetched for writing, or streamed.
CACHED, PREFETCHED, STREAMED = 0, 1, 2
# Taps of this many reduction steps or more first prefetch the next tap's inputs, PREFETCH_LINES cache
# lines per pixel (see `Emitter.prefetch_next`); shorter taps spent more on the prefetches than they saved.
PREFETCH_STEPS = 16
PREFETCH_LINES = 2

ELEMENTS = {4: ir.FloatType(), 8: ir.DoubleType()}


def whole_inputs(width, spread, phased):
    """Whether a vector's inputs are whole vectors of x (K = LANES groups, not input phases)."""
    return spread == width and not phased


def stored_channels(width, spread, group, phased):
    """Output channels one vector holds: LANES, its K groups of G, or the G of its group."""
    return width if spread == 1 else group if phased else spread * group


def input_steps(n_vec, spread, phases):
    """(S, distance): how far x advances per reduction element, and from one vector's inputs to the
    next's: K = 1 broadcasts (D, 0); K input phases of a group of D inputs (K, D); K groups per
    vector, side by side (V * K, K)."""
    if spread == 1:
        return phases, 0
    return (spread, phases) if phases > 1 else (n_vec * spread, spread)


def splat(builder, vec, value):
    """`value` in every lane of the vector type `vec`."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count))


class Emitter:
    """IR for one (V, P) body: accumulate over the taps, then add the bias and store."""

    def __init__(self, builder, target, dtype, spread, group, distance):
        self.builder = builder
        self.target, self.blocking = target, target.blocking
        self.spread = spread
        self.group = group
        self.phases = distance  # D: the group's input channels with input phases, K = 1's step, else 1
        self.phased = distance > 1 and spread > 1
        self.width = target.lanes(dtype)
        self.align = np.dtype(str(dtype)).itemsize
        self.vec = ir.VectorType(ELEMENTS[self.align], self.width)
        name = f"llvm.fmuladd.v{self.width}f{8 * self.align}"
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vec, [self.vec] * 3), name)

    def tile(self, n_vec, remaining, data, taps, n_taps, x_at, w_base, y_at, bias_base):
        """The most pixels of the target's counts for n_vec vectors that `remaining` (>= 1) allows,
        and a switch on them to one body per count; -> that count. On targets that hold weights
        (`target.Blocking.held`), whole-vector inputs one step apart whose taps are short enough
        (`holds`) take bodies that hold them."""
        b = self.builder
        operands = (n_vec, data, taps, n_taps, x_at, w_base, y_at, bias_base)
        if not (self.whole and self.blocking.held):
            return self.switch(self.pixel_counts(n_vec), remaining, self.body, operands)
        pixels = cgutils.alloca_once(b, remaining.type)
        with b.if_else(self.holds(n_vec, taps, n_taps, x_at)) as (short, other):
            with short:
                b.store(self.switch(self.pixel_counts(n_vec, held=True), remaining, partial(self.body, held=True),
                                    operands), pixels)
            with other:
                b.store(self.switch(self.pixel_counts(n_vec), remaining, self.body, operands), pixels)
        return b.load(pixels)

    def switch(self, counts, remaining, body, operands):
        """The most of `counts` (largest first) that `remaining` allows, and a switch on it to
        body(n_vec, count, *rest) of each, operands = (n_vec, *rest); -> that count."""
        b, c = self.builder, self.const
        n_vec, *rest = operands
        pixels = c(1)
        for n_pix in reversed(counts):
            pixels = b.select(b.icmp_signed(">=", remaining, c(n_pix)), c(n_pix), pixels)
        done = b.append_basic_block("fma_done")
        switch = b.switch(pixels, done)
        for n_pix in counts:
            block = b.append_basic_block(f"fma_v{n_vec}_p{n_pix}")
            switch.add_case(ir.Constant(pixels.type, n_pix), block)
            b.position_at_end(block)
            body(n_vec, n_pix, *rest)
            b.branch(done)
        b.position_at_end(done)
        return pixels

    def holds(self, n_vec, taps, n_taps, x_at):
        """Whether pixels read one step apart (x_step = S) and the first tap has `held` steps or fewer:
        the taps of a depthwise row are as long as each other (KW, or the part of it inside the
        input). Longer taps slide a window, which loads fewer inputs for them (5x5x5 and 7x7x7 kernels
        ran slower held); `hold` is right for any length."""
        b, c = self.builder, self.const
        apart = self.steps_apart(n_vec, x_at[1])
        first = b.load(b.gep(taps, [c(2)]))  # taps holds a row's worth of entries even where n_taps = 0
        short = b.and_(b.icmp_signed(">", n_taps, c(0)), b.icmp_signed("<=", first, c(self.blocking.held)))
        return b.and_(apart, short)

    def steps_apart(self, n_vec, x_step):
        """Whether consecutive pixels read one reduction step apart (x_step = S: a stride-1 row of
        whole-vector inputs), so that pixel p + 1 reads at step i what pixel p reads at step i + 1."""
        return self.builder.icmp_signed("==", x_step, self.const(n_vec * self.spread))

    def pixel_counts(self, n_vec, held=False):
        return self.target.pixel_counts(n_vec, whole=self.whole, held=held)

    @property
    def whole(self):
        return whole_inputs(self.width, self.spread, self.phased)

    @property
    def own_inputs(self):
        """Whether each vector has inputs of its own (K > 1 groups, or whole vectors), so that a window of
        them can slide (`slide`)."""
        return self.spread > 1 and not self.phased

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

    def body(self, n_vec, n_pix, data, taps, n_taps, x_at, w_base, y_at, bias_base, held=False):
        """P pixels x n_vec vectors; `held`: whole-vector inputs one step apart, their weights held
        (`tile`)."""
        b, c = self.builder, self.const
        with b.if_then(b.icmp_signed("==", y_at[3], c(PREFETCHED))):
            self.prefetch_out(data["y"], y_at, n_vec, n_pix)
        operands = (n_vec, n_pix, data, taps, n_taps, x_at, w_base, y_at, bias_base)
        fewest, most = self.blocking.sliding
        if held:
            self.chunks(self.hold, self.together(n_vec, n_pix + self.blocking.held), *operands)
        elif self.own_inputs and fewest <= n_pix <= most:
            # Inputs one reduction step apart (stride-1 depthwise rows, the weight gradient's W taps):
            # slide a window.
            with b.if_else(self.steps_apart(n_vec, x_at[1])) as (window, plain):
                with window:
                    self.chunks(self.slide, self.together(n_vec, 2 * n_pix + 1), *operands)
                with plain:
                    self.chunks(self.accumulate, self.together(n_vec, n_pix + 1), *operands)
        else:
            self.chunks(self.accumulate, self.together(n_vec, n_pix + 1), *operands)

    def chunks(self, reduce, size, n_vec, n_pix, data, taps, n_taps, x_at, w_base, y_at, bias_base):
        """The n_vec vectors `size` at a time, in a loop (one pass where size = n_vec): reduce the taps
        into P x size accumulators, then store them. Every pass is the same code at other offsets, so
        a depthwise unit of 8 vectors costs the compiler one pass, not one per vector group."""
        b, c = self.builder, self.const
        # An FMA waits ~4 cycles for its accumulator and two issue per cycle, so 8 independent chains
        # keep the pipes full; small blocks (row ends) get extra accumulator sets, used in turn by
        # consecutive reduction steps and summed at the end (inputs loaded once use one).
        sets = 1 if reduce in (self.slide, self.hold) else max(1, self.blocking.chains // (n_pix * size))
        acc = [[[cgutils.alloca_once(b, self.vec) for _ in range(size)] for _ in range(n_pix)] for _ in range(sets)]
        x_base, x_step, x_next = x_at
        y_base, y_step, channels, mode = y_at
        with cgutils.for_range(b, c(n_vec // size)) as chunk:
            first = b.mul(chunk.index, c(size))
            for slot in (slot for rows in acc for row in rows for slot in row):
                b.store(ir.Constant(self.vec, None), slot)
            # Vector v's inputs are v * distance further in x (K = 1: shared), its weights and bias
            # v * LANES further, its channels v * stored further in y.
            x_first = b.add(x_base, b.mul(first, c(input_steps(n_vec, self.spread, self.phases)[1])))
            w_first = b.add(w_base, b.mul(first, c(self.width)))
            reduce(acc, n_vec, range(size), n_pix, data, taps, n_taps, (x_first, x_step, x_next), w_first)
            skipped = b.mul(first, c(self.stored))
            y_first = (b.add(y_base, skipped), y_step, b.sub(channels, skipped), mode)
            self.store(acc, size, n_pix, data, y_first, b.add(bias_base, b.mul(first, c(self.width))))

    def together(self, n_vec, per_vector):
        """Vectors reduced in one pass: all of them where they share their inputs. Vectors of
        whole-vector inputs (K = LANES) are independent, and a unit may have more of them than the
        registers hold at P pixels (a depthwise unit spans at least `target.WHOLE_VECTOR_BYTES` of
        channels, so that its taps merge): as many as leave `per_vector` registers to each (P
        accumulators and a weight; a sliding window P more; or the weights of `held` steps) beside
        one input (and, without FMA, the product), and divide n_vec. So are vectors of K < LANES groups
        (the weight gradient's units hold up to `weight_grad.MOST_VECTORS`; the forward's 2 fit)."""
        if not self.own_inputs:
            return n_vec
        most = max(1, min(n_vec, self.free_registers // per_vector))
        return max(size for size in range(1, most + 1) if n_vec % size == 0)

    @property
    def free_registers(self):
        """Vector registers for accumulators, weights and windows: all but the input (and, without
        FMA, the product) and the target's spare ones."""
        return self.target.registers - (1 if self.target.fma else 2) - self.blocking.spare

    def accumulate(self, acc, n_vec, vs, n_pix, data, taps, n_taps, x_at, w_base):
        """acc[set][p][v] += the taps' products for the vectors `vs` of n_vec (offsets from x_at and
        w_base), reduction steps dealt to the accumulator sets in turn."""
        b, c, sets = self.builder, self.const, len(acc)
        x_base, x_step, _ = x_at
        with cgutils.for_range(b, n_taps) as tap:
            x_tap, w_tap, length = self.tap_entry(taps, tap.index, x_base, w_base)
            with b.if_then(b.icmp_signed(">=", length, c(PREFETCH_STEPS))):
                self.prefetch_next(taps, tap.index, n_taps, data["x"], x_at, n_pix)
            operands = (data, x_tap, x_step, w_tap, n_vec, vs, n_pix)
            unrolled = b.sub(length, b.srem(length, c(sets)))
            with cgutils.for_range_slice(b, c(0), unrolled, c(sets)) as (step, _):
                for k in range(sets):
                    self.step(acc[k], b.add(step, c(k)), *operands)
            with cgutils.for_range_slice(b, unrolled, length, c(1)) as (step, _):
                self.step(acc[0], step, *operands)

    def prefetch_next(self, taps, t, n_taps, x, x_at, n_pix):
        """Prefetch the first lines of every pixel's inputs for tap t + 1 into L1. A tap starts P new
        input streams, one per pixel, whose first loads the hardware prefetcher does not foresee;
        issued a whole tap ahead, they arrive in time."""
        b, c = self.builder, self.const
        following = b.add(t, c(1))
        with b.if_then(b.icmp_signed("<", following, n_taps)):
            x_base, x_step, _ = x_at
            start = self.tap_entry(taps, following, x_base, c(0))[0]
            for p in range(n_pix):
                pixel = b.add(start, b.mul(x_step, c(p)))
                for line in range(PREFETCH_LINES):
                    self.prefetch(x, b.add(pixel, c(line * CACHE_LINE // self.align)), write=False)

    def prefetch_out(self, y, y_at, n_vec, n_pix):
        """Prefetch, for writing, the output lines this body will store to: the stores then find their
        lines owned instead of waiting for them when the body ends. It pays where the stores, not the
        FMAs, are the work and the result is too large to stay cached between calls, and costs a few
        percent elsewhere, so the caller asks for it."""
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

    def slide(self, acc, n_vec, vs, n_pix, data, taps, n_taps, x_at, w_base):
        """acc[0][p][v] += the taps' products for the vectors `vs` of n_vec when pixel p + 1 reads at
        step i what pixel p reads at step i + 1 (x_step = S, K > 1): a window of P input vectors per
        vector moves one step at a time, so a step loads one input instead of P (an FMA with a memory
        operand per pixel and step made the L1 loads, not the FMAs, the limit; K < LANES groups load
        and spread their K inputs once, not once per pixel)."""
        b, c, width, k = self.builder, self.const, self.width, self.spread
        acc = acc[0]
        window = [[cgutils.alloca_once(b, self.vec) for _ in vs] for _ in range(n_pix)]
        with cgutils.for_range(b, n_taps) as tap:
            x_tap, w_tap, length = self.row_tap(taps, tap.index, n_taps, x_at, w_base, data["x"], n_vec, vs, n_pix)
            for p in range(n_pix - 1):
                for v in vs:
                    b.store(self.load_spread(data["x"], b.add(x_tap, c(p * n_vec * k + v * k))), window[p][v])
            with cgutils.for_range(b, length) as step:
                newest = b.add(x_tap, b.mul(b.add(step.index, c(n_pix - 1)), c(n_vec * k)))
                w_row = b.add(w_tap, b.mul(step.index, c(n_vec * width)))
                for v in vs:
                    b.store(self.load_spread(data["x"], b.add(newest, c(v * k))), window[n_pix - 1][v])
                    weight = self.load_vector(data["w"], b.add(w_row, c(v * width)))
                    for p in range(n_pix):
                        b.store(b.call(self.fma, [b.load(window[p][v]), weight, b.load(acc[p][v])]), acc[p][v])
                    for p in range(n_pix - 1):
                        b.store(b.load(window[p + 1][v]), window[p][v])

    def hold(self, acc, n_vec, vs, n_pix, data, taps, n_taps, x_at, w_base):
        """acc[0][p][v] += the taps' products for the vectors `vs` of n_vec when pixel p + 1 reads at
        step i what pixel p reads at step i + 1 (x_step = S, K = LANES), `held` = H steps at a time:
        their H weights held in registers, each of their P + H - 1 input vectors loaded once and
        multiplied into every pixel it serves. As many loads as a sliding window's where a tap has
        H steps or fewer (a 3x3x3 kernel's rows), and no window to shift: the registers it would take
        hold more vectors instead (`target.Blocking.held`)."""
        b, c, held = self.builder, self.const, self.blocking.held
        with cgutils.for_range(b, n_taps) as tap:
            x_tap, w_tap, length = self.row_tap(taps, tap.index, n_taps, x_at, w_base, data["x"], n_vec, vs, n_pix)
            # Runs of H steps, the last of those left, in one loop whose body switches on the run's
            # length (with whole runs in a loop and the rest after it, LLVM unrolled that loop twice,
            # and a vector of 8 pixels spilled).
            with cgutils.for_range_slice(b, c(0), length, c(held)) as (first, _):
                at = (b.add(x_tap, b.mul(first, c(n_vec * self.spread))),
                      b.add(w_tap, b.mul(first, c(n_vec * self.width))))
                self.switch(range(held, 0, -1), b.sub(length, first),
                            lambda _, steps: self.serve(acc[0], steps, n_vec, vs, n_pix, data, *at), (n_vec,))

    def serve(self, acc, steps, n_vec, vs, n_pix, data, x_first, w_first):
        """acc[p][v] += the products of `steps` reduction steps from x_first and w_first whose pixels
        read one step apart: input j serves pixel j - s at step s."""
        b, c, width, k = self.builder, self.const, self.width, self.spread
        for v in vs:
            weights = [self.load_vector(data["w"], b.add(w_first, c((s * n_vec + v) * width))) for s in range(steps)]
            for j in range(n_pix + steps - 1):
                value = self.load_vector(data["x"], b.add(x_first, c((j * n_vec + v) * k)))
                for s in range(max(0, j - n_pix + 1), min(steps, j + 1)):
                    b.store(b.call(self.fma, [value, weights[s], b.load(acc[j - s][v])]), acc[j - s][v])

    def row_tap(self, taps, t, n_taps, x_at, w_base, x, n_vec, vs, n_pix):
        """`tap_entry` of tap t where pixels read one step apart (`slide`, `hold`), after prefetching
        the inputs of the vectors `vs` that the next call reads through this tap and no tap of this
        call does (`new_next`)."""
        b = self.builder
        x_tap, w_tap, length = self.tap_entry(taps, t, x_at[0], w_base)
        with b.if_then(self.new_next(taps, t, n_taps, x_at, x_tap)):
            self.prefetch_window(x, b.add(x_tap, x_at[2]), b.add(length, self.const(n_pix - 1)), n_vec, vs)
        return x_tap, w_tap, length

    def new_next(self, taps, t, n_taps, x_at, x_tap):
        """Whether tap t's inputs in the next call (x_next = x_at[2] further, 0: none; this call's at
        x_tap) are new: not those of this call's next tap (a 3x3x3 kernel's next row reads 6 of its 9
        rows now), which is in L1 by then."""
        b, c = self.builder, self.const
        x_base, _, x_next = x_at
        following = b.add(t, c(1))
        last = b.icmp_signed(">=", following, n_taps)
        # (tap t itself where there is no next one: then `last` decides)
        x_following = self.tap_entry(taps, b.select(last, t, following), x_base, c(0))[0]
        new = b.or_(last, b.icmp_signed("!=", b.sub(x_following, x_tap), x_next))
        return b.and_(b.icmp_signed("!=", x_next, c(0)), new)

    def prefetch_window(self, x, first, positions, n_vec, vs):
        """Prefetch the vectors `vs` at `positions` consecutive window positions from x[first]: a tap's
        inputs in the next call, which reads the next line of pixels (x_next further), where no tap of
        this call reads them (`new_next`). A 3x3x3 kernel's next line finds 6 of its 9 input rows in L1,
        but each of the other 3 taps starts an input stream that the hardware does not foresee. Issued
        tap by tap, they arrive while this call computes. Only those taps' are prefetched: every tap's
        would mostly be lines already in L1, extra loads that ran slower on two threads."""
        b, c, k = self.builder, self.const, self.spread
        with cgutils.for_range(b, positions) as position:
            at = b.add(first, b.mul(position.index, c(n_vec * k)))
            for v in vs:
                self.prefetch(x, b.add(at, c(v * k)), write=False)

    def store(self, acc, n_vec, n_pix, data, y_at, bias_base):
        """y = the sum of the accumulator sets + bias. A vector whose channels are all in the block is
        stored plainly (or streamed, in mode STREAMED); a partial one through the store mask. (AVX2's
        masked store, vmaskmovps, takes several times as long as a plain one on AMD cores, so only
        partial vectors take it. AVX-512's mask registers cost nothing.)"""
        b, c = self.builder, self.const
        y_base, y_step, channels, mode = y_at
        sets = len(acc)
        width, stored = self.width, self.stored
        for v in range(n_vec):
            shift = self.load_vector(data["bias"], b.add(bias_base, c(v * width)))
            left = b.sub(channels, c(v * stored))
            results = []
            for p in range(n_pix):
                total = b.load(acc[0][p][v])
                for k in range(1, sets):
                    total = b.fadd(total, b.load(acc[k][p][v]))
                at = b.add(b.add(y_base, b.mul(y_step, c(p))), c(v * stored))
                results.append((self.in_order(b.fadd(total, shift)), at))
            with b.if_else(b.icmp_signed(">=", left, c(stored))) as (whole, part):
                with whole:
                    if stored < width:  # never streamed: such vectors are not aligned
                        self.storewhole(results, data["y"], streamed=False)
                    else:
                        with b.if_else(b.icmp_signed("==", mode, c(STREAMED))) as (streamed, cached):
                            with streamed:
                                self.storewhole(results, data["y"], streamed=True)
                            with cached:
                                self.storewhole(results, data["y"], streamed=False)
                with part:
                    self.store_masked(results, data["y"], self.store_mask(left))

    @property
    def stored(self):
        return stored_channels(self.width, self.spread, self.group, self.phased)

    def store_mask(self, left):
        """Lanes to store of a vector whose channels start `left` before the end of the block."""
        b, width = self.builder, self.width
        limit = b.select(b.icmp_signed("<", left, self.const(self.stored)), left, self.const(self.stored))
        lanes_ = ir.Constant(ir.VectorType(ir.IntType(64), width), list(range(width)))
        return b.icmp_signed("<", lanes_, splat(b, lanes_.type, limit))

    def in_order(self, value):
        """A vector's channels in order in its first lanes: K > 1 lanes reordered group by group, or
        their phases added up first."""
        k, g = self.spread, self.group
        if self.phased:
            return self.shuffle(self.add_phases(value), [pos * k if pos < g else 0 for pos in range(self.width)])
        if k > 1:
            return self.shuffle(value, [(pos % g) * k + pos // g if pos < k * g else 0 for pos in range(self.width)])
        return value

    def storewhole(self, results, ptr, streamed):
        """Store the first `stored` lanes of each (value, index) plainly; `streamed`: whole aligned
        vectors, as non-temporal stores."""
        b, stored = self.builder, self.stored
        part = ir.VectorType(self.vec.element, stored)
        for value, index in results:
            if stored < self.width:
                value = b.shuffle_vector(value, ir.Constant(self.vec, ir.Undefined),
                                         ir.Constant(ir.VectorType(ir.IntType(32), stored), list(range(stored))))
            address = b.bitcast(b.gep(ptr, [index]), part.as_pointer())
            if streamed:
                store = b.store(value, address, align=self.align * self.width)
                store.set_metadata("nontemporal", b.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            else:
                b.store(value, address, align=self.align)

    def store_masked(self, results, ptr, mask):
        """Store the lanes of `mask` of each (value, index)."""
        b = self.builder
        store = cgutils.get_or_insert_function(b.module, ir.FunctionType(
            ir.VoidType(), [self.vec, self.vec.as_pointer(), ir.IntType(32), mask.type]),
            f"llvm.masked.store.v{self.width}f{8 * self.align}.p0")
        for value, index in results:
            address = b.bitcast(b.gep(ptr, [index]), self.vec.as_pointer())
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

    def step(self, acc, i, data, x_first, x_step, w_first, n_vec, vs, n_pix):
        """One reduction element `i` of the current tap into the accumulators acc[p][v], v in `vs` of
        the n_vec vectors."""
        b, c, width, k = self.builder, self.const, self.width, self.spread
        w_row = b.add(w_first, b.mul(i, c(n_vec * width)))
        weights = {v: self.load_vector(data["w"], b.add(w_row, c(v * width))) for v in vs}
        element, apart = input_steps(n_vec, k, self.phases)
        x_row = b.add(x_first, b.mul(i, c(element)))
        for p in range(n_pix):
            at = b.add(x_row, b.mul(x_step, c(p)))
            # K = 1: one broadcast serves every vector; else vector v reads its own K inputs.
            broadcast = self.load_spread(data["x"], at) if k == 1 else None
            for v in vs:
                value = broadcast or self.load_spread(data["x"], b.add(at, c(v * apart)))
                b.store(b.call(self.fma, [value, weights[v], b.load(acc[p][v])]), acc[p][v])
