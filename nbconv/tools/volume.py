"""`python -m nbconv volume`: a ScaledWSConv3d over a Zarr volume on a dask.distributed LocalCluster,
out of core (docs/volumes.md).

It makes the volume (random float32, written chunk by chunk by the workers, so that it is never
whole in anyone's memory) or opens the one at --path, convolves it into another Zarr array with
Dask's progress bar, and prints the throughput, where the dashboard is, and each worker's peak
resident memory against its limit. Both arrays are stored uncompressed: random data does not
compress, and the figures are then the convolution's and the schedule's, not a codec's.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import nbconv


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m nbconv volume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_ints, default=(1, 256, 512, 512, 4),
                        help="N,D,H,W,C of the volume to make (default 1,256,512,512,4: 1 GiB)")
    parser.add_argument("--path", type=Path, help="a Zarr array (N, D, H, W, C) to convolve; made with --shape if "
                        "it does not exist (default: a temporary one, removed afterwards)")
    parser.add_argument("--chunks", type=int, default=64, help="spatial chunk edge of a made volume (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="single-threaded worker processes (default 2)")
    parser.add_argument("--memory-limit", default="auto",
                        help="per worker, as Dask writes it: '512MiB' (default: the machine's share)")
    parser.add_argument("--out-channels", type=int, default=4, help="the layer's output channels (default 4)")
    parser.add_argument("--kernel", type=int, default=3, help="the layer's kernel edge (default 3, SAME padding)")
    args = parser.parse_args(argv)
    if len(args.shape) != 5 or min(args.shape) < 1:
        parser.error(f"--shape must be five positive integers N,D,H,W,C, got {args.shape}")
    return args


def _ints(text):
    return tuple(int(part) for part in text.split(","))


def main(argv):
    args = parse(argv)
    try:
        import dask.array as da
        import distributed
    except ImportError as error:
        raise SystemExit("python -m nbconv volume needs the dask extra: "
                         f"pip install 'nbconv[dask]' ({error})") from error
    scratch = Path(tempfile.mkdtemp(prefix="nbconv-volume-"))
    source = args.path or scratch / "volume.zarr"
    try:
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                                      processes=True) as cluster, distributed.Client(cluster) as client:
            limit = min(worker["memory_limit"] for worker in client.scheduler_info()["workers"].values())
            print(f"{args.workers} workers of 1 thread, memory limit {limit / 2**20:.0f} MiB each; "
                  f"dashboard: {client.dashboard_link}")
            if not Path(source).exists():
                _make(source, args.shape, args.chunks, client)
            x = da.from_zarr(str(source))
            layer = nbconv.ScaledWSConv3d(x.shape[1:], args.out_channels, args.kernel)
            y = layer(x)
            y.blocks[(0,) * 5].compute(scheduler="sync")  # compiled here: the workers load Numba's cache
            seconds = _convolve(y, scratch / "features.zarr", client)
            _report(x, layer, seconds, client)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _make(path, shape, edge, client):
    import dask.array as da
    import distributed

    chunks = (1, edge, edge, edge, shape[4])
    volume = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
    print(f"making {path}: {shape} float32, {volume.nbytes / 2**20:.0f} MiB in {volume.npartitions} chunks")
    distributed.progress(client.compute(volume.to_zarr(str(path), compressors=None, compute=False)))
    print()


def _convolve(y, path, client):
    import distributed

    start = time.perf_counter()
    stored = client.compute(y.to_zarr(str(path), compressors=None, compute=False))
    distributed.progress(stored)
    stored.result()
    print()
    return time.perf_counter() - start


def _report(x, layer, seconds, client):
    flops = 2 * np.prod(layer.kernel_shape) * np.prod(x.shape[:4])  # stride 1, SAME: as many outputs as inputs
    print(f"convolved {x.shape} -> {(x.shape[0], *layer.out_size)} in {seconds:.2f} s: "
          f"{x.nbytes / 2**20 / seconds:.0f} MiB/s of input, {flops / seconds / 1e9:.2f} GFLOP/s (reading and "
          f"writing Zarr included)")
    peaks, workers = client.run(peak_memory), client.scheduler_info()["workers"]
    for address, peak in sorted(peaks.items()):
        print(f"  worker {address}: peak resident memory {peak / 2**20:.0f} MiB, limit "
              f"{workers[address]['memory_limit'] / 2**20:.0f} MiB")


def peak_memory():
    """This process's peak resident memory in bytes: Linux's VmHWM, the peak of its current address
    space. Not getrusage's ru_maxrss, which survives exec: a worker spawned from a large parent
    (fork, then exec) reports the parent's size there. Elsewhere ru_maxrss (macOS: bytes)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:
        import resource  # POSIX

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
