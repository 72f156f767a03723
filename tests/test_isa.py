"""The CPU kernels on every instruction set (`nbconv.cpu.target`), marked `isa` (`pytest -m isa`).

- The micro-kernel's machine code for AVX-512 (skylake-avx512, znver4), AVX2 (haswell), SSE4.2
  (x86-64-v2), NEON (neoverse-n1, apple-m1) and SVE (neoverse-v1), compiled here by llvmlite's target machines for every
  kind of body: in its reduction loops (the innermost loops with FMAs), FMAs (or multiplies and adds
  without FMA), no vector register spilled or reloaded, and no calls (a libm `fma` per lane)
  anywhere. General registers reloaded from the stack (addresses, where a body of 12 pixels needs
  more than x86's 16) are counted, not asserted: a load from L1 beside a dozen others per step.
- Conformance in child processes, each with its own NUMBA_CPU_NAME and NUMBA_CACHE_DIR: native,
  x86-64-v3 (AVX2) and x86-64-v2 (SSE4.2) run a compact set of convolutions covering every kernel
  family, block remainder, dtype and way of storing a result against the NumPy reference, and find no
  call to fma/fmaf in the machine code of any compiled kernel.
`python -m tests.test_isa` prints the table of the assembly checks; `python -m tests.test_isa
conformance` runs the compact set in this process (what the children do).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest

pytestmark = pytest.mark.isa

X86, ARM = "x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"
# (triple, CPU) -> what LLVM makes of it: vector bytes, registers, FMA
TARGETS = {(X86, "skylake-avx512"): (64, 32, True), (X86, "znver4"): (64, 32, True), (X86, "haswell"): (32, 16, True),
           (X86, "x86-64-v2"): (16, 16, False), (ARM, "neoverse-n1"): (16, 32, True), (ARM, "apple-m1"): (16, 32, True),
           # SVE (Graviton 3): the same 128-bit NEON arithmetic, its masked stores SVE predicated ones
           (ARM, "neoverse-v1"): (16, 32, True)}


def families(target):
    """Every kind of micro-kernel body for `target`: (dtype, V, K, G, D) of broadcast inputs (K = 1,
    V = 1 .. the most), packed groups (K = 2, 4 with G channels each), input phases (D > 1) and
    whole-vector inputs (K = LANES, up to `whole_vectors`, with the sliding window or held weights), and
    the weight gradient's units of packed groups (16 vectors, a few at a time)."""
    from nbconv.cpu.target import MOST_WHOLE_VECTORS

    for dtype in ("float32", "float64"):
        lanes = target.lanes(dtype)
        for v in range(1, target.max_vectors + 1):
            yield dtype, v, 1, 1, 1
        for k in (2, 4):
            if k < lanes:
                yield dtype, min(2, target.max_vectors), k, lanes // k, 1
                yield dtype, 1, k, lanes // k // 2 or 1, 1
        if lanes > 2:
            yield dtype, min(2, target.max_vectors), 2, lanes // 2, 4
        yield dtype, 1, lanes, 1, 2 * lanes  # one output channel in LANES input phases (groups = 1)
        yield dtype, min(2, target.max_vectors), 1, 1, 3  # K = 1 stepping 3 elements (weight_grad's folded rows)
        yield dtype, 1, lanes, 1, 1
        yield dtype, MOST_WHOLE_VECTORS, lanes, 1, 1  # the widest unit any layer gets
        yield dtype, 16, max(2, lanes // 4), min(4, lanes // 2), 1  # the weight gradient's units of 16 vectors


def machine_code(target, family):
    """Assembly of `microkernel.tile_module` for `family`, optimised as Numba does (O3)."""
    from nbconv.cpu.microkernel import tile_module
    from nbconv.cpu.target import target_machine

    machine = target_machine(target.triple, target.cpu)
    module = llvm.parse_assembly(str(tile_module(target, *family)))
    module.verify()
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    passes = llvm.create_pass_builder(machine, options)
    passes.getModulePassManager().run(module, passes)
    return machine.emit_assembly(module)


_LABEL = re.compile(r"^(\.?L\w+):")
_BRANCH = re.compile(r"^\s+(?:j\w+|b(?:\.\w+)?|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s+(\.?L\w+)\s*$")
_MULTIPLY = re.compile(r"\bv?fmadd\d+[ps][sd]\b|\bfmla\b|\bv?mulp[sd]\b|\bfmul\s+v")
_STACK = re.compile(r"\(%rsp\)|\[sp\b")
# x86's xmm/ymm/zmm, NEON's q, d and v, SVE's z (data) and p (predicate) registers
_VECTOR = re.compile(r"%[xyz]mm\d|\b[qd]\d+\b|\bv\d+\.|\b[zp]\d+\b")
# A function called (directly, or through a register after movabsq in the large code model).
_CALLED = re.compile(r"^\s+(?:call\w*|bl|b|jmp\w*|movabsq)\s+\$?([A-Za-z_]\w*)", re.M)


def reduction_loops(asm):
    """The innermost loops (a backward branch whose span holds no other) that multiply: lists of
    instruction lines."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    spans = [(labels[m.group(1)], j) for j, line in enumerate(lines)
             if (m := _BRANCH.match(line)) and labels.get(m.group(1), j) < j]
    inner = [(a, b) for a, b in spans if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)]
    loops = [[line for line in lines[a:b + 1] if line.startswith("\t") and not line.startswith("\t.")]
             for a, b in inner]
    return [loop for loop in loops if any(_MULTIPLY.search(line) for line in loop)]


def check(target, family):
    """-> dict: reduction loops, their FMAs, multiplies (without FMA), vector and general registers
    spilled or reloaded; calls anywhere."""
    asm = machine_code(target, family)
    loops = reduction_loops(asm)
    body = [line for loop in loops for line in loop]
    return {"loops": len(loops),
            "fma": sum(bool(re.search(r"\bv?fmadd\d+[ps][sd]\b|\bfmla\b", line)) for line in body),
            "mul": sum(bool(re.search(r"\bv?mulp[sd]\b|\bfmul\s+v", line)) for line in body),
            "spills": sum(bool(_STACK.search(line) and _VECTOR.search(line)) for line in body),
            "gpr": sum(bool(_STACK.search(line) and not _VECTOR.search(line)) for line in body),
            "calls": _CALLED.findall(asm)}


@pytest.mark.parametrize("key", TARGETS, ids=[cpu for _, cpu in TARGETS])
def test_target_is_read_off_llvm(key):
    from nbconv.cpu.target import probe

    target = probe(*key)
    assert (target.vector_bytes, target.registers, target.fma) == TARGETS[key]


def test_apple_triples_get_the_aarch64_blocking():
    """macOS names the architecture arm64; its blocking is AArch64's, not the 16-register fallback."""
    from nbconv.cpu.target import BLOCKING, probe

    target = probe("arm64-apple-darwin23.0.0", "apple-m1")
    assert target.registers == 32 and target.blocking is BLOCKING["aarch64", 32, True]


@pytest.mark.parametrize("key", TARGETS, ids=[cpu for _, cpu in TARGETS])
def test_reduction_loops_fit_the_registers(key):
    from nbconv.cpu.target import probe

    target = probe(*key)
    for family in families(target):
        found = check(target, family)
        assert found["loops"] > 0 and found["spills"] == 0 and not found["calls"], (family, found)
        # with FMA every multiply is fused; without, each is a multiply followed by an add
        assert (found["fma"] > 0 and found["mul"] == 0) if target.fma else (found["fma"] == 0 and found["mul"] > 0), \
            (family, found)


# The compact set: (dtype, groups, Cin_g, Cout_g, options) through every family the targets pick
# (K = 1 with 1, 2 and up to 4 vectors and a partial block; packed groups; input phases; depthwise
# on stride-1 rows (a window, or held weights) and not; the plain loop nest for 2 channels a group),
# along rows of WIDTHS pixels (pixel-block remainders), in both dtypes.
WIDTHS = (1, 5, 6, 13, 29)
CONFORMANCE = [
    ("float32", 1, 3, 5, {"padding": "SAME"}), ("float32", 1, 2, 33, {"stride": (1, 1, 2), "padding": 1}),
    ("float32", 1, 4, 70, {"rhs_dilation": 2, "padding": "SAME"}), ("float32", 4, 2, 4, {"padding": "SAME"}),
    ("float32", 8, 8, 8, {"padding": "SAME"}), ("float32", 4, 4, 2, {"lhs_dilation": (1, 1, 2), "padding": 1}),
    ("float32", 64, 1, 1, {"padding": "SAME"}), ("float32", 64, 1, 1, {"stride": 2, "padding": 1}),
    ("float32", 2, 3, 2, {"padding": "SAME"}), ("float64", 1, 3, 9, {"padding": "SAME"}),
    ("float64", 2, 6, 2, {"padding": "SAME"}), ("float64", 32, 1, 1, {"padding": "SAME"}),
    ("float32", 1, 8, 1, {"padding": "SAME"}), ("float32", 1, 4, 3, {"stride": (1, 1, 2), "padding": 1}),
    ("float64", 1, 4, 1, {"lhs_dilation": (1, 1, 2), "padding": 1}),
]
# dw through the weight-gradient kernel (nbconv.cpu.weight_grad): (dtype, groups, Cin_g, Cout_g, options)
# with 1, 2 and 3 vectors, a partial block, W phases and classes, folded rows (3 input channels); groups
# packed K to a vector, with W taps as pixels (depthwise, a channel multiplier) and in transposed rows
# (W phases, classes); along the same rows.
WEIGHT_GRADIENTS = [("float32", 1, 13, 20, {"stride": (1, 1, 2), "padding": "SAME"}),
                    ("float32", 1, 5, 70, {"lhs_dilation": (1, 1, 2), "padding": 1}),
                    ("float64", 1, 7, 9, {"padding": "SAME"}), ("float32", 1, 3, 16, {"padding": "SAME", "stride": 2}),
                    ("float32", 16, 1, 1, {"padding": "SAME"}), ("float64", 6, 1, 2, {"padding": "SAME"}),
                    ("float32", 8, 2, 2, {"stride": (1, 1, 2), "padding": 1}),
                    ("float64", 4, 3, 1, {"lhs_dilation": (1, 1, 2), "padding": 1})]


def conformance():
    """Runs the compact set against the reference, each convolution with results stored as usual and
    as large ones are (streamed or prefetched); -> the number of convolutions checked."""
    import nbconv
    from nbconv.cpu import blocked
    from nbconv.reference import conv3d_vjp_reference
    from tests.support import assert_conv_close

    checked = 0
    usual = blocked.PREFETCH_OUT_BYTES, blocked.l2_bytes
    for dtype, groups, cin_g, cout_g, options in CONFORMANCE:
        rng = np.random.default_rng(groups * cout_g)
        w = rng.standard_normal((3, 2, 3, cin_g, groups * cout_g)).astype(dtype)
        bias = rng.standard_normal(groups * cout_g).astype(dtype)
        for width in WIDTHS:
            x = rng.standard_normal((1, 3, 4, width, groups * cin_g)).astype(dtype)
            for large in (False, True):  # large: too large for the caches, as if L2 had no bytes
                blocked.PREFETCH_OUT_BYTES, blocked.l2_bytes = (0, lambda: 0) if large else usual
                got = nbconv.conv3d(x, w, groups=groups, bias=bias, backend="cpu", **options)
                assert_conv_close(got, x, w, groups=groups, bias=bias, **options)
                checked += 1
    blocked.PREFETCH_OUT_BYTES, blocked.l2_bytes = usual
    for dtype, groups, cin_g, cout_g, options in WEIGHT_GRADIENTS:
        rng = np.random.default_rng(groups * cin_g)
        w = rng.standard_normal((3, 2, 3, cin_g, groups * cout_g)).astype(dtype)
        for width in WIDTHS:
            x = rng.standard_normal((2, 3, 4, width, groups * cin_g)).astype(dtype)
            dy = rng.standard_normal(nbconv.conv3d(x, w, groups=groups, **options).shape).astype(dtype)
            want = conv3d_vjp_reference(x, w, dy, groups=groups, **options)[1]
            got = nbconv.conv3d_vjp(x, w, dy, wrt="w", groups=groups, backend="cpu", **options)[1]
            tolerance = 4 * x.shape[0] * np.prod(dy.shape[1:4]) * np.finfo(dtype).eps * np.abs(want).max()
            np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
            checked += 1
    return checked


def libm_fma_calls():
    """Calls to fma/fmaf in the machine code of every compiled CPU kernel of nbconv."""
    from nbconv.cpu import blocked, direct, launch, microkernel, regroup, standardize, weight_grad

    kernels = [launch.run, blocked._gather, direct.conv_grouped, standardize.standardize_columns,
               weight_grad._transpose, weight_grad._pack]
    machine_code = [(kernel.__name__, asm) for kernel in kernels for asm in kernel.inspect_asm().values()]
    entries = (blocked._entry, weight_grad._entry, regroup._entry)
    compiled = {**{(entry.__module__, dtype): entry(np.dtype(dtype)) for entry in entries
                   for dtype in ("float32", "float64")}, **microkernel.COMPILED}
    machine_code += [(f"{key}", function._library.get_asm_str()) for key, function in compiled.items()]
    assert len(microkernel.COMPILED) > 1, "no kernel family was compiled"
    return [(name, call) for name, asm in machine_code for call in _CALLED.findall(asm) if call in ("fma", "fmaf")]


@pytest.mark.parametrize("cpu", ["native", "x86-64-v3", "x86-64-v2"])
def test_conformance_on_target(cpu, tmp_path):
    root = Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items() if not key.startswith("NUMBA_CPU")}
    if cpu != "native":
        env.update(NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "tests.test_isa", "conformance"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    print(result.stdout)
    checked = int(re.search(r"(\d+) convolutions", result.stdout).group(1))
    assert checked == len(WIDTHS) * (2 * len(CONFORMANCE) + len(WEIGHT_GRADIENTS)), result.stdout


def main(argv):
    from nbconv.cpu.microkernel import TARGET
    from nbconv.cpu.target import probe

    if argv[:1] == ["conformance"]:
        checked = conformance()
        calls = libm_fma_calls()
        print(f"{TARGET.describe()}: {checked} convolutions match the reference; libm fma calls: {calls}")
        return 1 if calls else 0
    print(f"{'target':<16}{'dtype':<9}{'V K G D':<12}{'loops':>6}{'FMAs':>6}{'muls':>6}{'spills':>7}{'gpr':>5}"
          f"{'calls':>6}")
    for key in TARGETS:
        target = probe(*key)
        for family in families(target):
            found = check(target, family)
            print(f"{key[1]:<16}{family[0]:<9}{' '.join(map(str, family[1:])):<12}{found['loops']:>6}"
                  f"{found['fma']:>6}{found['mul']:>6}{found['spills']:>7}{found['gpr']:>5}{len(found['calls']):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
