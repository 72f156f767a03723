"""Numba's on-disk cache and the compiled CPU kernels: an edit of a module whose code a cached kernel
links in, not only of the file that defines it, compiles the kernel anew (`launch.LINKED_SOURCES`)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One small convolution in a child process; prints where nbconv came from and how many of the kernel
# family entries it ran were loaded from the cache.
_CHILD = """
import numpy as np, nbconv
from nbconv.cpu import blocked
nbconv.conv3d(np.ones((1, 3, 4, 4, 8), np.float32), np.ones((3, 3, 3, 8, 8), np.float32))
print(nbconv.__file__, sum(entry.cache_hits for entry in blocked.ENTRIES.values()))
"""


def _cache_hits(tree, cache):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", _CHILD], cwd=tree, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    origin, hits = result.stdout.split()
    assert Path(origin).is_relative_to(tree)
    return int(hits)


def test_an_edit_of_the_micro_kernel_generator_compiles_the_entries_anew(tmp_path):
    tree, cache = tmp_path / "tree", tmp_path / "cache"
    shutil.copytree(ROOT / "nbconv", tree / "nbconv", ignore=shutil.ignore_patterns("__pycache__"))
    assert _cache_hits(tree, cache) == 0
    assert _cache_hits(tree, cache) == 1
    with open(tree / "nbconv" / "cpu" / "microkernel.py", "a") as source:
        source.write("# edited\n")
    assert _cache_hits(tree, cache) == 0
