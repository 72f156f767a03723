"""conv3d and the layers on Dask arrays (`nbconv.chunked`): lazy results equal to the NumPy reference
for random shapes, options and chunkings (chunks smaller than the halo, chunks of one element,
uneven last chunks), on the synchronous, threaded and distributed schedulers."""
import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import distributed
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import nbconv
from nbconv import config
from nbconv.tools.volume import peak_memory
from tests.support import assert_conv_close


@st.composite
def problems(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(3))
    batch = draw(st.integers(1, 2))
    padding = draw(st.one_of(st.sampled_from(["SAME", "VALID"]),
                             st.tuples(*[st.tuples(st.integers(-2, 3), st.integers(-2, 3))] * 3)))
    options = dict(stride=tuple(draw(st.integers(1, 3)) for _ in range(3)), padding=padding,
                   lhs_dilation=tuple(draw(st.integers(1, 3)) for _ in range(3)),
                   rhs_dilation=tuple(draw(st.integers(1, 2)) for _ in range(3)), groups=groups)
    chunks = (draw(st.integers(1, batch)), *(draw(st.integers(1, n)) for n in spatial), draw(st.integers(1, cin)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((batch, *spatial, cin))
    w = rng.standard_normal((*kernel, cin // groups, cout))
    bias = rng.standard_normal(cout) if draw(st.booleans()) else None
    return x, w, bias, options, chunks


@settings(max_examples=60, deadline=None)
@given(problems())
def test_equals_the_reference_for_any_options_and_chunks(problem):
    x, w, bias, options, chunks = problem
    y = nbconv.conv3d(da.from_array(x, chunks=chunks), w, bias=bias, **options)
    assert isinstance(y, da.Array)
    assert_conv_close(y.compute(scheduler="sync"), x, w, bias=bias, **options)


@pytest.mark.parametrize("channel_first, batched", [(True, True), (False, False), (True, False)])
def test_layouts_and_dtypes(channel_first, batched):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6, 3)).astype(np.float16)  # float16: computed in float32
    w = rng.standard_normal((3, 2, 3, 3, 4)).astype(np.float16)
    x_caller = np.moveaxis(x, -1, 1) if channel_first else x
    x_caller = x_caller if batched else x_caller[0]
    y = nbconv.conv3d(da.from_array(x_caller, chunks=2), w, stride=(1, 2, 1), channel_first=channel_first)
    single = nbconv.conv3d(x_caller, w, stride=(1, 2, 1), channel_first=channel_first)
    assert y.dtype == single.dtype == np.float16 and y.shape == single.shape
    assert_conv_close(y.compute(), x_caller, w, stride=(1, 2, 1), channel_first=channel_first)


def test_output_chunks_follow_the_input_chunks():
    x = da.zeros((2, 32, 32, 32, 4), chunks=(1, 8, 16, 32, 4), dtype=np.float32)
    y = nbconv.conv3d(x, np.zeros((3, 3, 3, 4, 6), np.float32), stride=(1, 2, 1))
    assert y.chunks == ((1, 1), (8, 8, 8, 8), (8, 8), (32,), (6,))


def test_weights_enter_the_graph_once():
    x = da.zeros((1, 16, 16, 16, 4), chunks=4, dtype=np.float32)
    w = np.random.default_rng(0).standard_normal((3, 3, 3, 4, 8)).astype(np.float32)
    graph = dict(nbconv.conv3d(x, w, bias=np.ones(8, np.float32)).__dask_graph__())
    assert sum(1 for value in graph.values() if isinstance(value, np.ndarray) and value.nbytes == w.nbytes) <= 1


def test_threaded_scheduler_and_the_task_threads(monkeypatch):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 12, 10, 9, 6)), rng.standard_normal((3, 3, 3, 3, 8))
    monkeypatch.setattr(config, "DASK_TASK_THREADS", 1)
    y = nbconv.conv3d(da.from_array(x, chunks=(1, 5, 4, 9, 6)), w, groups=2, padding=((2, 1), (0, 0), (1, 1)))
    assert_conv_close(y.compute(scheduler="threads"), x, w, groups=2, padding=((2, 1), (0, 0), (1, 1)))


def test_layers_take_dask_arrays():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 8, 8, 3)).astype(np.float32)
    layer = nbconv.ScaledWSConv3d((6, 8, 8, 3), 6, 3, stride=(1, 2, 2), b_init=nbconv.init.Constant(0.5))
    y = layer(da.from_array(x, chunks=(1, 3, 4, 8, 3)))
    assert isinstance(y, da.Array)
    bias = layer.weight.value["bias"].reshape(-1)
    assert_conv_close(y.compute(), x, layer.kernel(), stride=(1, 2, 2), bias=bias)


def test_distributed_local_cluster():
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 10, 9, 8, 4)), rng.standard_normal((3, 3, 3, 4, 5))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        y = nbconv.conv3d(da.from_array(x, chunks=(1, 4, 5, 8, 4)), w, stride=2, lhs_dilation=(1, 2, 1))
        assert_conv_close(client.compute(y).result(), x, w, stride=2, lhs_dilation=(1, 2, 1))


def test_empty_batch_chunks_and_an_empty_batch():
    """`x[mask]` then `compute_chunk_sizes()` leaves chunks of no samples; N = 0 gives an empty result,
    as on NumPy."""
    rng = np.random.default_rng(3)
    x, w, bias = rng.standard_normal((3, 4, 5, 4, 2)), rng.standard_normal((3, 3, 3, 2, 3)), rng.standard_normal(3)
    y = nbconv.conv3d(da.from_array(x, chunks=((0, 1, 0, 2), (2, 2), 5, 4, 2)), w, bias=bias, padding=1)
    assert_conv_close(y.compute(), x, w, bias=bias, padding=1)
    for channel_first in (False, True):
        empty = np.zeros((0, 2, 4, 5, 4) if channel_first else (0, 4, 5, 4, 2), np.float32)
        y = nbconv.conv3d(da.from_array(empty, chunks=2), w, channel_first=channel_first)
        want = nbconv.conv3d(empty, w, channel_first=channel_first)
        assert y.compute().shape == want.shape == y.shape and y.dtype == want.dtype


def test_out_is_refused_for_a_dask_x():
    with pytest.raises(TypeError, match="out= takes a NumPy or device array"):
        nbconv.conv3d(da.zeros((1, 4, 4, 4, 2), chunks=2), np.zeros((1, 1, 1, 2, 2)), out=np.zeros((1, 4, 4, 4, 2)))


def test_nbconv_imports_dask_only_for_dask_arrays():
    code = ("import sys, numpy as np, nbconv; nbconv.conv3d(np.ones((1, 2, 2, 2, 4)), np.ones((1, 1, 1, 4, 4))); "
            "print('dask' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.split() == ["False"], result.stdout + result.stderr


def test_blocks_of_a_killed_worker_are_computed_again():
    """A worker dies holding results (os._exit in it): the scheduler reruns the tasks of the blocks it
    held, from the graph, and the result is still the convolution."""
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, 16, 16, 16, 4)), rng.standard_normal((3, 3, 3, 4, 4))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        y = client.persist(nbconv.conv3d(da.from_array(x, chunks=8), w, padding=1))
        distributed.wait(y)
        holders = {worker for workers in client.who_has(y).values() for worker in workers}
        victim = sorted(holders)[0]
        client.run(os._exit, 1, workers=[victim], on_error="ignore")  # it dies before it can answer
        assert_conv_close(y.compute(), x, w, padding=1)


def _boxes_match_the_reference(source, result, w, boxes):
    """Boxes of a stride-1 SAME convolution stored in Zarr, each against the reference of its input
    window (zeros beyond the volume's edges, as SAME pads): the volume is too large to check whole."""
    x, y = zarr.open_array(str(source), mode="r"), zarr.open_array(str(result), mode="r")
    half = w.shape[0] // 2
    for box in boxes:
        lows = [max(0, a - half) for a, _ in box]
        highs = [min(n, b + half) for (_, b), n in zip(box, x.shape[1:4])]
        pads = [(half - (a - lo), half - (hi - b)) for (a, b), lo, hi in zip(box, lows, highs)]
        window = x[(0, *(slice(lo, hi) for lo, hi in zip(lows, highs)))]
        assert_conv_close(y[(0, *(slice(a, b) for a, b in box))], window, w, padding=pads)


def test_a_zarr_volume_larger_than_the_workers_memory(tmp_path):
    """Out of core: a 1.25 GiB Zarr volume through two workers of 512 MiB each (their Python alone
    takes about 240 MiB), read lazily, convolved and written back to Zarr. No worker goes above its
    memory limit (each process's peak resident memory, VmHWM, and no worker was restarted), and sampled
    boxes of the result (the volume's corners, chunk borders inside it) equal the reference."""
    source, result = tmp_path / "volume.zarr", tmp_path / "features.zarr"
    w = np.random.default_rng(8).standard_normal((3, 3, 3, 4, 4)).astype(np.float32)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="512MiB",
                                       dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        volume = da.random.default_rng(9).standard_normal((1, 320, 512, 512, 4), chunks=(1, 64, 64, 64, 4),
                                                          dtype=np.float32)
        client.compute(volume.to_zarr(str(source), compressors=None, compute=False)).result()
        workers = set(client.scheduler_info()["workers"])
        x = da.from_zarr(str(source))
        assert x.nbytes > 2 * 512 * 2**20
        y = nbconv.conv3d(x, w, padding="SAME")
        # Compiled here, into Numba's on-disk cache, which the workers load (docs/volumes.md):
        # a worker compiling them itself peaks ~45 MiB higher.
        y.blocks[0, 0, 0, 0, 0].compute(scheduler="sync")
        client.compute(y.to_zarr(str(result), compressors=None, compute=False)).result()
        assert set(client.scheduler_info()["workers"]) == workers, "a worker was restarted"
        peaks = client.run(peak_memory)
    assert max(peaks.values()) < 512 * 2**20, peaks
    _boxes_match_the_reference(source, result, w, [((0, 9), (0, 9), (0, 9)), ((311, 320), (503, 512), (503, 512)),
                                                    ((60, 70), (120, 132), (250, 260))])


class _DieOnce(distributed.WorkerPlugin):
    """Kills its worker (os._exit, no goodbye) once it has computed 3 output blocks, once per test:
    a file marks the death, since the worker that replaces it gets the plugin too."""

    def __init__(self, mark):
        self.mark, self.blocks = str(mark), 0

    def transition(self, key, start, finish, **kwargs):
        # a block's key, "nbconv-conv3d-...", or "nbconv-store-map-..." once Dask fused the store into it
        if finish == "memory" and isinstance(key, tuple) and str(key[0]).startswith(("nbconv-conv3d", "nbconv-store")):
            self.blocks += 1
            if self.blocks == 3 and not os.path.exists(self.mark):
                open(self.mark, "w").close()
                os._exit(1)


def test_a_zarr_run_survives_a_killed_worker(tmp_path):
    """A worker dies in the middle of a Zarr-to-Zarr run: the scheduler runs its tasks again
    elsewhere (and on its replacement), the run completes and the result is the convolution."""
    source, result = tmp_path / "volume.zarr", tmp_path / "features.zarr"
    rng = np.random.default_rng(10)
    da.from_array(rng.standard_normal((1, 32, 32, 32, 4)).astype(np.float32), chunks=8).to_zarr(str(source))
    w = rng.standard_normal((3, 3, 3, 4, 4)).astype(np.float32)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        client.register_plugin(_DieOnce(tmp_path / "died"))
        client.compute(nbconv.conv3d(da.from_zarr(str(source)), w, padding="SAME").to_zarr(str(result),
                                                                                           compute=False)).result()
    assert (tmp_path / "died").exists()
    _boxes_match_the_reference(source, result, w, [((0, 32),) * 3])


def test_the_volume_command():
    """`python -m nbconv volume`: makes a Zarr volume, convolves it on a LocalCluster and reports the
    throughput, the dashboard and each worker's peak memory against its limit."""
    command = [sys.executable, "-m", "nbconv", "volume", "--shape", "1,24,32,32,4", "--chunks", "16",
               "--memory-limit", "1GiB", "--out-channels", "6"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "convolved (1, 24, 32, 32, 4) -> (1, 24, 32, 32, 6)" in result.stdout, result.stdout
    assert "dashboard: http" in result.stdout and result.stdout.count("MiB, limit 1024 MiB") == 2, result.stdout
