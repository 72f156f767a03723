"""`python -m nbconv`: convolve the seed example shapes on the CPU and report what was achieved.
`python -m nbconv bench ...`: the peer comparison (see nbconv/compare.py)."""
import argparse
import sys
import time

import nbconv
from nbconv.timing import median_seconds, workload_flops
from nbconv.workloads import SEED_CASES, load_workloads


def run_seed_cases(names=SEED_CASES):
    workloads = load_workloads()
    print(f"nbconv {nbconv.__version__}, CPU backend, {nbconv.get_num_threads()} threads")
    print(f"{'case':<12} {'input':<22} {'output':<22} {'first call':>11} {'median':>10} {'GFLOP/s':>8}")
    for name in names:
        wl = workloads[name]
        x, w = wl.arrays()
        start = time.perf_counter()
        y = nbconv.conv3d(x, w, backend="cpu", **wl.options)
        first = time.perf_counter() - start
        seconds = median_seconds(lambda: nbconv.conv3d(x, w, backend="cpu", **wl.options))
        gflops = workload_flops(wl) / seconds / 1e9
        print(f"{name:<12} {str(x.shape):<22} {str(y.shape):<22} {first * 1e3:>9.1f}ms "
              f"{seconds * 1e3:>8.2f}ms {gflops:>8.1f}")
    print("first call = compile or load from the on-disk cache + one run; median of 5 timed runs after it")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from nbconv.compare import main as bench
        return bench(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m nbconv", description=__doc__)
    parser.add_argument("cases", nargs="*", default=list(SEED_CASES),
                        help="workload names from workloads.json (default: the seed examples)")
    run_seed_cases(parser.parse_args(argv).cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
