"""CUDA kernels for conv3d and weight standardization, one set per float type.

Dense and large-group convolutions (`conv_tiled`) run as an implicit GEMM: a block of 16 x 16 threads
computes a TILE_P x TILE_C tile (64 output pixels x 64 output channels of one group); each thread holds
RP x RC = 4 x 4 accumulators in registers. The reduction (kernel taps x input channels of the group)
advances KC = 16 at a time through two shared-memory tiles: the input values the 64 pixels read
through those taps (gathered through the tap tables, 0 for padding and dilation holes) and the
matching 16 x 64 weights. Per KC step a thread does 16 * 16 FMAs for 16 * 8 shared loads.

Depthwise and small groups (`conv_channels`) are memory-bound: one thread per (RW = 4 consecutive
output pixels along W, output channel), channels fastest across threads so that loads of x, w and the
stores of y coalesce, each weight loaded once per tap and used for 4 outputs.

Pixel and element indices are int64, so tensors above 2^31 elements index correctly. Every constant
is cast to the kernel's float type: a float64 literal would silently promote float32 arithmetic.
"""
import math

from numba import config, cuda, float32, float64, int32, int64
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


def make_kernels(dtype):
    """The kernels for one float type (float32 or float64): shared and local arrays need it fixed."""
    zero = dtype(0)
    bits = dtype.bitwidth
    tiled_bounds, channels_bounds = _launch_bounds(TILED_BOUNDS[bits]), _launch_bounds(CHANNELS_BOUNDS[bits])

    @cuda.jit(fastmath=False, **tiled_bounds)
    def conv_tiled(x, w, bias, idx_d, idx_h, idx_w, out):
        """out: (pixels, Cout) view of the (N, OD, OH, OW, Cout) result."""
        a_tile = cuda.shared.array((KC, A_COLS), dtype)
        b_tile = cuda.shared.array((KC, TILE_C), dtype)
        acc = cuda.local.array((RP, RC), dtype)
        # The block's pixels, decomposed once into (n, od, oh, ow) and kept in shared memory rather
        # than registers (n = -1 past the end); one axis coordinate fits 32 bits.
        pixels = cuda.shared.array((4, TILE_P), int32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS_X + tx
        n_pix, cout = out.shape
        n_od, n_oh, n_ow = idx_d.shape[0], idx_h.shape[0], idx_w.shape[0]
        n_kd, n_kh, n_kw, cin_g = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
        cout_g = cout // (x.shape[4] // cin_g)
        tiles_per_group = (cout_g + TILE_C - 1) // TILE_C
        group = cuda.blockIdx.y // tiles_per_group
        c_first = (cuda.blockIdx.y % tiles_per_group) * TILE_C
        p_first = int64(cuda.blockIdx.x) * TILE_P
        reduction = n_kd * n_kh * n_kw * cin_g
        if tid < TILE_P:
            p = p_first + tid
            rest = p // n_ow
            pixels[3, tid] = p % n_ow
            pixels[2, tid] = rest % n_oh
            rest //= n_oh
            pixels[1, tid] = rest % n_od
            pixels[0, tid] = rest // n_od if p < n_pix else -1
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
                n = pixels[0, pp]
                value = zero
                if r < reduction and n >= 0:
                    i_d = idx_d[pixels[1, pp], kd]
                    i_h = idx_h[pixels[2, pp], kh]
                    i_w = idx_w[pixels[3, pp], kw]
                    if i_d >= 0 and i_h >= 0 and i_w >= 0:
                        value = x[n, i_d, i_h, i_w, group * cin_g + ci]
                a_tile[kk, pp] = value
            for m in range(B_LOADS):
                slot = tid + m * THREADS
                row, col = slot // TILE_C, slot % TILE_C
                rb = k_first + row
                c = c_first + col
                value = zero
                if rb < reduction and c < cout_g:
                    tap_b = rb // cin_g
                    value = w[tap_b // (n_kw * n_kh), (tap_b // n_kw) % n_kh, tap_b % n_kw, rb % cin_g,
                              group * cout_g + c]
                b_tile[row, col] = value
            cuda.syncthreads()
            for k in range(KC):
                for i in range(RP):
                    a = a_tile[k, ty * RP + i]
                    for j in range(RC):
                        acc[i, j] += a * b_tile[k, tx + j * THREADS_X]
            cuda.syncthreads()
        for i in range(RP):
            p = p_first + ty * RP + i
            for j in range(RC):
                c = c_first + tx + j * THREADS_X
                if p < n_pix and c < cout_g:
                    out[p, group * cout_g + c] = acc[i, j] + bias[group * cout_g + c]

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

    return conv_tiled, conv_channels, standardize_columns


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


KERNELS = {32: make_kernels(float32), 64: make_kernels(float64)}


def specialisations():
    """(name, kernel, signature) for every specialisation the launcher compiles: what the PTX tests
    build for each target GPU."""
    table = int64[:, ::1]
    for bits, (tiled, channels, standardize) in KERNELS.items():
        f = float32 if bits == 32 else float64
        a5 = f[:, :, :, :, ::1]
        common = (a5, a5, f[::1], table, table, table)
        yield f"conv_tiled_f{bits}", tiled, (*common, f[:, ::1])
        yield f"conv_channels_f{bits}", channels, (*common, a5)
        yield f"standardize_columns_f{bits}", standardize, (f[:, ::1], float64, f[::1], f[:, ::1])
    # Device inputs re-laid to channels-last in the compute dtype, and results back to the caller's.
    for src, dst in ((float16, float32), (float32, float32), (float64, float64), (int64, float64),
                     (float32, float16)):
        yield f"relayout_{src}_to_{dst}", relayout, (src[:, :, :, :, :], dst[:, :, :, :, ::1], int64)
