"""The conv3d, weight standardization, layer and dispatcher suites again, on backend='cuda' under
NUMBA_ENABLE_CUDASIM=1. The simulator must be chosen before Numba is imported, hence a child process;
it runs one Python thread per GPU thread, so the suites shrink their shapes (tests/support.py)."""
import os
import re
import subprocess
import sys
from pathlib import Path

SUITES = ["tests/test_conv3d.py", "tests/test_errors.py", "tests/test_standardization.py",
          "tests/test_layers.py", "tests/test_against_jax.py", "tests/test_against_brainstate.py",
          "tests/test_dispatch.py", "tests/sim_device_arrays.py"]


def test_cuda_backend_in_simulator():
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "NBCONV_TEST_BACKEND": "cuda"}
    env.pop("NBCONV_BACKEND", None)
    # CUDA is available in the simulator, so the test of its absence belongs to the main run only;
    # the CPU micro-kernel's sweeps (test_blocked_*) have no CUDA counterpart and too large shapes for it.
    deselect = ["--deselect", "tests/test_dispatch.py::test_cuda_unavailable_is_explained", "-k", "not test_blocked_"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect, *SUITES],
                            cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 150 and "failed" not in summary and "error" not in summary, summary
