"""nbconv inside other people's process models (`nbconv.cpu.parallel`, `nbconv.cpu.tasks.in_slices`),
each case in a child process, since each touches process-wide state: the threading layer Numba picks
(once per process), fork, signals, NUMBA_DISABLE_JIT.

- Every threading layer Numba may pick (TBB where installed, OpenMP, workqueue): a `fork` Pool after
  nbconv ran in the parent (what PyTorch's DataLoader does) computes the right results in its
  workers, and 6 Python threads calling conv3d at once (Dask's threaded scheduler, a web server's
  pool) get the right results, for the blocked kernel and the loop nest.
- Ctrl-C: a SIGINT arriving during a long call raises KeyboardInterrupt as soon as the running slice
  of the work ends, the rest of `out` left unwritten, and the process stays usable. The signal is
  sent from inside the first slice's launch, so no timing is involved (docs/threads.md gives the
  latency measured on a long call).
- NUMBA_DISABLE_JIT=1: conv3d and the layers still compute the right results, in Python, on both
  kernels, and so does the weight gradient's.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Convolutions whose results the children check against the NumPy reference: a blocked-kernel family
# with input interleaving (K > 1), one of broadcast inputs, and the few-channel loop nest.
_SETUP = """
import numpy as np, numba, nbconv
from nbconv.reference import conv3d_reference
rng = np.random.default_rng(0)
CASES = [(rng.standard_normal((1, 3, 5, 7, 8)).astype("f4"), rng.standard_normal((3, 3, 3, 2, 8)).astype("f4"), 4),
         (rng.standard_normal((2, 3, 4, 6, 6)).astype("f4"), rng.standard_normal((3, 1, 3, 6, 24)).astype("f4"), 1),
         (rng.standard_normal((1, 4, 4, 5, 3)).astype("f4"), rng.standard_normal((2, 3, 3, 3, 2)).astype("f4"), 1)]
WANT = [conv3d_reference(x, w, groups=g) for x, w, g in CASES]

def all_right():
    return all(np.allclose(nbconv.conv3d(x, w, groups=g), want, rtol=1e-4, atol=1e-4)
               for (x, w, g), want in zip(CASES, WANT))
"""

_FORK = _SETUP + """
import multiprocessing
def check(i):
    return all_right()
assert all_right()
with multiprocessing.get_context("fork").Pool(2) as pool:
    print("children", pool.map_async(check, range(4)).get(timeout=120))
print("parent", all_right(), numba.threading_layer())
"""

_THREADS = _SETUP + """
import threading
results = []
def work():
    results.extend(all_right() for _ in range(5))
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
print("threads", all(results) and len(results) == 30, numba.threading_layer())
"""


def _layers():
    """The layers Numba can load here: workqueue always, OpenMP where Numba was built with it, TBB
    where the `tbb` package is installed (the test extra has it where PyPI has wheels: x86-64).
    Probed with a plain Numba kernel, not nbconv's, so that a layer nbconv breaks fails the tests
    below instead of leaving them out (nbconv.cpu.parallel is imported: it makes pip's TBB findable)."""
    probe = ("import numpy as np, numba, nbconv.cpu.parallel;"
             " numba.njit(parallel=True)(lambda a: a.sum())(np.ones(64));"
             " assert numba.threading_layer() == {0!r}")
    return [layer for layer in ("workqueue", "omp", "tbb")
            if subprocess.run([sys.executable, "-c", probe.format(layer)], cwd=ROOT, capture_output=True,
                              env={**os.environ, "NUMBA_THREADING_LAYER": layer}).returncode == 0]


LAYERS = _layers()


def _child(code, timeout=600, **env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_after_use(layer):
    out = _child(_FORK, NUMBA_THREADING_LAYER=layer)
    assert "children [True, True, True, True]" in out and f"parent True {layer}" in out, out


@pytest.mark.parametrize("layer", LAYERS)
def test_threads_at_once(layer):
    out = _child(_THREADS, NUMBA_THREADING_LAYER=layer)
    assert f"threads True {layer}" in out, out


_INTERRUPT = """
import os, signal, numpy as np, nbconv
from nbconv import config
from nbconv.cpu import launch, tasks
from nbconv.reference import conv3d_reference
tasks.FIRST_SLICE_FLOPS = 1.0  # slices of one task's work, however fast this machine is
# Python's Ctrl-C handler, as in a terminal: a process started with SIGINT ignored (a background job
# of a script, nohup, some CI runners) keeps it ignored, and the signal below would be lost.
signal.signal(signal.SIGINT, signal.default_int_handler)
KERNEL, = {kernel!r}
config.CPU_KERNEL = KERNEL
target = launch if KERNEL == "blocked" else __import__("nbconv.cpu.direct", fromlist=["x"])
name = "run" if KERNEL == "blocked" else "conv_grouped"
real, launches = getattr(target, name), []

def interrupted(*args):  # Ctrl-C during the first launch
    real(*args)
    launches.append(1)
    if len(launches) == 1:
        os.kill(os.getpid(), signal.SIGINT)
setattr(target, name, interrupted)
x = np.random.default_rng(1).standard_normal((2, 6, 8, 9, 8)).astype("f4")
w = np.random.default_rng(2).standard_normal((3, 3, 3, 8, 8)).astype("f4")
out = np.full((2, 6, 8, 9, 8), np.nan, np.float32)
try:
    nbconv.conv3d(x, w, out=out)
    print("not interrupted")
except KeyboardInterrupt:
    written = ~np.isnan(out)
    print("interrupted after", len(launches), "launch; written", 0 < written.mean() < 1)
setattr(target, name, real)
print("usable", np.allclose(nbconv.conv3d(x, w), conv3d_reference(x, w), rtol=1e-4, atol=1e-4))
"""


@pytest.mark.parametrize("kernel", ["blocked", "grouped"])
def test_ctrl_c_interrupts_a_long_call(kernel):
    out = _child(_INTERRUPT.format(kernel=(kernel,)))
    assert "interrupted after 1 launch; written True" in out and "usable True" in out, out


@pytest.mark.parametrize("kernel", ["blocked", "grouped"])
def test_numba_disable_jit_computes_right(kernel):
    """Both kernels in Python: the blocked one with its intrinsics' Python twins (`nbconv.cpu.nojit`)."""
    out = _child(_SETUP + f"""
nbconv.config.CPU_KERNEL = {kernel!r}
layer = nbconv.ScaledWSConv3d((3, 5, 7, 8), 8, 3, groups=4)
x = CASES[0][0]
right = np.allclose(layer(x), conv3d_reference(x, layer.kernel(), groups=4), rtol=1e-4, atol=1e-4)
# channels first: the layout moves (nbconv.cpu.layout), 8 x 8 blocks of the 24-channel result
x, w, _ = CASES[1]
right &= np.allclose(nbconv.conv3d(np.moveaxis(x, -1, 1).copy(), w, channel_first=True), np.moveaxis(WANT[1], -1, 1),
                     rtol=1e-4, atol=1e-4)
# the weight gradient's kernel (nbconv.cpu.weight_grad), transposed and folded rows
from nbconv.reference import conv3d_vjp_reference
for x, w, _ in CASES[1:]:
    dy = rng.standard_normal(nbconv.conv3d(x, w).shape).astype("f4")
    right &= np.allclose(nbconv.conv3d_vjp(x, w, dy, wrt="w")[1], conv3d_vjp_reference(x, w, dy)[1], rtol=1e-4,
                         atol=1e-4)
print("disabled jit", all_right() and right)
""", NUMBA_DISABLE_JIT="1")
    assert "disabled jit True" in out, out
