"""The CPU compile target as LLVM sees it, and the micro-kernel blocking for it: the only place an
instruction set is named (docs/design.md).

The target is Numba's: `NUMBA_CPU_NAME` / `NUMBA_CPU_FEATURES` when set, else the host. Its vector
width, register count and FMA are read off the machine code LLVM emits for it (`_PROBE`: one 512-bit
fused multiply-add and a masked store), so a forced target is described exactly as it is compiled,
on any machine, and a CPU name LLVM knows needs no list here.
"""
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import llvmlite.binding as llvm
import numpy as np

CACHE_LINE = 64
# One core's L1 data cache and L2 where the OS does not say (`l1_bytes`, `l2_bytes`): the smallest seen
# on these machines (Zen 2/3).
L1_FALLBACK = 32 << 10
L2_FALLBACK = 512 << 10

# LLVM splits a vector type wider than the registers into several registers, so the micro-kernel's
# vectors are as wide as the target's. Per register file, what one micro-kernel call holds (the
# reasoning and the measurements behind each value: docs/design.md, "The compile target"):
# - `pixels[V]`: output pixels P per call for V vectors, largest first. P * V accumulators, V weight
#   vectors and the inputs of one pixel fit the registers, so the whole reduction runs without a
#   spill; the smaller counts cover the ends of rows without falling back to one pixel at a time.
#   32 x86 registers: 6 x 4 accumulators. 16: 6 x 2 (BLIS's Haswell tile), and with FMA 4 x 3, so
#   that 24 float32 channels are one block; every count up to the most, so that a row ends in one
#   call. One vector stops at 12 pixels on x86: more keep more addresses than the general registers.
#   AArch64 schedules a step's loads early, so its 2- and 3-vector counts are lower.
# - `whole`: the same for whole-vector units (depthwise), where it differs from `pixels`: their
#   vectors are reduced a few at a time (`emitter.Emitter.together`).
# - `held`, `held_pixels`, `sliding`: how a whole-vector body loads each input once for all the pixels
#   it serves on a stride-1 row (`emitter.Emitter.tile`). Taps of `held` steps or fewer hold their
#   weights in registers (`emitter.Emitter.hold`), in bodies of `held_pixels[V]` pixels: on 16
#   registers that keeps whole cache lines per pass. Longer taps, and every tap where `held` is 0,
#   slide a window of P inputs along the row, in bodies of `sliding` = (fewest, most) pixels
#   (`emitter.Emitter.slide`).
# - `spare`: registers left free beside the operands when whole-vector inputs are reduced a few
#   vectors at a time: AArch64's early loads take them.
# - `chains`: independent accumulators that keep the FMA pipes busy (two pipes of about 4 cycles on
#   every CPU measured).
class Blocking(NamedTuple):
    pixels: dict
    sliding: tuple
    spare: int
    chains: int
    whole: dict = None  # None: as `pixels`
    held: int = 0  # 0: always slide a window (`sliding`)
    held_pixels: dict = None


# A unit of whole-vector inputs (depthwise, K = LANES) spans at least this many bytes of channels,
# however many vectors that takes, reduced a few vectors at a time (`emitter.Emitter.together`): where a
# unit holds all the channels, the taps of a stride-1 row continue in x and merge, their inputs loaded
# once, and x needs no copy into a volume per unit. More where the unit's packed weights still fit one
# core's L1 data cache, which every block of pixels reads them from (`whole_vectors`), up to
# MOST_WHOLE_VECTORS: each count compiles a micro-kernel of its own, of a size that grows with it. With
# a 32 KiB L1 and AVX-512, the 96 channels of a 3x3 or 5x5 layer are one unit, those of a 5x5x5 layer
# (48 KB of weights) two (docs/design.md).
WHOLE_VECTOR_BYTES = 256
MOST_WHOLE_VECTORS = 64

# (architecture, vector registers, FMA) -> Blocking: one row per register file, as BLIS keeps one
# block-size table per configuration.
_X86_16 = {1: (12, 8, 4, 2, 1), 2: (6, 4, 2, 1)}
_X86_16_HELD = {1: (12, 8, 4, 2, 1), 2: (4, 2, 1)}
BLOCKING = {
    ("x86_64", 32, True): Blocking(
        pixels={1: (12, 8, 4, 2, 1), 2: (12, 8, 4, 2, 1), 3: (8, 4, 3, 2, 1), 4: (6, 4, 3, 2, 1)},
        sliding=(3, 12), spare=0, chains=8),
    ("x86_64", 16, True): Blocking(
        pixels={**_X86_16, 2: (6, 5, 4, 3, 2, 1), 3: (4, 3, 2, 1)},
        sliding=(3, 6), spare=0, chains=8, whole={**_X86_16, 2: (6, 4, 3, 2, 1)}, held=3, held_pixels=_X86_16_HELD),
    ("x86_64", 16, False): Blocking(
        pixels=_X86_16,
        sliding=(5, 6), spare=0, chains=8, held=3, held_pixels=_X86_16_HELD),
    ("aarch64", 32, True): Blocking(
        pixels={1: (16, 8, 4, 2, 1), 2: (8, 4, 2, 1), 3: (6, 4, 2, 1), 4: (6, 4, 2, 1)},
        sliding=(4, 8), spare=8, chains=8),
}

# One llvm.fmuladd of 16 float32 lanes (fused where the target has FMA, a multiply and an add where
# not: never a libm call) and a masked store, the two operations the micro-kernel is made of.
_PROBE = """
define void @probe(ptr %a, ptr %b, ptr %c, <16 x i1> %m) {
  %x = load <16 x float>, ptr %a
  %y = load <16 x float>, ptr %b
  %z = load <16 x float>, ptr %c
  %r = call <16 x float> @llvm.fmuladd.v16f32(<16 x float> %x, <16 x float> %y, <16 x float> %z)
  call void @llvm.masked.store.v16f32.p0(<16 x float> %r, ptr %c, i32 4, <16 x i1> %m)
  ret void
}
declare <16 x float> @llvm.fmuladd.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare void @llvm.masked.store.v16f32.p0(<16 x float>, ptr, i32, <16 x i1>)
"""
# Register names of the probe's machine code -> vector bytes (AArch64 NEON: q0-q31 / v0.4s...).
_WIDTHS = ((r"%zmm\d", 64), (r"%ymm\d", 32), (r"%xmm\d|\bq\d+\b|\bv\d+\.", 16))
_FMA = r"\bv?fmadd\d*[ps]s\b|\bfmla\b|\bfmadd\b"


class Target(NamedTuple):
    """A compile target: CPU name, triple, vector register bytes and count, FMA or not."""

    cpu: str
    triple: str
    vector_bytes: int
    registers: int
    fma: bool

    def lanes(self, dtype):
        """Lanes of one vector register of a NumPy or Numba float dtype."""
        return self.vector_bytes // np.dtype(str(dtype)).itemsize

    @property
    def blocking(self):
        """This register file's row of BLOCKING; elsewhere (POWER, RISC-V...: never measured) the 16
        x 128-bit row, which fits any register file of 16 or more."""
        return BLOCKING.get((self.arch, self.registers, self.fma), BLOCKING["x86_64", 16, self.fma])

    @property
    def arch(self):
        """The triple's architecture, Apple's `arm64` named `aarch64` as elsewhere."""
        arch = self.triple.split("-")[0]
        return "aarch64" if arch == "arm64" else arch

    @property
    def max_vectors(self):
        """Most vectors of one micro-kernel call whose inputs are shared (broadcast)."""
        return max(self.blocking.pixels)

    def whole_vectors(self, steps):
        """Most vectors of one micro-kernel call of whole-vector inputs whose weights are `steps` vectors
        each (taps x reduction steps)."""
        floor = max(self.max_vectors, WHOLE_VECTOR_BYTES // self.vector_bytes)
        return max(floor, min(MOST_WHOLE_VECTORS, l1_bytes() // (steps * self.vector_bytes)))

    def pixel_counts(self, vectors, whole=False, held=False):
        """Pixel counts of the micro-kernel bodies for `vectors` vectors (of whole-vector inputs:
        `whole`; those that hold their weights: `held`), largest first."""
        blocking = self.blocking
        table = blocking.held_pixels if held else blocking.whole or blocking.pixels if whole else blocking.pixels
        return table[min(vectors, max(table))]

    def describe(self):
        isa = f"{8 * self.vector_bytes}-bit vectors x {self.registers}, {'FMA' if self.fma else 'no FMA'}"
        return f"{self.cpu} ({isa})"


def target_machine(triple, cpu, features=""):
    """llvmlite's target machine for (triple, CPU name, feature string), optimising as Numba does."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    return llvm.Target.from_triple(triple).create_target_machine(cpu=cpu, features=features, opt=3)


@cache
def probe(triple, cpu, features=""):
    """The Target that LLVM makes of (triple, CPU name, feature string)."""
    asm = target_machine(triple, cpu, features).emit_assembly(llvm.parse_assembly(_PROBE))
    width = next((size for pattern, size in _WIDTHS if re.search(pattern, asm)), 16)
    # AVX-512 (masked stores through %k registers) and AArch64 have 32 vector registers, the rest 16.
    registers = 32 if re.search(r"\{%k\d\}", asm) or triple.startswith(("aarch64", "arm64")) else 16
    return Target(cpu, triple, width, registers, bool(re.search(_FMA, asm)))


@lru_cache(maxsize=1)
def current():
    """The target Numba compiles for in this process."""
    from numba.core import codegen, config

    cpu = config.CPU_NAME or llvm.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return probe(llvm.get_process_triple(), cpu, features)


def l1_bytes():
    """Bytes of one core's L1 data cache (`cache_bytes`)."""
    return cache_bytes(1, L1_FALLBACK)


def l2_bytes():
    """Bytes of one core's L2 cache (`cache_bytes`)."""
    return cache_bytes(2, L2_FALLBACK)


@cache
def cache_bytes(level, fallback):
    """Bytes of one core's data cache of `level`, from Linux's sysfs (`fallback` elsewhere). A property
    of the machine, not of the instruction set: a forced compile target leaves it as it is."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            found, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if found == str(level) and kind in ("Unified", "Data") and re.fullmatch(r"\d+[KM]?", size):
            return int(size.rstrip("KM")) << {"K": 10, "M": 20}.get(size[-1], 0)
    return fallback
