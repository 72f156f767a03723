"""The peers of `python -m nbconv bench` compute the workload's convolution: ONNX Runtime and OpenVINO
on the same ONNX graph (Conv, or ConvTranspose for input dilation) in their NCDHW layout, against the
NumPy reference, on small shapes of every kind the workload sets hold; the FMA peak is a number."""
import numpy as np
import pytest

import nbconv
from nbconv.tools import bench
from nbconv.tools.workloads import Workload
from tests.support import assert_conv_close

SMALL = [
    Workload("dense", 2, (4, 6, 7, 5), 8, 3, 1, "SAME", 1, 1, 1, "float32"),
    Workload("strided", 1, (5, 7, 6, 1), 16, 3, 2, "VALID", 1, 1, 1, "float32"),
    Workload("grouped", 1, (4, 5, 6, 8), 8, 3, 1, "SAME", 1, 1, 4, "float32"),
    Workload("depthwise", 1, (4, 5, 6, 6), 6, 3, 1, "SAME", 2, 1, 6, "float32"),
    Workload("lhs_dilated", 1, (3, 4, 5, 4), 4, 3, 1, 1, 1, 2, 2, "float32"),
    Workload("even_kernel", 1, (4, 6, 6, 3), 4, 2, 1, "SAME", 1, 1, 1, "float32"),
]


@pytest.mark.parametrize("peer", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("wl", SMALL, ids=[wl.name for wl in SMALL])
def test_peer_computes_the_convolution(peer, wl):
    x, w = wl.arrays()
    run = bench.PEERS[peer][1](wl, x, w, 1)
    assert_conv_close(np.asarray(run()), x, w, **wl.options)


def test_no_onnx_graph_where_onnx_has_no_operator():
    """float64 (no double Conv in the peers' CPU kernels) and negative pads are left out."""
    f64 = Workload("f64", 1, (4, 4, 4, 2), 2, 3, 1, "SAME", 1, 1, 1, "float64")
    cropped = Workload("cropped", 1, (6, 6, 6, 2), 2, 3, 1, ((-1, 0), (0, 0), (0, 0)), 1, 1, 1, "float32")
    assert bench.onnx_model(f64, f64.arrays()[1]) is None
    assert bench.onnx_model(cropped, cropped.arrays()[1]) is None


def test_fma_peak_is_measured():
    from nbconv.tools.peak import fma_peak_gflops

    peak = fma_peak_gflops(1, seconds=0.02)
    assert 0.5 < peak < 1e4


def test_backward_row_times_the_gradients():
    """The row's GFLOP/s, and dx and dw each over the forward, timed in the same rounds; the table
    shows the ratios."""
    row = bench.measure_backward(SMALL[0], 1, 1, with_torch=False)
    assert row["workload"] == "dense" and row["gflop"] == 2 * SMALL[0].flops / 1e9 and row["nbconv"] > 0
    assert row["dx/fwd"] > 0 and row["dw/fwd"] > 0 and not {"forward", "dx", "dw"} & set(row)
    table = bench.format_table([row], [], ("dx/fwd", "dw/fwd"))
    assert table.splitlines()[-1].endswith(f"{row['dw/fwd']:.2f}x") and "dw/fwd" in table.splitlines()[1]


def test_groups_set_spans_the_group_widths():
    """`--set groups`: 16, 8, 4, 2 and 1 output channels a group, and channel multipliers."""
    from nbconv.tools.workloads import load_workloads

    widths = {wl.out_channels // wl.groups for wl in load_workloads("groups").values()}
    assert widths == {16, 8, 4, 2, 1}


@pytest.mark.parametrize("wl", SMALL, ids=[wl.name for wl in SMALL])
def test_torch_backward_computes_dx(wl):
    """PyTorch's autograd dx (where torch has the convolution) against nbconv's conv3d_vjp, itself
    tested against JAX (tests/test_gradients.py). torch is installed by hand (docs/performance.md)."""
    pytest.importorskip("torch")
    x, w = wl.arrays()
    dy = np.random.default_rng(2).standard_normal(nbconv.conv3d(x, w, **wl.options).shape).astype(np.float32)
    run = bench.torch_backward_runner(wl, x, w, dy, 1)
    if run is not None:
        want = nbconv.conv3d_vjp(x, w, dy, wrt="x", **wl.options)[0]
        np.testing.assert_allclose(run().numpy(), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
