"""Numba's on-disk cache and the compiled CPU kernels: an edit of a module whose code a cached kernel
links in, not only of the file that defines it, compiles the kernel anew (`launch.LINKED_SOURCES`,
`microkernel._GENERATOR_SOURCE`); where no cache folder is writable, nbconv compiles in memory."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One small convolution in a child process; prints where nbconv came from and whether each C function
# it ran, the blocked kernel's entry and its family's micro-kernel loop, was loaded from the cache.
_CHILD = """
import numpy as np, nbconv
from nbconv.cpu import blocked, microkernel
from nbconv.geometry import conv_geometry
x, w, f32 = np.ones((1, 3, 4, 4, 8), np.float32), np.ones((3, 3, 3, 8, 8), np.float32), np.dtype(np.float32)
nbconv.conv3d(x, w)
geometry = conv_geometry(x.shape, w.shape, stride=1, padding="SAME", lhs_dilation=1, rhs_dilation=1, groups=1,
                         channel_first=False)
family = blocked._packing(geometry, f32)[0].shape
print(nbconv.__file__, blocked._entry(f32).cache_hits, microkernel.compiled_lines(family, f32).cache_hits)
"""


def _cache_hits(tree, cache):
    """(entry loaded, family loaded) of `_CHILD` run on the nbconv in `tree`."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", _CHILD], cwd=tree, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    origin, *hits = result.stdout.split()
    assert Path(origin).is_relative_to(tree)
    return tuple(map(int, hits))


def test_an_edit_of_the_micro_kernel_generator_compiles_the_entries_anew(tmp_path):
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(ROOT / "nbconv", tree / "nbconv", ignore=shutil.ignore_patterns("__pycache__"))
    assert _cache_hits(tree, cache) == (0, 0)
    assert _cache_hits(tree, cache) == (1, 1)
    # (module edited, what is compiled anew: the entry, the family's loop)
    edits = (("tasks.py", (0, 1)), ("target.py", (0, 0)), ("emitter.py", (0, 0)), ("microkernel.py", (0, 0)))
    for module, anew in edits:
        with open(tree / "nbconv" / "cpu" / module, "a") as source:
            source.write("# edited\n")
        assert _cache_hits(tree, cache) == anew, module


# Every cache folder Numba tries (NUMBA_CACHE_DIR, the package's __pycache__, the user's) unwritable, as
# on a read-only install: ensure_cache_path is where Numba finds that out (a read-only file system
# raises there even for root, so the child patches it rather than relying on file permissions).
_READ_ONLY = """
import warnings
import numba.core.caching as caching
import numpy as np

def unwritable(locator):
    raise OSError(30, "Read-only file system", locator.get_cache_path())

caching._CacheLocator.ensure_cache_path = unwritable
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import nbconv
from nbconv import config
from nbconv.reference import conv3d_reference
rng = np.random.default_rng(0)
x, w = rng.random((1, 4, 5, 6, 8), np.float32), rng.random((3, 3, 3, 4, 16), np.float32)
error = np.abs(nbconv.conv3d(x, w, groups=2) - conv3d_reference(x, w, groups=2)).max()
print(config.CACHE, error < 1e-4, sum("NUMBA_CACHE_DIR" in str(warning.message) for warning in caught))
"""


def test_a_read_only_install_imports_and_computes_in_memory():
    result = subprocess.run([sys.executable, "-c", _READ_ONLY], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True", "1"], result.stdout + result.stderr[-2000:]
