"""Every CUDA kernel specialisation compiled to PTX with real NVVM for sm_70, sm_80 and sm_90 and
assembled with `ptxas -v`: no spills; registers and shared memory recorded (docs/gpu.md). Runs in
CI from the `cuda` extra (numba-cuda[cu12] brings NVVM and ptxas); it never needs a GPU.
Run `python -m tests.test_ptx` for the table in docs/design.md."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the CUDA simulator has no compile_ptx; this module runs in the main test process",
                allow_module_level=True)

from numba.cuda import compile_ptx  # noqa: E402

from nbconv.cuda import kernels  # noqa: E402

TARGETS = [(7, 0), (8, 0), (9, 0)]
SPECS = list(kernels.specialisations())


def ptxas_path():
    """The ptxas of the cuda extra (CUDA 12, matching its NVVM, and still targeting sm_70, which
    CUDA 13 dropped); a system one only where the extra has none."""
    try:
        import nvidia.cuda_nvcc
    except ImportError:
        return shutil.which("ptxas") or "ptxas"
    return str(Path(list(nvidia.cuda_nvcc.__path__)[0]) / "bin" / "ptxas")


def assemble(kernel, signature, cc, workdir):
    """PTX for `cc` from NVVM, then `ptxas -v`; -> dict of registers, smem bytes, spill bytes."""
    options = kernel.targetoptions
    ptx, _ = compile_ptx(kernel.py_func, signature, cc=cc, fastmath=options.get("fastmath", False),
                         launch_bounds=options.get("launch_bounds"))
    source = Path(workdir) / "kernel.ptx"
    source.write_text(ptx)
    result = subprocess.run([ptxas_path(), "-v", f"-arch=sm_{cc[0]}{cc[1]}", str(source), "-o",
                             str(Path(workdir) / "kernel.cubin")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info = result.stderr
    return {"registers": int(re.search(r"Used (\d+) registers", info).group(1)),
            "smem": int(m.group(1)) if (m := re.search(r"(\d+) bytes smem", info)) else 0,
            "spill_stores": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
            "spill_loads": int(re.search(r"(\d+) bytes spill loads", info).group(1))}


@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("name, kernel, signature", SPECS, ids=[s[0] for s in SPECS])
def test_ptx_compiles_without_spills(name, kernel, signature, cc, tmp_path, record_property):
    usage = assemble(kernel, signature, cc, tmp_path)
    for key, value in usage.items():
        record_property(key, value)
    assert usage["spill_stores"] == 0 and usage["spill_loads"] == 0, usage
    bounds = kernel.targetoptions.get("launch_bounds")
    if bounds:  # the register cap that gives the intended blocks per SM was honoured
        threads, blocks = bounds
        assert usage["registers"] * threads * blocks <= 65536, usage


def main():
    print(f"{'kernel':<28}" + "".join(f"{'sm_{}{}'.format(*cc):>22}" for cc in TARGETS))
    import tempfile
    for name, kernel, signature in SPECS:
        cells = []
        for cc in TARGETS:
            with tempfile.TemporaryDirectory() as tmp:
                u = assemble(kernel, signature, cc, tmp)
            cells.append(f"{u['registers']} regs {u['smem']} B smem")
        print(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
