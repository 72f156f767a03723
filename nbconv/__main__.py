"""`python -m nbconv`: convolve the seed example shapes on the CPU and report what was achieved.
`python -m nbconv bench ...`: the peer comparison (see nbconv/tools/bench.py).
`python -m nbconv volume ...`: a layer over a Zarr volume on a dask.distributed cluster (nbconv/tools/volume.py).
`python -m nbconv train ...`: a two-layer network trained in NumPy with the layers' vjp (nbconv/tools/training.py).
`python -m nbconv device-check --out DIR`: the CUDA tests, bench and kernels' report on a GPU
(nbconv/tools/device_check.py)."""
import argparse
import sys
import time
from functools import partial

import nbconv
from nbconv.cpu.microkernel import TARGET
from nbconv.tools.timing import median_seconds
from nbconv.tools.workloads import SEED_CASES, load_workloads


def run_seed_cases(names=SEED_CASES):
    workloads = load_workloads()
    print(f"nbconv {nbconv.__version__}, CPU backend, {nbconv.get_num_threads()} threads, "
          f"compile target {TARGET.describe()}")
    print(f"{'case':<14}{'input':<21}{'output':<22}{'first call':>11}{'median':>10}{'GFLOP/s':>8}"
          f"{'with out=':>11}{'GFLOP/s':>8}")
    for name in names:
        wl = workloads[name]
        x, w = wl.arrays()
        start = time.perf_counter()
        y = nbconv.conv3d(x, w, backend="cpu", **wl.options)
        first = time.perf_counter() - start
        fresh = median_seconds(partial(nbconv.conv3d, x, w, backend="cpu", **wl.options))
        reused = median_seconds(partial(nbconv.conv3d, x, w, backend="cpu", out=y, **wl.options))
        flops = wl.flops / 1e9
        print(f"{name:<14}{str(x.shape):<21}{str(y.shape):<22}{first * 1e3:>9.1f}ms{fresh * 1e3:>8.2f}ms"
              f"{flops / fresh:>8.1f}{reused * 1e3:>9.2f}ms{flops / reused:>8.1f}")
    print("first call: compilation (or loading Numba's on-disk cache) and one run. median: of 5 timed\n"
          "runs after it, each returning a new array (from 4 MiB on in the memory of the dropped one:\n"
          "docs/performance.md); with out=: writing into the same array.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from nbconv.tools.bench import main as bench
        return bench(argv[1:])
    if argv[:1] == ["volume"]:
        from nbconv.tools.volume import main as volume
        return volume(argv[1:])
    if argv[:1] == ["device-check"]:
        from nbconv.tools.device_check import main as device_check
        return device_check(argv[1:])
    if argv[:1] == ["train"]:
        from nbconv.tools.training import main as train
        return train(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m nbconv", description=__doc__)
    parser.add_argument("cases", nargs="*", default=list(SEED_CASES),
                        help="workload names from workloads.json (default: the seed examples)")
    cases = parser.parse_args(argv).cases
    unknown = [name for name in cases if name not in load_workloads()]
    if unknown:
        parser.error(f"unknown case {', '.join(map(repr, unknown))}; the cases are {', '.join(load_workloads())}")
    run_seed_cases(cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
