"""Backend choice: 'auto' picks the CPU for host arrays, NBCONV_BACKEND overrides the default, and
CUDA that cannot run says why. (Device arrays: tests/sim_device_arrays.py, in the simulator.)"""
import subprocess
import sys

import numpy as np
import pytest

import nbconv
from nbconv.call import is_device_array
from nbconv.dispatch import choose_backend

X = np.ones((1, 3, 3, 3, 2), np.float32)
W = np.ones((1, 1, 1, 2, 2), np.float32)


def test_auto_with_numpy_is_cpu(monkeypatch):
    monkeypatch.delenv("NBCONV_BACKEND", raising=False)
    assert choose_backend("auto", X, W) == "cpu"
    assert not is_device_array(X)


def test_env_overrides_auto_only(monkeypatch):
    monkeypatch.setenv("NBCONV_BACKEND", "cpu")
    assert choose_backend("auto", X) == "cpu"
    monkeypatch.setenv("NBCONV_BACKEND", "cuda")
    assert choose_backend("auto", X) == "cuda"
    assert choose_backend("cpu", X) == "cpu"


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv("NBCONV_BACKEND", "tpu")
    with pytest.raises(ValueError, match="NBCONV_BACKEND must be one of"):
        nbconv.conv3d(X, W)


def test_cuda_unavailable_is_explained(monkeypatch):
    with pytest.raises(nbconv.BackendUnavailableError, match="pip install 'nbconv\\[cuda\\]'"):
        nbconv.conv3d(X, W, backend="cuda")
    monkeypatch.setenv("NBCONV_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        nbconv.weight_standardization(W)


def test_cpu_backend_refuses_device_arrays():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}
        shape, dtype = (1, 3, 3, 3, 2), np.dtype(np.float32)

    assert is_device_array(FakeDevice())
    assert choose_backend("auto", FakeDevice()) == "cuda"
    with pytest.raises(TypeError, match="backend='cpu' was given a CUDA device array"):
        nbconv.conv3d(FakeDevice(), W, backend="cpu")


def test_import_does_not_touch_cuda():
    code = "import sys, nbconv; print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'nbconv.cuda'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
