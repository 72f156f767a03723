"""CUDA kernels for conv3d, its weight gradient and the weight standardization, one set per float type
(docs/design.md, "The CUDA kernels").

Dense and large-group convolutions (`conv_tiled`) run as an implicit GEMM: a block of 16 x 16 threads
computes a TILE_P x TILE_C tile (64 output pixels x 64 output channels of one group); each thread holds
RP x RC = 4 x 4 accumulators in registers. The reduction (kernel taps x input channels of the group)
advances KC = 16 at a time through two shared-memory tiles: the input values the 64 pixels read
through those taps (gathered through the tap tables, 0 for padding and dilation holes) and the
matching 16 x 64 weights. Per KC step a thread does 16 * 16 FMAs for 16 * 8 shared loads. Taps on
padding or holes form no product: a block that staged a non-finite weight (`syncthreads_or`) skips
the staged zeros in a second loop (`accumulate`), so 0 * inf never makes a NaN the reference lacks.

The weight gradient of the same layers (`weight_grad_tiled`) is that GEMM with the roles exchanged:
64 (tap, input channel) rows x 64 output channels, the reduction over output pixels; for depthwise
and small groups, `weight_grad_channels` has one thread per weight element. Both write a partial
result per split of the pixels (grid z), which `sum_splits` adds in order.

Depthwise and small groups (`conv_channels`) are memory-bound: one thread per (RW = 4 consecutive
output pixels along W, output channel), channels fastest across threads so that loads of x, w and the
stores of y coalesce, each weight loaded once per tap and used for 4 outputs.

Pixel and element indices are int64, so tensors above 2^31 elements index correctly. Every constant
is cast to the kernel's float type: a float64 literal would silently promote float32 arithmetic.
"""
import math
from typing import NamedTuple

from numba import config, cuda, float32, float64, int8, int32, int64
from numba.types import float16

TILE_P = 64  # output pixels per block (threadIdx.y covers them, RP each)
TILE_C = 64  # output channels per block (threadIdx.x covers them, RC each, strided by THREADS_X)
KC = 16  # reduction step staged in shared memory
A_COLS = TILE_P + 1  # padded row of the input tile: the column-wise writes then hit 16 banks, not 1
THREADS_X = 16
THREADS_Y = 16
THREADS = THREADS_X * THREADS_Y
RP = TILE_P // THREADS_Y
RC = TILE_C // THREADS_X
A_LOADS = KC * TILE_P // THREADS  # input values each thread stages per step
B_LOADS = KC * TILE_C // THREADS
RW = 4  # output pixels along W per thread in conv_channels
CHANNEL_BLOCK = 128  # threads per block in conv_channels
# Launch bounds per float width, (threads per block, blocks per SM wanted): they cap registers at
# 65536 / (threads * blocks). float32: <= 128 registers, 2 GEMM blocks (16 warps) per SM; <= 64 for the
# memory-bound channel kernel, 32 warps per SM. float64 values take two registers each, so the caps
# that keep them out of local memory are 255 (1 GEMM block) and 85 (24 warps).
TILED_BOUNDS = {32: (THREADS, 2), 64: (THREADS, 2)}
CHANNELS_BOUNDS = {32: (CHANNEL_BLOCK, 8), 64: (CHANNEL_BLOCK, 6)}
WS_THREADS = 256  # most threads per output channel in the weight standardization (a power of 2)


class Kernels(NamedTuple):
    conv_tiled: object
    conv_channels: object
    weight_grad_tiled: object
    weight_grad_channels: object
    column_sums: object
    sum_splits: object
    standardize_columns: object


@cuda.jit(device=True, inline=True)
def channel_tile(cout, cin, cin_g):
    """(group, Cout / groups, the first channel within the group) of this block's TILE_C-channel tile:
    blockIdx.y counts the tiles of each group in turn."""
    cout_g = cout // (cin // cin_g)
    tiles_per_group = (cout_g + TILE_C - 1) // TILE_C
    return cuda.blockIdx.y // tiles_per_group, cout_g, (cuda.blockIdx.y % tiles_per_group) * TILE_C


@cuda.jit(device=True, inline=True)
def gather(x, idx_d, idx_h, idx_w, n, od, oh, ow, kd, kh, kw, c, zero):
    """(x[n, input pixel, c], 1) for output pixel (n, od, oh, ow) through tap (kd, kh, kw); (0, 0) for
    n < 0 (no pixel) and where the tap falls on padding or a hole of input dilation."""
    if n >= 0:
        i_d, i_h, i_w = idx_d[od, kd], idx_h[oh, kh], idx_w[ow, kw]
        if i_d >= 0 and i_h >= 0 and i_w >= 0:
            return x[n, i_d, i_h, i_w, c], 1
    return zero, 0


@cuda.jit(device=True, inline=True)
def stage(b_tile, b, row_first, row_end, col_first, col_end, tid, zero):
    """b_tile[k, j] = b[row_first + k, col_first + j], 0 from row_end or col_end on: the KC x TILE_C tile
    of a step, consecutive threads on consecutive columns (coalesced). Returns 1 if a value staged is
    not finite."""
    nonfinite = 0
    for m in range(B_LOADS):
        slot = tid + m * THREADS
        k, j = slot // TILE_C, slot % TILE_C
        value = zero
        if row_first + k < row_end and col_first + j < col_end:
            value = b[row_first + k, col_first + j]
            nonfinite |= not math.isfinite(value)
        b_tile[k, j] = value
    return nonfinite


@cuda.jit(device=True, inline=True)
def accumulate(acc, a_tile, a_real, b_tile, masked, ty, tx):
    """acc[i, j] += a_tile[k, row i] * b_tile[k, column j] over the KC steps staged: the tiled kernels'
    inner loop. Where the block staged a non-finite B value (`masked`, the same for all its threads),
    the A values that stand for padding or holes (a_real 0) form no product: 0 * inf would be NaN."""
    if masked:  # rare: a separate loop keeps the common one free of the test and its registers
        for k in range(KC):
            for i in range(RP):
                if a_real[k, ty * RP + i]:
                    a = a_tile[k, ty * RP + i]
                    for j in range(RC):
                        acc[i, j] += a * b_tile[k, tx + j * THREADS_X]
        return
    for k in range(KC):
        for i in range(RP):
            a = a_tile[k, ty * RP + i]
            for j in range(RC):
                acc[i, j] += a * b_tile[k, tx + j * THREADS_X]


def make_kernels(dtype):
    """The kernels for one float type (float32 or float64): shared and local arrays need it fixed."""
    zero = dtype(0)
    bits = dtype.bitwidth
    tiled_bounds, channels_bounds = _launch_bounds(TILED_BOUNDS[bits]), _launch_bounds(CHANNELS_BOUNDS[bits])

    @cuda.jit(fastmath=False, **tiled_bounds)
    def conv_tiled(x, w, bias, idx_d, idx_h, idx_w, out):
        """w: (taps * Cin / groups, Cout) view of the weights; out: (pixels, Cout) view of the
        (N, OD, OH, OW, Cout) result."""
        a_tile = cuda.shared.array((KC, A_COLS), dtype)
        a_real = cuda.shared.array((KC, A_COLS), int8)  # 0 where a_tile holds padding or a hole
        b_tile = cuda.shared.array((KC, TILE_C), dtype)
        acc = cuda.local.array((RP, RC), dtype)
        # The block's pixels, decomposed once into (n, od, oh, ow) and kept in shared memory rather
        # than registers (n = -1 past the end); one axis coordinate fits 32 bits.
        pixels = cuda.shared.array((1, 4, TILE_P), int32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        n_pix, cout = out.shape
        n_od, n_oh, n_ow = idx_d.shape[0], idx_h.shape[0], idx_w.shape[0]
        n_kd, n_kh, n_kw = idx_d.shape[1], idx_h.shape[1], idx_w.shape[1]
        reduction = w.shape[0]
        cin_g = reduction // (n_kd * n_kh * n_kw)
        group, cout_g, c_first = channel_tile(cout, x.shape[4], cin_g)
        c_group = group * cout_g  # the group's first output channel
        p_first = int64(cuda.blockIdx.x) * TILE_P
        if tid < TILE_P:
            _decompose(pixels, 0, tid, p_first + tid, n_pix, n_od, n_oh, n_ow)
        cuda.syncthreads()
        # Each thread stages reduction row `kk` for pixels tid // KC + m * (THREADS // KC).
        kk = tid % KC
        for i in range(RP):
            for j in range(RC):
                acc[i, j] = zero
        for k_first in range(0, reduction, KC):
            r = k_first + kk
            tap, ci = r // cin_g, r % cin_g
            kw = tap % n_kw
            kh = (tap // n_kw) % n_kh
            kd = tap // (n_kw * n_kh)
            for m in range(A_LOADS):
                pp = tid // KC + m * (THREADS // KC)
                n = pixels[0, 0, pp] if r < reduction else -1
                a_tile[kk, pp], a_real[kk, pp] = gather(x, idx_d, idx_h, idx_w, n, pixels[0, 1, pp], pixels[0, 2, pp],
                                                        pixels[0, 3, pp], kd, kh, kw, group * cin_g + ci, zero)
            nonfinite = stage(b_tile, w, k_first, reduction, c_group + c_first, c_group + cout_g, tid, zero)
            accumulate(acc, a_tile, a_real, b_tile, cuda.syncthreads_or(nonfinite), ty, tx)
            cuda.syncthreads()
        for i in range(RP):
            p = p_first + ty * RP + i
            for j in range(RC):
                c = c_first + tx + j * THREADS_X
                if p < n_pix and c < cout_g:
                    out[p, c_group + c] = acc[i, j] + bias[c_group + c]

    @cuda.jit(fastmath=False, **channels_bounds)
    def conv_channels(x, w, bias, idx_d, idx_h, idx_w, out):
        """out: (N, OD, OH, OW, Cout). Thread t -> channel t % Cout, then a run of RW pixels along W."""
        acc = cuda.local.array(RW, dtype)
        n_batch, n_od, n_oh, n_ow, cout = out.shape
        n_kd, n_kh, n_kw, cin_g = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
        cout_g = cout // (x.shape[4] // cin_g)
        runs = (n_ow + RW - 1) // RW
        t = int64(cuda.blockIdx.x) * CHANNEL_BLOCK + cuda.threadIdx.x
        co = t % cout
        rest = t // cout
        ow_first = (rest % runs) * RW
        rest //= runs
        oh = rest % n_oh
        rest //= n_oh
        od = rest % n_od
        n = rest // n_od
        if n >= n_batch:
            return
        c_in = (co // cout_g) * cin_g
        for j in range(RW):
            acc[j] = zero
        for kd in range(n_kd):
            i_d = idx_d[od, kd]
            for kh in range(n_kh):
                i_h = idx_h[oh, kh]
                if i_d < 0 or i_h < 0:
                    continue
                for kw in range(n_kw):
                    for ci in range(cin_g):
                        weight = w[kd, kh, kw, ci, co]
                        for j in range(RW):
                            ow = ow_first + j
                            if ow < n_ow:
                                i_w = idx_w[ow, kw]
                                if i_w >= 0:
                                    acc[j] += x[n, i_d, i_h, i_w, c_in + ci] * weight
        for j in range(RW):
            if ow_first + j < n_ow:
                out[n, od, oh, ow_first + j, co] = acc[j] + bias[co]

    @cuda.jit(fastmath=False, **tiled_bounds)
    def weight_grad_tiled(x, dy, idx_d, idx_h, idx_w, partial):
        """partial[z]: the weight gradient (taps * Cin / groups, Cout) over chunk z of the output pixels,
        an implicit GEMM like conv_tiled's with the roles exchanged: a TILE_P-row tile of (tap, input
        channel) rows by a TILE_C-channel tile of one group, the reduction running over KC pixels at a
        time; dy is (pixels, Cout)."""
        a_tile = cuda.shared.array((KC, TILE_P), dtype)  # a step's KC pixels x the block's rows
        a_real = cuda.shared.array((KC, TILE_P), int8)
        b_tile = cuda.shared.array((KC, TILE_C), dtype)
        acc = cuda.local.array((RP, RC), dtype)
        # The next step's pixels (n, od, oh, ow; n = -1 past the chunk), decomposed by KC threads while
        # the others compute: two buffers, so that no step needs a third barrier.
        pixels = cuda.shared.array((2, 4, KC), int32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        splits, n_rows, cout = partial.shape
        n_pix = dy.shape[0]
        n_od, n_oh, n_ow = idx_d.shape[0], idx_h.shape[0], idx_w.shape[0]
        n_kd, n_kh, n_kw = idx_d.shape[1], idx_h.shape[1], idx_w.shape[1]
        cin_g = n_rows // (n_kd * n_kh * n_kw)
        group, cout_g, c_first = channel_tile(cout, x.shape[4], cin_g)
        c_group = group * cout_g  # the group's first output channel
        chunk = ((n_pix + splits - 1) // splits + KC - 1) // KC * KC
        p_begin = int64(cuda.blockIdx.z) * chunk
        p_end = min(n_pix, p_begin + chunk)
        # Each thread stages one row (consecutive threads: consecutive input channels, coalesced).
        row = tid % TILE_P
        r = int64(cuda.blockIdx.x) * TILE_P + row
        tap, ci = r // cin_g, r % cin_g
        kw, kh, kd = tap % n_kw, (tap // n_kw) % n_kh, tap // (n_kw * n_kh)
        c_x = group * cin_g + ci
        if tid < KC:
            _decompose(pixels, 0, tid, p_begin + tid, p_end, n_od, n_oh, n_ow)
        for i in range(RP):
            for j in range(RC):
                acc[i, j] = zero
        cuda.syncthreads()
        buf = 0
        for p_first in range(p_begin, p_end, KC):
            for m in range(A_LOADS):
                kk = tid // TILE_P + m * (THREADS // TILE_P)
                n = pixels[buf, 0, kk] if r < n_rows else -1
                a_tile[kk, row], a_real[kk, row] = gather(x, idx_d, idx_h, idx_w, n, pixels[buf, 1, kk],
                                                          pixels[buf, 2, kk], pixels[buf, 3, kk], kd, kh, kw, c_x, zero)
            nonfinite = stage(b_tile, dy, p_first, p_end, c_group + c_first, c_group + cout_g, tid, zero)
            masked = cuda.syncthreads_or(nonfinite)
            if tid < KC:
                _decompose(pixels, 1 - buf, tid, p_first + KC + tid, p_end, n_od, n_oh, n_ow)
            accumulate(acc, a_tile, a_real, b_tile, masked, ty, tx)
            cuda.syncthreads()
            buf = 1 - buf
        for i in range(RP):
            r_out = int64(cuda.blockIdx.x) * TILE_P + ty * RP + i
            for j in range(RC):
                c = c_first + tx + j * THREADS_X
                if r_out < n_rows and c < cout_g:
                    partial[cuda.blockIdx.z, r_out, c_group + c] = acc[i, j]

    @cuda.jit(fastmath=False, **channels_bounds)
    def weight_grad_channels(x, dy, idx_d, idx_h, idx_w, partial):
        """partial[z]: the weight gradient (taps * Cin / groups, Cout) over chunk z of the output lines
        (n, od, oh); one thread per element, output channels fastest (coalesced x and dy)."""
        splits, n_rows, cout = partial.shape
        t = int64(cuda.blockIdx.x) * CHANNEL_BLOCK + cuda.threadIdx.x
        co, r = t % cout, t // cout
        if r >= n_rows:
            return
        n_od, n_oh, n_ow = idx_d.shape[0], idx_h.shape[0], idx_w.shape[0]
        n_kd, n_kh, n_kw = idx_d.shape[1], idx_h.shape[1], idx_w.shape[1]
        cin_g = n_rows // (n_kd * n_kh * n_kw)
        cout_g = cout // (x.shape[4] // cin_g)
        tap, ci = r // cin_g, r % cin_g
        kw, kh, kd = tap % n_kw, (tap // n_kw) % n_kh, tap // (n_kw * n_kh)
        c_x = (co // cout_g) * cin_g + ci
        lines = (dy.shape[0] // n_ow) if n_ow else 0
        chunk = (lines + splits - 1) // splits
        first = int64(cuda.blockIdx.y) * chunk
        total = zero
        for line in range(first, min(lines, first + chunk)):
            oh = line % n_oh
            rest = line // n_oh
            i_d, i_h = idx_d[rest % n_od, kd], idx_h[oh, kh]
            if i_d < 0 or i_h < 0:
                continue
            n = rest // n_od
            for ow in range(n_ow):
                i_w = idx_w[ow, kw]
                if i_w >= 0:
                    total += x[n, i_d, i_h, i_w, c_x] * dy[line * n_ow + ow, co]
        partial[cuda.blockIdx.y, r, co] = total

    @cuda.jit(fastmath=False)
    def column_sums(a, partial):
        """partial[z, 0, c]: the sum of column c of `a` over chunk z of its rows."""
        splits, _, cols = partial.shape
        c = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        if c >= cols:
            return
        chunk = (a.shape[0] + splits - 1) // splits
        first = int64(cuda.blockIdx.y) * chunk
        total = zero
        for i in range(first, min(a.shape[0], first + chunk)):
            total += a[i, c]
        partial[cuda.blockIdx.y, 0, c] = total

    @cuda.jit(fastmath=False)
    def sum_splits(partial, out):
        """out = partial.sum(axis=0), the splits added in order (the result does not depend on timing)."""
        t = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        if t >= out.size:
            return
        r, c = t // out.shape[1], t % out.shape[1]
        total = zero
        for z in range(partial.shape[0]):
            total += partial[z, r, c]
        out[r, c] = total

    @cuda.jit(fastmath=False)
    def standardize_columns(w, eps, gain, out):
        """One block per output channel c of the (fan_in, Cout) matrix w, of a power of 2 threads up to
        WS_THREADS. Two float64 tree reductions: the sum of w, then of the squared deviations."""
        partial = cuda.shared.array(WS_THREADS, float64)
        c = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        fan_in = w.shape[0]
        mean = float64(0)
        spread = float64(0)  # var * fan_in
        for stage in range(2):
            total = float64(0)
            for i in range(tid, fan_in, threads):
                d = float64(w[i, c]) - mean
                total += d if stage == 0 else d * d
            partial[tid] = total
            cuda.syncthreads()
            stride = threads // 2
            while stride > 0:
                if tid < stride:
                    partial[tid] += partial[tid + stride]
                cuda.syncthreads()
                stride //= 2
            if stage == 0:
                mean = partial[0] / fan_in
            else:
                spread = partial[0]
            cuda.syncthreads()
        if not spread > eps and spread == spread:  # NaN passes through, as in jnp.maximum
            spread = eps
        scale = float64(gain[c]) / math.sqrt(spread)
        shift = mean * scale
        for i in range(tid, fan_in, threads):
            out[i, c] = float64(w[i, c]) * scale - shift

    return Kernels(conv_tiled, conv_channels, weight_grad_tiled, weight_grad_channels, column_sums, sum_splits,
                   standardize_columns)


@cuda.jit(device=True, inline=True)
def _decompose(pixels, buf, slot, p, p_end, n_od, n_oh, n_ow):
    """pixels[buf, :, slot] = (n, od, oh, ow) of output pixel p, n = -1 from p_end on."""
    rest = p // n_ow
    pixels[buf, 3, slot] = p % n_ow
    pixels[buf, 2, slot] = rest % n_oh
    rest //= n_oh
    pixels[buf, 1, slot] = rest % n_od
    pixels[buf, 0, slot] = rest // n_od if p < p_end else -1


def _launch_bounds(bounds):
    """jit options for these bounds; the simulator takes none."""
    return {} if config.ENABLE_CUDASIM else {"launch_bounds": bounds}


@cuda.jit
def relayout(src, dst, mode):
    """dst[...] = src[...] with a cast; mode 1: src is (N, C, D, H, W) and dst (N, D, H, W, C);
    mode 2: the reverse; mode 0: same layout. One thread per element of dst."""
    t = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    if t >= dst.size:
        return
    a4 = t % dst.shape[4]
    rest = t // dst.shape[4]
    a3 = rest % dst.shape[3]
    rest //= dst.shape[3]
    a2 = rest % dst.shape[2]
    rest //= dst.shape[2]
    a1 = rest % dst.shape[1]
    a0 = rest // dst.shape[1]
    if mode == 1:
        dst[a0, a1, a2, a3, a4] = src[a0, a4, a1, a2, a3]
    elif mode == 2:
        dst[a0, a1, a2, a3, a4] = src[a0, a2, a3, a4, a1]
    else:
        dst[a0, a1, a2, a3, a4] = src[a0, a1, a2, a3, a4]


@cuda.jit
def flip_swap(w, out, groups):
    """out[kd, kh, kw, o, g * cin_g + i] = w[KD-1-kd, KH-1-kh, KW-1-kw, i, g * cout_g + o]: the kernel of
    the input gradient (flipped, in and out channels swapped within each group). One thread per element."""
    t = int64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
    if t >= out.size:
        return
    n_kd, n_kh, n_kw, cout_g, cin = out.shape
    cin_g = cin // groups
    c = t % cin
    rest = t // cin
    o = rest % cout_g
    rest //= cout_g
    kw = rest % n_kw
    rest //= n_kw
    kh = rest % n_kh
    kd = rest // n_kh
    out[kd, kh, kw, o, c] = w[n_kd - 1 - kd, n_kh - 1 - kh, n_kw - 1 - kw, c % cin_g, (c // cin_g) * cout_g + o]


KERNELS = {32: make_kernels(float32), 64: make_kernels(float64)}


def specialisations():
    """(name, kernel, signature) for every specialisation the launcher compiles: what the PTX tests
    build for each target GPU."""
    table = int64[:, ::1]
    for bits, kernels in KERNELS.items():
        f = float32 if bits == 32 else float64
        a5, a3 = f[:, :, :, :, ::1], f[:, :, ::1]
        common = (a5, a5, f[::1], table, table, table)
        yield f"conv_tiled_f{bits}", kernels.conv_tiled, (a5, f[:, ::1], f[::1], table, table, table, f[:, ::1])
        yield f"conv_channels_f{bits}", kernels.conv_channels, (*common, a5)
        for name in ("weight_grad_tiled", "weight_grad_channels"):
            yield f"{name}_f{bits}", getattr(kernels, name), (a5, f[:, ::1], table, table, table, a3)
        yield f"column_sums_f{bits}", kernels.column_sums, (f[:, ::1], a3)
        yield f"sum_splits_f{bits}", kernels.sum_splits, (a3, f[:, ::1])
        yield f"standardize_columns_f{bits}", kernels.standardize_columns, (f[:, ::1], float64, f[::1], f[:, ::1])
        yield f"flip_swap_f{bits}", flip_swap, (a5, a5, int64)
    # Device inputs re-laid to channels-last in the compute dtype, and results back to the caller's.
    for src, dst in ((float16, float32), (float32, float32), (float64, float64), (int64, float64),
                     (float32, float16), (float64, float32), (float32, float64)):
        yield f"relayout_{src}_to_{dst}", relayout, (src[:, :, :, :, :], dst[:, :, :, :, ::1], int64)
