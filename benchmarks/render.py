"""Render the peer benchmark's JSON results as the documentation's current tables and plots.

    python benchmarks/render.py                       # every benchmarks/results/*.json ->
                                                      # docs/performance/current.md + NAME.png
    python benchmarks/render.py --readme benchmarks/results/X.json   # a compact README block
    python benchmarks/render.py --readme X.json --part experiment    # (or --part table) one half

benchmarks/results/jax/*.json (`python -m nbconv bench --jax --json FILE`) become
docs/performance/jax.md, which docs/jax.md includes: per workload, milliseconds of brainstate's
Conv3d under jax.jit on XLA and on nbconv.jax, and of nbconv on NumPy arrays.

Each JSON file is what `python -m nbconv bench --json FILE` writes: the compile target, the
measured FMA peak, threads, set, date, commit, CPU model, cores, the command and the environment
variables that forced a target, and one row per workload with GFLOP/s per runner. current.md gets
one section per file: the experiment (where, when, how) and a table (workload, GFLOP, nbconv's and
each peer's GFLOP/s, nbconv / the best peer), followed by a bar chart of the same numbers
(log scale). docs/performance.md includes current.md.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "docs" / "performance"
# Peers in the order of the table's columns; any other key of a row is shown after them.
PEERS = ("torch", "onnxruntime", "openvino", "jax")
NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "jax": "JAX"}
NOT_PEERS = {"workload", "gflop", "nbconv"}


def load(path):
    """The JSON result at `path`, with its peers listed (those measured in any row)."""
    result = json.loads(Path(path).read_text())
    rows = result.get("rows", [])
    keys = {key for row in rows for key in row} - NOT_PEERS
    result["peers"] = [p for p in PEERS if p in keys] + sorted(keys - set(PEERS))
    result["name"] = Path(path).stem
    return result


def number(value):
    """GFLOP/s as the tables print them: whole numbers from 10, one decimal from 1, else two digits."""
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def best_peer(row, peers):
    """(name, GFLOP/s) of the fastest peer measured in `row`, or None."""
    measured = [(row[p], p) for p in peers if row.get(p)]
    return (max(measured)[1], max(measured)[0]) if measured else None


def ratio_cell(row, peers):
    best = best_peer(row, peers)
    if best is None or not row.get("nbconv"):
        return "-"
    return f"{row['nbconv'] / best[1]:.2f}x ({NAMES.get(best[0], best[0])})"


def target_text(result):
    target = result.get("target", {})
    if not target:
        return "unknown"
    isa = f"{8 * target.get('vector_bytes', 0)}-bit vectors x {target.get('registers', '?')}"
    fma = "FMA" if target.get("fma") else "no FMA"
    return f"`{target.get('cpu', '?')}` ({isa}, {fma}; {target.get('triple', '?')})"


def environment_text(result):
    env = result.get("environment") or {}
    return " ".join(f"{k}={v}" for k, v in sorted(env.items())) if env else ""


def what(result):
    """A short name of the measurement: set, and direction or what ran."""
    if "jax" in result:
        return f"{result.get('set', 'public')} set, brainstate's Conv3d under jax.jit (jax {result['jax']})"
    direction = "backward (dx and dw)" if result.get("backward") else "forward"
    return f"{result.get('set', 'public')} set, {direction}"


def experiment(result):
    """The experiment block of one result as a two-column Markdown table."""
    cores, threads = result.get("cores"), result.get("threads")
    lines = [
        "| | |",
        "|---|---|",
        f"| CPU | {result.get('cpu_model', 'unknown')} |",
        f"| cores / threads used | {cores if cores is not None else '?'} / {threads if threads is not None else '?'} |",
        f"| compile target | {target_text(result)} |",
        f"| measured FMA peak | {number(result.get('fma_peak_gflops'))} GFLOP/s float32 |",
        f"| workloads | {what(result)} |",
        f"| date, commit | {result.get('date', '?')}, `{result.get('commit', '?')}` |",
    ]
    if environment_text(result):
        lines.append(f"| environment | `{environment_text(result)}` |")
    lines.append(f"| command | `{result.get('command', '?')}` |")
    return "\n".join(lines)


def table(result):
    """Workload, GFLOP, nbconv's and each peer's GFLOP/s, nbconv / the best peer."""
    peers = result["peers"]
    head = ["workload", "GFLOP", "nbconv", *(NAMES.get(p, p) for p in peers), "nbconv / best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.get("rows", []):
        cells = [row.get("workload", "?"), f"{row.get('gflop', 0):.2f}", number(row.get("nbconv")),
                 *(number(row.get(p)) for p in peers), ratio_cell(row, peers)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result, path):
    """The run's bar chart (`nbconv.tools.bench.plot`), titled with where and when it was made."""
    from nbconv.tools.bench import plot as bar_chart

    title = (f"{result.get('cpu_model', '?')}, target {result.get('target', {}).get('cpu', '?')}, {what(result)}, "
             f"{result.get('date', '?')} ({result.get('commit', '?')})")
    bar_chart(result.get("rows", []), result["peers"], path, title=title, labels=NAMES)


def section(result, image):
    title = f"### {result['name']}: {result.get('cpu_model', 'unknown CPU')}, {what(result)}"
    parts = [title, experiment(result), table(result)]
    if image:
        parts.append(f"![{result['name']}: GFLOP/s per workload, log scale]({image})")
    return "\n\n".join(parts)


def render(results_dir=RESULTS, out_dir=OUT, plots=True, image_prefix="performance/"):
    """Write out_dir/current.md (and out_dir/NAME.png per result); -> the paths of the results."""
    paths = sorted(Path(results_dir).glob("*.json"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(out_dir.glob("*.png")) - {out_dir / f"{path.stem}.png" for path in paths}:
        stale.unlink()  # the plot of a result that is gone (the folder holds generated files only)
    header = ("<!-- Generated by benchmarks/render.py from benchmarks/results/*.json: do not edit. -->\n\n"
              "GFLOP/s are medians; \"nbconv / best peer\" is against the fastest peer of the same run.\n")
    if not paths:
        body = ("No results yet. Run `python -m nbconv bench --repeats 7 --json benchmarks/results/NAME.json`, "
                "then `python benchmarks/render.py`.")
        (out_dir / "current.md").write_text(header + "\n" + body + "\n")
        return paths
    sections = []
    for path in paths:
        result = load(path)
        image = None
        if plots:
            plot(result, out_dir / f"{result['name']}.png")
            image = f"{image_prefix}{result['name']}.png"
        sections.append(section(result, image))
    (out_dir / "current.md").write_text(header + "\n" + "\n\n".join(sections) + "\n")
    return paths


JAX_COLUMNS = (("forward xla", "forward: XLA"), ("forward nbconv.jax", "nbconv.jax"), ("forward numpy", "NumPy"),
               ("forward fill", "XLA fill"), ("step xla", "step: XLA"), ("step nbconv.jax", "nbconv.jax"),
               ("step numpy", "NumPy"))


def milliseconds(value):
    """Whole milliseconds from 100, one decimal from 1, else two digits."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def jax_table(result):
    """Milliseconds per workload, XLA / nbconv.jax and nbconv.jax / NumPy for the forward and the step."""
    head = ["workload", *(label for _, label in JAX_COLUMNS), "XLA / nbconv.jax (fwd, step)",
            "nbconv.jax / NumPy (fwd, step)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.get("rows", []):
        cells = [row["workload"], *(milliseconds(row[key]) for key, _ in JAX_COLUMNS)]
        cells += [", ".join(f"{row[f'{kind} xla'] / row[f'{kind} nbconv.jax']:.1f}x" for kind in ("forward", "step")),
                  ", ".join(f"{row[f'{kind} nbconv.jax'] / row[f'{kind} numpy']:.2f}x" for kind in ("forward", "step"))]
        lines.append("| " + " | ".join(cells) + " |")
    small = result.get("small_call_us", {})
    if small:
        lines += ["", f"A small call, (1, 8, 8, 8, 16) -> 16 channels: `nbconv.conv3d` {small['numpy']:.0f} us, "
                  f"jitted `nbconv.jax.conv3d` {small['jit']:.0f} us ({small['jit'] - small['numpy']:.0f} us more)."]
    return "\n".join(lines)


def render_jax(results_dir=RESULTS / "jax", out=OUT / "jax.md"):
    """Write docs/performance/jax.md from the --jax results; -> their paths."""
    paths = sorted(Path(results_dir).glob("*.json"))
    header = ("<!-- Generated by benchmarks/render.py from benchmarks/results/jax/*.json: do not edit. -->\n\n"
              "Milliseconds, medians of interleaved runs in one process.\n")
    sections = []
    for path in paths:
        result = load(path)
        sections.append(f"### {result['name']}: {result.get('cpu_model', 'unknown CPU')}\n\n{experiment(result)}\n\n"
                        f"{jax_table(result)}")
    Path(out).write_text(header + "\n" + ("\n\n".join(sections) or "No results yet.") + "\n")
    return paths


def readme(path, part="both"):
    """A compact block for README.md: one line of experiment (`part` "experiment"), the table without
    GFLOP ("table"), or both."""
    result = load(path)
    peak = number(result.get("fma_peak_gflops"))
    target = result.get("target", {})
    env = environment_text(result)
    lines = [f"{result.get('cpu_model', 'unknown CPU')}, {result.get('threads', '?')} threads, target "
             f"`{target.get('cpu', '?')}`, FMA peak {peak} GFLOP/s, {result.get('date', '?')} at "
             f"`{result.get('commit', '?')}`" + (f", `{env}`" if env else "") + "."]
    if part == "experiment":
        return lines[0]
    lines = [] if part == "table" else [lines[0], ""]
    peers = result["peers"]
    head = ["workload", "nbconv", *(NAMES.get(p, p) for p in peers), "/ best peer"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.get("rows", []):
        cells = [row.get("workload", "?"), number(row.get("nbconv")), *(number(row.get(p)) for p in peers),
                 ratio_cell(row, peers)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of JSON results (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="where current.md and the PNGs go (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    parser.add_argument("--readme", type=Path, metavar="JSON", help="print a compact README block for one result")
    parser.add_argument("--part", choices=("both", "experiment", "table"), default="both",
                        help="with --readme: the experiment line, the table, or both (default)")
    args = parser.parse_args(argv)
    if args.readme:
        print(readme(args.readme, args.part))
        return 0
    paths = render(args.results, args.out, plots=not args.no_plots)
    print(f"{args.out / 'current.md'}: {len(paths)} result(s)", file=sys.stderr)
    paths = render_jax(args.results / "jax", args.out / "jax.md")
    print(f"{args.out / 'jax.md'}: {len(paths)} result(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
