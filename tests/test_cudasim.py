"""The conv3d, weight standardization, layer, dispatcher, non-finite and gradient suites again, on
backend='cuda' under NUMBA_ENABLE_CUDASIM=1. The simulator must be chosen before Numba is imported,
hence a child process; it runs one Python thread per GPU thread, so the suites shrink their shapes
(tests/support.py). With NBCONV_CUDA_TESTS=device the child runs the same cases on the GPU instead
(`python -m nbconv device-check`), and NBCONV_CUDA_TESTS_FILTER (a pytest -k expression) selects some."""
import os
import re
import subprocess
import sys
from pathlib import Path

ON_DEVICE = os.environ.get("NBCONV_CUDA_TESTS", "simulator") == "device"
FILTER = os.environ.get("NBCONV_CUDA_TESTS_FILTER", "")
SUITES = ["tests/test_conv3d.py", "tests/test_errors.py", "tests/test_standardization.py",
          "tests/test_layers.py", "tests/test_against_jax.py", "tests/test_against_brainstate.py",
          "tests/test_dispatch.py", "tests/test_nonfinite.py", "tests/sim_device_arrays.py",
          "tests/sim_gradients.py", "tests/test_family.py"]


def test_cuda_backend_suites():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NBCONV_TEST_BACKEND": "cuda"}
    env.pop("NBCONV_BACKEND", None)
    if ON_DEVICE:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    else:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    # CUDA is available there, so the test of its absence belongs to the main run only; the CPU
    # micro-kernel's sweeps (test_blocked_*) have no CUDA counterpart and too large shapes for it.
    selection = "not test_blocked_" + (f" and ({FILTER})" if FILTER else "")
    deselect = ["--deselect", "tests/test_dispatch.py::test_cuda_unavailable_is_explained", "-k", selection]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect, *SUITES],
                            cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= (1 if FILTER else 150) and "failed" not in summary and "error" not in summary, summary


def test_device_check_in_simulator(tmp_path):
    """`python -m nbconv device-check` end to end in the simulator on the smoke set: the device, a few
    of the CUDA tests, the CUDA bench forward and backward (each result checked against the CPU
    backend's first), and the kernels' section, in one report."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    env.pop("NBCONV_BACKEND", None)
    command = [sys.executable, "-m", "nbconv", "device-check", "--out", str(tmp_path), "--set", "smoke",
               "--repeats", "1", "--tests", "test_device_out"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "device-check.md").read_text()
    sections = re.findall(r"^## (.+)$", report, re.MULTILINE)
    assert sections == ["Device", "CUDA tests", "Bench, forward", "Bench, backward", "Kernels"], sections
    assert "simulator" in report and "exit code 0" in report and "1 passed" in report
    for name in ("video_c3", "depthwise_c64", "lhs_dilated_2", "dense_c64_f64"):
        assert len(re.findall(rf"^{name} ", report, re.MULTILINE)) == 2, name  # a row in both tables
