"""`python -m nbconv device-check --out DIR`: what a session with a GPU must measure, in one command and
one report, DIR/device-check.md (docs/gpu.md):

1. the device: name, clocks, FP32 peak;
2. the CUDA test suites on it: the simulator's cases (tests/test_cudasim.py's suites, with
   NBCONV_CUDA_TESTS=device), from a clone of the repository;
3. the CUDA bench, forward and backward (nbconv/tools/cuda_bench.py), with its JSON rows;
4. per kernel compiled: registers, local memory (spills), shared memory, and occupancy, theoretical
   from the driver and achieved from Nsight Compute where `ncu` is on PATH.

The report is rewritten after every part, so a run cut short keeps what it measured. Under
NUMBA_ENABLE_CUDASIM=1 it runs end to end (CI: --set smoke and a few tests) and says that nothing ran
on a GPU.
"""
import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from numba import config as numba_config
from numba import cuda

import nbconv
from nbconv.cuda import kernels
from nbconv.tools import bench, cuda_bench
from nbconv.tools.workloads import SETS, load_workloads

ROOT = Path(__file__).resolve().parents[2]
# Threads per block of each kernel, as nbconv.cuda launches them (for the occupancy).
BLOCK_THREADS = {"conv_tiled": kernels.THREADS, "conv_channels": kernels.CHANNEL_BLOCK,
                 "weight_grad_tiled": kernels.THREADS, "weight_grad_channels": kernels.CHANNEL_BLOCK,
                 "column_sums": kernels.CHANNEL_BLOCK, "sum_splits": 256, "standardize_columns": kernels.WS_THREADS,
                 "flip_swap": 256, "relayout": 256}
NCU_METRIC = "sm__warps_active.avg.pct_of_peak_sustained_active"
TESTS = "tests/test_cudasim.py::test_cuda_backend_suites"


class Report:
    """The markdown report, written again after each section."""

    def __init__(self, path):
        self.path, self.parts = path, []

    def add(self, title, text):
        self.parts.append(f"## {title}\n\n{text.rstrip()}\n")
        self.path.write_text("\n".join(self.parts))
        print(f"[device-check] {title}: done ({self.path})", flush=True)


def run_tests(selection, timeout):
    """The CUDA suites through tests/test_cudasim.py, on the device (in the simulator under it)."""
    if not (ROOT / TESTS.split("::")[0]).exists():
        return "Not run: the tests come with a clone of the repository (run this command from one)."
    target = "simulator" if numba_config.ENABLE_CUDASIM else "device"
    env = {**os.environ, "NBCONV_CUDA_TESTS": target, "NBCONV_CUDA_TESTS_FILTER": selection or ""}
    start = time.perf_counter()
    output, code = _run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TESTS], timeout, env)
    tail = "\n".join(output.strip().splitlines()[-60:])
    return (f"On the {target}{f', tests matching {selection!r}' if selection else ''}: exit code {code}, "
            f"{time.perf_counter() - start:.0f} s.\n\n```\n{tail}\n```")


def _run(command, timeout, env=None):
    """(output, exit code or "timeout") of `command` in the repository, in its own process group: on a
    timeout its children (the suites' pytest, the profiled bench) go too."""
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        return child.communicate(timeout=timeout)[0], child.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended in between
            pass
        return f"{child.communicate()[0]}\nstopped after {timeout} s", "timeout"


def run_bench(workloads, repeats, backward):
    header, rows, columns, failures = cuda_bench.run(workloads, repeats, backward)
    table = bench.cuda_table(rows, columns, failures)
    return f"{header}\n\n```\n{table}\n```\n\n```json\n{json.dumps(rows, indent=1)}\n```"


def kernel_resources(achieved):
    """A table of every kernel specialisation compiled so far in this process."""
    if numba_config.ENABLE_CUDASIM:
        return "Not available in the simulator (no compiled kernels)."
    device = cuda.get_current_device()
    lines = ["| kernel | signature | registers | local bytes (spills) | shared bytes | blocks/SM | "
             "theoretical occupancy | achieved occupancy |", "|---|---|---|---|---|---|---|---|"]
    for name, dispatcher in _dispatchers():
        threads = BLOCK_THREADS[name]
        for signature, kernel in dispatcher.overloads.items():
            blocks = kernel.max_cooperative_grid_blocks(threads) // device.MULTIPROCESSOR_COUNT
            occupancy = blocks * threads / device.MAX_THREADS_PER_MULTIPROCESSOR
            lines.append(f"| {name} | {', '.join(map(str, signature))} | {kernel.regs_per_thread} | "
                         f"{kernel.local_mem_per_thread} | {kernel.shared_mem_per_block} | {blocks} | "
                         f"{occupancy:.0%} | {achieved.get(name, '-')} |")
    return "\n".join(lines)


def _dispatchers():
    for table in kernels.KERNELS.values():
        for name in table._fields:
            yield name, getattr(table, name)
    yield "flip_swap", kernels.flip_swap
    yield "relayout", kernels.relayout


def achieved_occupancy(set_name, timeout):
    """({kernel: mean achieved occupancy}, a note) from Nsight Compute over a forward and a backward
    bench run of nbconv alone (no peers: cuDNN's autotuning would crawl under the profiler)."""
    ncu = shutil.which("ncu")
    if numba_config.ENABLE_CUDASIM or ncu is None:
        return {}, "Achieved occupancy: not measured (`ncu`, Nsight Compute, is not on PATH)."
    values, problems = {}, []
    for kind in ([], ["--backward"]):
        command = [ncu, "--csv", "--metrics", NCU_METRIC, "--launch-count", "60",
                   "-k", f"regex:{'|'.join(BLOCK_THREADS)}", sys.executable, "-m", "nbconv", "bench",
                   "--backend", "cuda", "--set", set_name, "--repeats", "1", "--peers", "none", *kind]
        output, code = _run(command, timeout // 2)
        if code != 0:
            problems.append(f"ncu {' '.join(kind) or '(forward)'} exited with {code}: {output.strip()[-500:]}")
        for row in csv.DictReader(line for line in output.splitlines() if line.startswith('"')):
            name = next((k for k in BLOCK_THREADS if k in row.get("Kernel Name", "")), None)
            if name and row.get("Metric Name") == NCU_METRIC:
                values.setdefault(name, []).append(float(row["Metric Value"].replace(",", "")))
    means = {name: f"{sum(v) / len(v):.0f}%" for name, v in values.items()}
    note = f"Achieved occupancy: `{NCU_METRIC}` from ncu, the mean over each kernel's launches."
    return means, "\n\n".join([note, *problems])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv device-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder for device-check.md")
    parser.add_argument("--set", default="public", choices=list(SETS), help="the bench's workloads (default public)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tests", default="", help="only the tests matching this pytest -k expression")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds the tests may take (default 300)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "device-check.md")
    workloads = list(load_workloads(args.set).values())
    sections = {
        "Device": lambda: f"nbconv {nbconv.__version__}, numba {_version('numba')}, numba-cuda "
                          f"{_version('numba-cuda')}, torch {_version('torch')}, jax {_version('jax')}.\n\n"
                          f"{cuda_bench.gpu()[0]}",
        "CUDA tests": lambda: run_tests(args.tests, args.test_timeout),
        "Bench, forward": lambda: run_bench(workloads, args.repeats, False),
        "Bench, backward": lambda: run_bench(workloads, args.repeats, True),
        "Kernels": lambda: _kernels_section(args.set),
    }
    failed = False
    for title, make in sections.items():
        try:
            text = make()
        except Exception:  # reported in its section; the next sections still run
            text, failed = f"Failed:\n\n```\n{traceback.format_exc()}\n```", True
        report.add(title, text)
    return 1 if failed else 0


def _kernels_section(set_name):
    achieved, note = achieved_occupancy(set_name, timeout=240)
    return f"{kernel_resources(achieved)}\n\n{note}"


def _version(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
