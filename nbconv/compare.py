"""Peer comparison: nbconv against PyTorch CPU (oneDNN, channels_last_3d) and JAX/XLA, in one process.

`python -m nbconv bench [--workloads a,b] [--repeats 7] [--json out.json] [--plot out.png]`
Each peer's output is first checked against nbconv's, so the table compares the same computation.
Peers that are not installed are left out of the table.
"""
import argparse
import json
import platform

import numpy as np

import nbconv
from nbconv.timing import interleaved_medians, median_seconds
from nbconv.workloads import load_workloads


def nbconv_runner(wl, x, w):
    return lambda: nbconv.conv3d(x, w, backend="cpu", **wl.options)


def torch_runner(wl, x, w, threads):
    """torch.nn.functional.conv3d on channels_last_3d tensors; input dilation as conv_transpose3d
    (stride = lhs_dilation, flipped kernel); asymmetric padding by an explicit F.pad."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    g = wl.geometry
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # NDHWC memory = channels_last_3d
    if max(g.lhs_dilation) > 1:
        k_eff = [(k - 1) * r + 1 for k, r in zip(g.kernel, g.rhs_dilation)]
        pads = [k - 1 - lo for k, (lo, hi) in zip(k_eff, g.pads)]
        if any(lo != hi for lo, hi in g.pads) or min(pads) < 0:
            return None
        flipped = np.ascontiguousarray(w[::-1, ::-1, ::-1])  # (K, K, K, Cin/g, Cout)
        cout_g = g.out_channels // g.groups
        wt = flipped.reshape(*g.kernel, g.in_channels // g.groups, g.groups, cout_g)
        wt = np.ascontiguousarray(wt.transpose(4, 3, 5, 0, 1, 2).reshape(g.in_channels, cout_g, *g.kernel))
        wt = torch.from_numpy(wt)
        return lambda: F.conv_transpose3d(xt, wt, stride=g.lhs_dilation, padding=pads, groups=g.groups,
                                          dilation=g.rhs_dilation).permute(0, 2, 3, 4, 1)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 0, 1, 2, 3))).permute(0, 4, 1, 2, 3)
    symmetric = all(lo == hi for lo, hi in g.pads)
    padding = [lo for lo, _ in g.pads] if symmetric else 0
    torch_pads = [p for lo_hi in reversed(g.pads) for p in lo_hi]

    def run():
        xi = xt if symmetric else F.pad(xt, torch_pads)
        return F.conv3d(xi, wt, stride=g.stride, padding=padding, dilation=g.rhs_dilation,
                        groups=g.groups).permute(0, 2, 3, 4, 1)
    return run


def jax_runner(wl, x, w):
    import jax

    jax.config.update("jax_enable_x64", True)
    g = wl.geometry
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
        a, b, g.stride, g.pads, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=g.groups))
    xj, wj = jax.device_put(x), jax.device_put(w)
    return lambda: conv(xj, wj).block_until_ready()


def peers(threads):
    """name -> factory(wl, x, w) for the peers importable here."""
    found = {}
    try:
        import torch  # noqa: F401
        found["torch"] = lambda wl, x, w: torch_runner(wl, x, w, threads)
    except ImportError:
        pass
    try:
        import jax  # noqa: F401
        found["jax"] = jax_runner
    except ImportError:
        pass
    return found


def sgemm_gflops(threads):
    """The machine's practical peak: a 2048^3 float32 matrix product (PyTorch's MKL when present)."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    try:
        import torch
        torch.set_num_threads(threads)
        ta = torch.from_numpy(a)
        seconds = median_seconds(lambda: ta @ ta)
    except ImportError:
        seconds = median_seconds(lambda: a @ a)
    return 2 * n**3 / seconds / 1e9


def measure(wl, factories, repeats):
    """GFLOP/s of every runner on one workload, timed in turn. All run (and are checked) once before
    any is timed, so that no runner pays for another's first call (compilation, thread pools,
    first-touch pages)."""
    x, w = wl.arrays()
    flops = wl.flops
    runners = {"nbconv": nbconv_runner(wl, x, w)}
    runners.update((name, make(wl, x, w)) for name, make in factories.items())
    runners = {name: run for name, run in runners.items() if run is not None}
    want = np.asarray(runners["nbconv"]())
    tol = 1e-3 if wl.dtype == "float32" else 1e-10
    for name, run in runners.items():
        if not np.allclose(np.asarray(run()), want, rtol=tol, atol=tol * np.abs(want).max()):
            raise AssertionError(f"{name} disagrees with nbconv on {wl.name}")
    row = {"workload": wl.name, "gflop": flops / 1e9}
    for name, seconds in interleaved_medians(runners, repeats).items():
        row[name] = flops / seconds / 1e9
    return row


def format_table(rows, peer_names, peak):
    head = f"{'workload':<15}{'GFLOP':>7}{'nbconv':>9}" + "".join(f"{p:>9}" for p in peer_names)
    head += "".join(f"{'/' + p:>9}" for p in peer_names)
    lines = [f"GFLOP/s, medians; '/peer' = nbconv speed / peer speed. sgemm peak: {peak:.0f} GFLOP/s", head]
    for row in rows:
        cells = f"{row['workload']:<15}{row['gflop']:>7.2f}{row['nbconv']:>9.1f}"
        cells += "".join(f"{row[p]:>9.1f}" if p in row else f"{'-':>9}" for p in peer_names)
        cells += "".join(f"{row['nbconv'] / row[p]:>8.2f}x" if p in row else f"{'-':>9}" for p in peer_names)
        lines.append(cells)
    return "\n".join(lines)


def plot(rows, peer_names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["nbconv", *peer_names]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(len(rows)) + i * width, [r.get(name, 0) for r in rows], width, label=name)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r["workload"] for r in rows], rotation=20)
    ax.set_ylabel("GFLOP/s")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv bench", description=__doc__)
    parser.add_argument("--workloads", help="comma-separated names (default: all)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=nbconv.get_num_threads())
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--plot", help="write a bar chart to this PNG file (needs matplotlib)")
    args = parser.parse_args(argv)
    nbconv.set_num_threads(args.threads)
    workloads = load_workloads()
    names = args.workloads.split(",") if args.workloads else list(workloads)
    factories = peers(args.threads)
    peak = sgemm_gflops(args.threads)
    rows = [measure(workloads[name], factories, args.repeats) for name in names]
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, nbconv {nbconv.__version__}")
    print(format_table(rows, list(factories), peak))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sgemm_gflops": peak, "threads": args.threads, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, list(factories), args.plot)
    return 0
