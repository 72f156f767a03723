"""The CUDA bench, `python -m nbconv bench --backend cuda [--backward]`: nbconv's CUDA kernels against
PyTorch CUDA (cuDNN, channels_last_3d, ``cudnn.benchmark``; TF32 off, and a second column with TF32
on, PyTorch's default for convolutions) and JAX on the GPU, where installed, on device arrays in and
out. Each runner's result is checked first (nbconv's against nbconv's CPU backend, the peers'
against nbconv's); then each is timed with CUDA events after a warm-up, in turn, medians of
`repeats` samples. Under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) it runs end to end on the
`smoke` set with no peers, and its times mean nothing.
"""
import time
from dataclasses import dataclass

import numpy as np
from numba import config as numba_config
from numba import cuda

import nbconv
from nbconv.tools import torch_peer

# FP32 lanes per multiprocessor, by compute capability (CUDA C Programming Guide, arithmetic
# instructions); later GPUs: 128.
FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
TF32_PEERS = {"torch": False, "torch_tf32": True}


@dataclass
class Runner:
    run: object  # () -> the result on the device
    to_host: object  # result -> NumPy array (NDHWC), for the check
    event: object  # () -> an event with record(), synchronize() and elapsed_time(other) in ms


class WallEvent:
    """An event on the host clock, for runners that block until their result is ready (JAX) and for
    the simulator, whose events measure nothing."""

    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.at - self.at) * 1e3


def gpu():
    """(a line naming the GPU, its clocks and FP32 peak; the peak in GFLOP/s, None in the simulator)."""
    if numba_config.ENABLE_CUDASIM:
        return "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): its times measure nothing", None
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    name = f"{name}, sm_{''.join(map(str, device.compute_capability))}"
    try:  # the clock attributes are deprecated from CUDA 13 on
        sms, clock_khz = device.MULTIPROCESSOR_COUNT, device.CLOCK_RATE
        bandwidth = 2 * device.MEMORY_CLOCK_RATE * device.GLOBAL_MEMORY_BUS_WIDTH / 8 / 1e6
    except AttributeError as err:
        return f"{name} (clocks unknown: {err})", None
    lanes = FP32_LANES.get(device.compute_capability, 128)
    peak = sms * lanes * 2 * clock_khz / 1e6
    return (f"{name}, {sms} SMs at {clock_khz / 1e6:.2f} GHz (boost), memory {bandwidth:.0f} GB/s; FP32 peak "
            f"{peak / 1e3:.1f} TFLOP/s ({sms} SMs x {lanes} lanes x 2 x clock)"), peak


def nbconv_runner(wl, x, w, dy=None):
    """conv3d on device arrays (or conv3d_vjp's dx and dw, with `dy`): device arrays out."""
    x_dev, w_dev = cuda.to_device(x), cuda.to_device(w)
    if dy is None:
        return Runner(lambda: nbconv.conv3d(x_dev, w_dev, **wl.options), lambda y: y.copy_to_host(), cuda.event)
    dy_dev = cuda.to_device(dy)
    return Runner(lambda: nbconv.conv3d_vjp(x_dev, w_dev, dy_dev, wrt=("x", "w"), **wl.options)[:2],
                  lambda grads: grads[0].copy_to_host(), cuda.event)


def torch_runners(wl, x, w, dy=None):
    """PyTorch CUDA with TF32 off and on (`TF32_PEERS`); {} without a CUDA PyTorch."""
    try:
        import torch
    except ImportError:
        return {}
    if numba_config.ENABLE_CUDASIM or not torch.cuda.is_available():
        return {}
    torch.backends.cudnn.benchmark = True
    threads = nbconv.get_num_threads()
    made = (torch_peer.torch_runner(wl, x, w, threads, "cuda") if dy is None
            else torch_peer.torch_backward_runner(wl, x, w, dy, threads, "cuda"))
    if made is None:
        return {}

    def with_tf32(allowed):
        def run():
            torch.backends.cudnn.allow_tf32 = allowed
            return made()
        return Runner(run, lambda y: y.detach().cpu().numpy(), lambda: torch.cuda.Event(enable_timing=True))
    return {name: with_tf32(allowed) for name, allowed in TF32_PEERS.items()}


def jax_runners(wl, x, w, dy=None):
    """JAX's convolution (XLA, cuDNN) under jax.jit on the GPU, the forward only; {} without a GPU JAX."""
    try:
        import jax
        device = jax.devices("gpu")[0]
    except (ImportError, RuntimeError):
        return {}
    if dy is not None:
        return {}
    jax.config.update("jax_enable_x64", True)
    g = wl.geometry
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
        a, b, g.stride, g.pads, lhs_dilation=g.lhs_dilation, rhs_dilation=g.rhs_dilation,
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), feature_group_count=g.groups,
        precision=jax.lax.Precision.HIGHEST))
    xj, wj = jax.device_put(x, device), jax.device_put(w, device)
    return {"jax": Runner(lambda: conv(xj, wj).block_until_ready(), np.asarray, WallEvent)}


PEERS = {"torch": torch_runners, "jax": jax_runners}


def measure(wl, repeats, backward=False, peers=tuple(PEERS), min_time=0.2):
    """One row: GFLOP/s of nbconv and of the `peers` installed (the backward counts twice the
    forward's FLOPs)."""
    x, w = wl.arrays()
    dy = np.random.default_rng(1).standard_normal(wl.geometry.out_shape).astype(x.dtype) if backward else None
    runners = {"nbconv": nbconv_runner(wl, x, w, dy)}
    for name in peers:
        runners.update(PEERS[name](wl, x, w, dy))
    _check(wl, runners, x, w, dy)
    flops = wl.flops * (2 if backward else 1)
    row = {"workload": wl.name, "gflop": flops / 1e9}
    for name, seconds in _event_medians(runners, repeats, min_time).items():
        row[name] = flops / seconds / 1e9
    return row


def _check(wl, runners, x, w, dy):
    """nbconv's CUDA result against its CPU backend's, then every peer's against nbconv's (TF32's 10-bit
    mantissa: a bound 100 times wider)."""
    if dy is None:
        want = nbconv.conv3d(x, w, backend="cpu", **wl.options)
    else:
        want, want_dw = nbconv.conv3d_vjp(x, w, dy, wrt=("x", "w"), backend="cpu", **wl.options)[:2]
        got_dw = runners["nbconv"].run()[1].copy_to_host()
        _assert_close(got_dw, want_dw, wl, "nbconv (dw)", 1)
    for name, runner in runners.items():
        _assert_close(runner.to_host(runner.run()), want, wl, name, 100 if name.endswith("tf32") else 1)


def _assert_close(got, want, wl, name, scale):
    tol = scale * (1e-3 if wl.dtype == "float32" else 1e-10)
    if not np.allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(initial=0)):
        raise AssertionError(f"{name} disagrees with nbconv's CPU backend on {wl.name}")


def _event_medians(runners, repeats, min_time):
    """Median seconds a call of each runner, from events around enough calls to last about
    `min_time` / repeats each sample; the runners take turns in a new random order every round."""
    calls = {}
    for name, runner in runners.items():
        calls[name] = max(1, int(min_time / repeats / max(_timed(runner, 1), 1e-6)))
    samples = {name: [] for name in runners}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(list(runners)):
            samples[name].append(_timed(runners[name], calls[name]))
    return {name: float(np.median(times)) for name, times in samples.items()}


def _timed(runner, calls):
    """Seconds a call, between two events around `calls` calls (the wall clock in the simulator)."""
    make = WallEvent if numba_config.ENABLE_CUDASIM else runner.event
    start, end = make(), make()
    start.record()
    for _ in range(calls):
        runner.run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def run(workloads, repeats, backward, peers=tuple(PEERS)):
    """(the header line, the rows, the peers' columns, the failures) of one bench run. A workload that
    fails (a disagreement, a CUDA error) is reported and the others still run: on a first GPU every
    row counts."""
    line, _ = gpu()
    rows, failures = [], []
    for wl in workloads:
        try:
            rows.append(measure(wl, repeats, backward, peers))
        except Exception as err:  # reported under the table
            failures.append(f"{wl.name}: {type(err).__name__}: {err}")
    columns = [name for name in ("torch", "torch_tf32", "jax") if any(name in row for row in rows)]
    kind = "backward: dx and dw, GFLOP/s counting twice the forward's FLOPs" if backward else "forward"
    return f"nbconv {nbconv.__version__} CUDA backend on {line}; {kind}", rows, columns, failures
