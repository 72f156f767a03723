"""Peer comparison: nbconv against PyTorch CPU (oneDNN, channels_last_3d), ONNX Runtime (MLAS), OpenVINO
(its oneDNN) and JAX/XLA, in one process.

`python -m nbconv bench [--set public|heldout|smoke|groups] [--workloads a,b] [--peers torch,onnxruntime,openvino,jax]
[--repeats 7] [--json out.json] [--plot out.png] [--backward | --jax] [--backend cpu|cuda]`
(--backward: the gradients, conv3d_vjp's dx and dw, against PyTorch autograd's backward, and nbconv's
dx and dw each over its forward; --jax:
brainstate's Conv1d/2d/3d under jax.jit, XLA against nbconv.jax, nbconv/tools/jax_bench.py; --backend cuda:
the CUDA kernels against PyTorch CUDA and JAX on the GPU, nbconv/tools/cuda_bench.py.)
Each peer's output is first checked against nbconv's, so the table compares the same computation.
Peers that are not installed are left out of the table.
"""
import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import nbconv
from nbconv.cpu.microkernel import TARGET
from nbconv.tools.peak import fma_peak_gflops
from nbconv.tools.timing import interleaved_medians
from nbconv.tools.torch_peer import to_first, to_last, torch_backward_runner, torch_runner, transposed_weights
from nbconv.tools.workloads import SETS, load_workloads


def nbconv_runner(wl, x, w):
    return lambda: wl.conv(x, w, backend="cpu")


def onnx_model(wl, w):
    """An ONNX graph of the workload's convolution in its native NC... layout, w as an initializer:
    Conv, or for input dilation ConvTranspose (stride = lhs_dilation, flipped kernel, as for torch).
    None where ONNX has no such operator (negative or, transposed, too large pads) or no float64 Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n, g, axes = wl.spatial, wl.geometry, wl.axes
    if wl.dtype != "float32" or min(p for pair in axes.pads for p in pair) < 0:
        return None
    k_eff = [(k - 1) * r + 1 for k, r in zip(axes.kernel, axes.rhs_dilation)]
    if max(axes.lhs_dilation) > 1:
        if max(axes.stride) > 1 or any(max(pair) > k - 1 for pair, k in zip(axes.pads, k_eff)):
            return None
        weights = transposed_weights(wl, w)
        pads = [k - 1 - pair[end] for end in (0, 1) for k, pair in zip(k_eff, axes.pads)]
        node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=list(axes.lhs_dilation), pads=pads,
                                dilations=list(axes.rhs_dilation), group=g.groups)
    else:
        weights = w.transpose(n + 1, n, *range(n))
        pads = [lo for lo, _ in axes.pads] + [hi for _, hi in axes.pads]
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(axes.stride), pads=pads,
                                dilations=list(axes.rhs_dilation), group=g.groups)
    batch, *spatial, cin = wl.x_shape
    graph = helper.make_graph(
        [node], wl.name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ascontiguousarray(weights), "w")])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnxruntime_runner(wl, x, w, threads):
    """ONNX Runtime's CPU provider on x in NCDHW (the transposes are not timed)."""
    import onnxruntime

    model = onnx_model(wl, w)
    if model is None:
        return None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Its threads would otherwise spin after each run, on the cores the next runner timed needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    xn = np.ascontiguousarray(x.transpose(to_first(wl.spatial)))
    return lambda: session.run(None, {"x": xn})[0].transpose(to_last(wl.spatial))


def openvino_runner(wl, x, w, threads):
    """OpenVINO's CPU plugin on the same ONNX graph, held to float32 arithmetic (it would pick bf16 on
    CPUs that have it), x in NCDHW."""
    import openvino

    model = onnx_model(wl, w)
    if model is None:
        return None
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    xn = np.ascontiguousarray(x.transpose(to_first(wl.spatial)))

    def run():
        request.infer([xn], share_inputs=True)
        return request.get_output_tensor(0).data.transpose(to_last(wl.spatial))
    return run


def jax_runner(wl, x, w):
    import jax

    jax.config.update("jax_enable_x64", True)
    axes, spatial = wl.axes, "DHW"[3 - wl.spatial:]
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
        a, b, axes.stride, axes.pads, lhs_dilation=axes.lhs_dilation, rhs_dilation=axes.rhs_dilation,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"), feature_group_count=wl.groups))
    xj, wj = jax.device_put(x), jax.device_put(w)
    return lambda: conv(xj, wj).block_until_ready()


# name -> (module to import, factory(wl, x, w, threads))
PEERS = {
    "torch": ("torch", torch_runner),
    "onnxruntime": ("onnxruntime", onnxruntime_runner),
    "openvino": ("openvino", openvino_runner),
    "jax": ("jax", lambda wl, x, w, threads: jax_runner(wl, x, w)),
}


def peers(threads, names=None):
    """name -> factory(wl, x, w) for the peers (of `names`, default all) importable here."""
    found = {}
    for name in names or PEERS:
        module, factory = PEERS[name]
        try:
            __import__(module)
        except ImportError:
            continue
        found[name] = lambda wl, x, w, factory=factory: factory(wl, x, w, threads)
    return found


def measure(wl, factories, repeats):
    """GFLOP/s of every runner on one workload, timed in turn (`_timed_row`)."""
    x, w = wl.arrays()
    runners = {"nbconv": nbconv_runner(wl, x, w)}
    runners.update((name, make(wl, x, w)) for name, make in factories.items())
    return _timed_row(wl, runners, wl.flops, repeats)


def measure_backward(wl, threads, repeats, with_torch):
    """GFLOP/s of the whole backward, dx and dw (twice the forward's FLOPs), of nbconv's conv3d_vjp
    and PyTorch autograd's, for a random dy; and, timed in the same rounds, nbconv's dx alone and dw
    alone over its forward (`dx/fwd`, `dw/fwd`)."""
    x, w = wl.arrays()
    dy = np.random.default_rng(1).standard_normal(wl.out_shape).astype(x.dtype)

    def vjp(*wrt):
        return lambda: wl.vjp(x, w, dy, wrt=wrt, backend="cpu")[0 if wrt[0] == "x" else 1]
    runners = {"nbconv": vjp("x", "w"), "forward": nbconv_runner(wl, x, w), "dx": vjp("x"), "dw": vjp("w")}
    if with_torch:
        runners["torch"] = torch_backward_runner(wl, x, w, dy, threads)
    row = _timed_row(wl, runners, 2 * wl.flops, repeats, checked=("nbconv", "torch"))
    forward, dx, dw = (row.pop(name) for name in ("forward", "dx", "dw"))
    return {**row, "dx/fwd": forward / dx, "dw/fwd": forward / dw}  # (of speeds: the times' ratios)


def _timed_row(wl, runners, flops, repeats, checked=None):
    """All runners run (and those `checked`, default all, are checked against nbconv) once before any is
    timed, so that no runner pays for another's first call (compilation, thread pools, first-touch
    pages)."""
    runners = {name: run for name, run in runners.items() if run is not None}
    want = np.asarray(runners["nbconv"]())
    tol = 1e-3 if wl.dtype == "float32" else 1e-10
    for name, run in runners.items():
        result = np.asarray(run())
        if name in (checked or runners) and not np.allclose(result, want, rtol=tol, atol=tol * np.abs(want).max()):
            raise AssertionError(f"{name} disagrees with nbconv on {wl.name}")
    row = {"workload": wl.name, "gflop": flops / 1e9}
    for name, seconds in interleaved_medians(runners, repeats).items():
        row[name] = flops / seconds / 1e9
    return row


def format_table(rows, peer_names, ratios=()):
    """The rows' GFLOP/s and nbconv's speed over each peer's; `ratios`: further columns of each row
    (nbconv's times over its own forward's, `measure_backward`)."""
    head = f"{'workload':<15}{'GFLOP':>7}{'nbconv':>9}" + "".join(f"{p[:11]:>12}" for p in peer_names)
    head += "".join(f"{'/' + p[:11]:>13}" for p in peer_names) + "".join(f"{r:>9}" for r in ratios)
    lines = ["GFLOP/s, medians; '/peer' = nbconv speed / peer speed ('-': the peer has no such convolution)", head]
    for row in rows:
        cells = f"{row['workload']:<15}{row['gflop']:>7.2f}{row['nbconv']:>9.1f}"
        cells += "".join(f"{row[p]:>12.1f}" if p in row else f"{'-':>12}" for p in peer_names)
        cells += "".join(f"{row['nbconv'] / row[p]:>12.2f}x" if p in row else f"{'-':>13}" for p in peer_names)
        cells += "".join(f"{row[r]:>8.2f}x" for r in ratios)
        lines.append(cells)
    return "\n".join(lines)


def plot(rows, peer_names, path, title=None, labels=None):
    """A bar chart of every runner's GFLOP/s per workload, log scale (needs matplotlib); `labels`
    maps runner names to legend labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, labels = ["nbconv", *peer_names], labels or {}
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [row.get(name) or np.nan for row in rows]  # not measured: no bar
        ax.bar(np.arange(len(rows)) + i * width, values, width, label=labels.get(name, name))
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [row["workload"] for row in rows], rotation=20)
    ax.set_ylabel("GFLOP/s")
    ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Environment variables that change what the kernels (or the peers) compile for, or how they thread.
_SETTINGS = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "ONEDNN_MAX_CPU_ISA",
             "ATEN_CPU_CAPABILITY", "XLA_FLAGS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def experiment(argv):
    """Where and how a run was made, for its JSON file: date, commit, CPU, cores, command, settings."""
    root = Path(__file__).resolve().parents[2]
    commit = "unknown"
    # Only a checkout of nbconv itself (an editable install): an installed copy under a virtual
    # environment inside another repository would otherwise report that repository's commit.
    if (root / ".git").exists() and (root / "pyproject.toml").exists():
        try:
            commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True,
                                    text=True, timeout=10).stdout.strip() or commit
        except OSError:
            pass
    return {"date": time.strftime("%Y-%m-%d"), "commit": commit, "cpu_model": _cpu_model(), "cores": os.cpu_count(),
            "command": shlex.join(["python", "-m", "nbconv", "bench", *argv]),
            "environment": {name: os.environ[name] for name in _SETTINGS if name in os.environ}}


def _cpu_model():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m nbconv bench", description=__doc__)
    parser.add_argument("--set", default="public", choices=list(SETS),
                        help="public: workloads.json; heldout: shapes nothing is tuned for; smoke: the public "
                             "kinds at tiny sizes (the CUDA simulator); groups: 16 channels a group to "
                             "depthwise (--backward); family, family_heldout: 1-D, 2-D and transposed layers")
    parser.add_argument("--workloads", help="comma-separated names (default: all of the set)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=nbconv.get_num_threads())
    parser.add_argument("--peers", help=f"comma-separated peers (default: those installed of {','.join(PEERS)})")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--plot", help="write a bar chart to this PNG file (needs matplotlib)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--backward", action="store_true",
                      help="time the gradients (dx and dw, conv3d_vjp) against PyTorch autograd's backward")
    kind.add_argument("--jax", action="store_true",
                      help="brainstate's Conv1d/2d/3d under jax.jit: XLA against nbconv.jax, forward and training step")
    parser.add_argument("--backend", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: the CUDA kernels on device arrays against PyTorch CUDA and JAX on the GPU "
                             "(nbconv/tools/cuda_bench.py)")
    args = parser.parse_args(argv)
    if args.jax and (args.peers or args.plot):
        parser.error("--jax compares XLA and nbconv.jax only: it takes no --peers and no --plot")
    if args.backend == "cuda" and (args.jax or args.plot):
        parser.error("--backend cuda compares with PyTorch CUDA and JAX on the GPU: no --jax or --plot")
    if args.set.startswith("family") and args.backend == "cuda":
        parser.error(f"--set {args.set} runs on the CPU (--backward and --jax too); --backend cuda takes the "
                     "3-D sets")
    if args.backend == "cuda" and args.peers and not set(args.peers.split(",")) <= {"torch", "jax", "none"}:
        parser.error(f"--peers with --backend cuda: some of torch,jax, or none; got {args.peers!r}")
    nbconv.set_num_threads(args.threads)
    workloads = load_workloads(args.set)
    names = args.workloads.split(",") if args.workloads else list(workloads)
    if args.backend == "cuda":
        return _cuda_main(args, argv, [workloads[name] for name in names])
    peak = fma_peak_gflops(args.threads)
    if args.jax:  # before the peers are imported: their thread pools would share the cores
        return _jax_main(args, argv, [workloads[name] for name in names], peak)
    factories = peers(args.threads, args.peers.split(",") if args.peers else None)
    if args.backward:
        factories = {name: factories[name] for name in factories if name == "torch"}
        rows = [measure_backward(workloads[name], args.threads, args.repeats, "torch" in factories) for name in names]
    else:
        rows = [measure(workloads[name], factories, args.repeats) for name in names]
    print(f"nbconv {nbconv.__version__}, {args.threads} threads; compile target {TARGET.describe()}; "
          f"peak {peak:.0f} GFLOP/s float32 (register-only multiply-add loop, nbconv.tools.peak)")
    if args.backward:
        print("backward: dx and dw, GFLOP/s counting twice the forward's FLOPs; dx/fwd, dw/fwd: nbconv's "
              "time for dx alone and dw alone over its forward's")
    print(format_table(rows, list(factories), ("dx/fwd", "dw/fwd") if args.backward else ()))
    if args.json:
        write_json(args, argv, peak, rows, backward=args.backward)
    if args.plot:
        plot(rows, list(factories), args.plot)
    return 0


def _jax_main(args, argv, workloads, peak):
    import jax

    from nbconv.tools import jax_bench

    jax.config.update("jax_enable_x64", True)  # the float64 workloads; float32 ones stay float32
    overhead = jax_bench.call_overhead(args.repeats)  # first, in a process that has run nothing large
    rows = [jax_bench.measure(wl, args.repeats) for wl in workloads]
    print(f"nbconv {nbconv.__version__}, jax {jax.__version__}, {args.threads} threads; compile target "
          f"{TARGET.describe()}; peak {peak:.0f} GFLOP/s float32")
    print(jax_bench.format_table(rows, overhead))
    if args.json:
        write_json(args, argv, peak, rows, jax=jax.__version__, small_call_us=overhead)
    return 0


def _cuda_main(args, argv, workloads):
    """`--backend cuda`: print the table, write the JSON file asked for; exit code 1 if a workload failed."""
    from nbconv.tools import cuda_bench

    named = args.peers.split(",") if args.peers else list(cuda_bench.PEERS)
    peers = [name for name in named if name in cuda_bench.PEERS]  # "none": no peer
    header, rows, columns, failures = cuda_bench.run(workloads, args.repeats, args.backward, peers)
    print(header)
    print(cuda_table(rows, columns, failures))
    if args.json:
        line, peak = cuda_bench.gpu()
        write_json(args, argv, peak, rows, backend="cuda", gpu=line, backward=args.backward, failures=failures)
    return 1 if failures else 0


def cuda_table(rows, columns, failures):
    """`format_table` of a CUDA run, and a line under it for each workload that failed."""
    return format_table(rows, columns) + "".join(f"\nFAILED {failure}" for failure in failures)


def write_json(args, argv, peak, rows, **kind):
    """A run's rows with its target, peak, threads, set and experiment, and `kind` (what ran), to args.json.

    The experiment is taken before the file is opened: opening it empties it, and a checkout's own
    results file, emptied, would make its commit read "dirty".
    """
    result = {"target": TARGET._asdict(), "fma_peak_gflops": peak, "threads": args.threads, "set": args.set,
              **kind, **experiment(argv), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
