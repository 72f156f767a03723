"""asv benchmarks: every public workload (nbconv/tools/workloads.json) on the CPU and its gradients (and those of
grouped layers down to depthwise, nbconv/tools/groups.json), the 1-D, 2-D and transposed workloads
(nbconv/tools/family.json) forward and backward, the layers,
first-call compile time, and CUDA (skipped where no GPU is present). Kernels are warmed in `setup`, so that
`asv run --quick` (one call) never times compilation."""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import nbconv
from nbconv.tools.timing import interleaved_medians, median_seconds
from nbconv.tools.workloads import load_workloads

WORKLOADS = load_workloads()
NAMES = list(WORKLOADS)
GROUPS = load_workloads("groups")
FAMILY = load_workloads("family")


class _Conv3d:
    """conv3d on every workload; subclasses set up the operands and `run` one call."""

    params = [NAMES]
    param_names = ["workload"]
    timeout = 300

    def time_conv3d(self, name):
        self.run()

    def track_gflops(self, name):
        return self.workload.flops / median_seconds(self.run) / 1e9

    track_gflops.unit = "GFLOP/s"


class Conv3dCPU(_Conv3d):
    def setup(self, name):
        self.workload = WORKLOADS[name]
        self.x, self.w = self.workload.arrays()
        self.run()

    def run(self):
        return nbconv.conv3d(self.x, self.w, backend="cpu", **self.workload.options)

    def peakmem_conv3d(self, name):
        self.run()


class FamilyCPU(Conv3dCPU):
    """conv1d, conv2d and the transposed convolutions of nbconv/tools/family.json (a transposed layer
    is its convolution with the stride as input dilation)."""

    params = [list(FAMILY)]

    def setup(self, name):
        self.workload = FAMILY[name]
        self.x, self.w = self.workload.arrays()
        self.run()

    def run(self):
        return self.workload.conv(self.x, self.w, backend="cpu")


class Conv3dBackward:
    """The gradients (conv3d_vjp's dx and dw) on every workload, for a fixed random dy."""

    params = [NAMES]
    param_names = ["workload"]
    timeout = 300
    workloads = WORKLOADS

    def setup(self, name):
        self.workload = self.workloads[name]
        self.x, self.w = self.workload.arrays()
        self.dy = np.random.default_rng(1).standard_normal(self.workload.out_shape).astype(self.x.dtype)
        self.run()

    def run(self):
        return self.workload.vjp(self.x, self.w, self.dy, wrt=("x", "w"), backend="cpu")

    def time_vjp(self, name):
        self.run()

    def track_gflops(self, name):
        return 2 * self.workload.flops / median_seconds(self.run) / 1e9

    track_gflops.unit = "GFLOP/s (twice the forward's)"


class Conv3dBackwardGroups(Conv3dBackward):
    """The gradients of grouped layers from 16 output channels a group to depthwise, and channel
    multipliers (nbconv/tools/groups.json), and dw alone over the forward: where the weight gradient
    packs several groups into a vector."""

    params = [list(GROUPS)]
    workloads = GROUPS

    def track_dw_over_forward(self, name):
        """Timed in turn (`interleaved_medians`), so that a slow spell of the machine falls on both."""
        options = self.workload.options
        times = interleaved_medians({
            "dw": lambda: nbconv.conv3d_vjp(self.x, self.w, self.dy, wrt="w", backend="cpu", **options),
            "forward": lambda: nbconv.conv3d(self.x, self.w, backend="cpu", **options)}, repeats=9)
        return times["dw"] / times["forward"]

    track_dw_over_forward.unit = "dw time / forward time"


class FamilyBackward(Conv3dBackward):
    """The gradients of the 1-D, 2-D and transposed workloads (nbconv/tools/family.json)."""

    params = [list(FAMILY)]
    workloads = FAMILY


class AfterIdle:
    """One conv3d into a preallocated `out` after 20 or 200 ms without work (a loop doing other things
    between layers, a service waiting for requests): the worker threads have gone to sleep
    (docs/threads.md, "Calls after idle")."""

    params = [["medical_s2", "depthwise_c64"], [0.02, 0.2]]
    param_names = ["workload", "idle_seconds"]
    timeout = 300

    def setup(self, name, idle):
        wl = WORKLOADS[name]
        x, w = wl.arrays()
        out = nbconv.conv3d(x, w, backend="cpu", **wl.options)
        self.run = lambda: nbconv.conv3d(x, w, backend="cpu", out=out, **wl.options)

    def track_ms_after_idle(self, name, idle):
        times = []
        for _ in range(15):
            time.sleep(idle)
            start = time.perf_counter()
            self.run()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    track_ms_after_idle.unit = "ms"


class Layers:
    """Forward passes of the layers on the seed shapes; ScaledWSConv3d includes standardizing."""

    params = [["Conv3d", "ScaledWSConv3d"], ["video_c3", "medical_s2", "grouped_g8"]]
    param_names = ["layer", "workload"]
    timeout = 300

    def setup(self, layer, name):
        wl = WORKLOADS[name]
        cls = getattr(nbconv, layer)
        self.layer = cls(wl.shape, wl.out_channels, wl.kernel, groups=wl.groups, backend="cpu",
                         b_init=nbconv.init.ZeroInit(), **{k: v for k, v in wl.options.items() if k != "groups"})
        self.x = wl.arrays()[0]
        self.layer(self.x)

    def time_forward(self, layer, name):
        self.layer(self.x)


class JaxLayer:
    """brainstate's Conv3d on nbconv (nbconv.jax) under jax.jit: the forward, and a training step
    (gradients in the parameters and the input, SGD update), as `python -m nbconv bench --jax` times
    them (nbconv/tools/jax_bench.py); not run where jax and brainstate are not installed."""

    params = [NAMES]
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        try:
            import brainstate  # noqa: F401 - jax_bench imports it where it builds the layers
            import jax

            from nbconv.tools import jax_bench
        except ImportError as err:
            raise NotImplementedError(f"nbconv.jax needs the jax extra: {err}") from err
        jax.config.update("jax_enable_x64", True)
        wl = WORKLOADS[name]
        x, w = wl.arrays()
        with jax_bench.precision(wl):  # built and traced in the workload's dtype
            self.forward, self.step = jax_bench.runners(jax_bench.layers(wl, w)[1], jax.device_put(x))
            self.forward(), self.step()

    def time_forward(self, name):
        self.forward()

    def time_training_step(self, name):
        self.step()


class WeightStandardization:
    params = [[(3, 3, 3, 64, 64), (3, 3, 3, 1, 64), (5, 5, 5, 128, 256)]]
    param_names = ["kernel_shape"]

    def setup(self, shape):
        self.w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        nbconv.weight_standardization(self.w)

    def time_weight_standardization(self, shape):
        nbconv.weight_standardization(self.w)


FIRST_CALL = """
import time; start = time.perf_counter()
import numpy as np, nbconv
nbconv.conv3d(np.ones((1, 4, 4, 4, 8), np.float32), np.ones((3, 3, 3, 8, 8), np.float32))
print(time.perf_counter() - start)
"""


class FirstCall:
    """Seconds from a fresh interpreter to the end of the first conv3d: 'cold' compiles into an empty
    Numba cache, 'warm' loads what the cold run cached."""

    params = [["cold", "warm"]]
    param_names = ["cache"]
    number = 1
    repeat = 1
    timeout = 600

    def setup(self, cache):
        self.cache_dir = tempfile.mkdtemp(prefix="nbconv-asv-cache-")
        if cache == "warm":
            self._first_call()

    def _first_call(self):
        env = {**os.environ, "NUMBA_CACHE_DIR": self.cache_dir}
        out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True, capture_output=True,
                             text=True)
        return float(out.stdout.strip().splitlines()[-1])

    def track_first_call_seconds(self, cache):
        return self._first_call()

    track_first_call_seconds.unit = "s"


def _gpu():
    """numba.cuda, or NotImplementedError (asv skips the benchmark) where no GPU is present."""
    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not cuda.is_available():
        raise NotImplementedError("no CUDA GPU here")
    return cuda


class Conv3dCUDA(_Conv3d):
    def setup(self, name):
        cuda = _gpu()
        self.workload = WORKLOADS[name]
        x, w = self.workload.arrays()
        self.x, self.w = cuda.to_device(x), cuda.to_device(w)
        self.run()

    def run(self):
        from numba import cuda

        nbconv.conv3d(self.x, self.w, backend="cuda", **self.workload.options)
        cuda.synchronize()


class Conv3dBackwardCUDA(Conv3dBackward):
    """The gradients on the GPU, device arrays in and out (nothing visits the host)."""

    def setup(self, name):
        cuda = _gpu()
        super().setup(name)
        self.x, self.w, self.dy = (cuda.to_device(a) for a in (self.x, self.w, self.dy))
        self.run()

    def run(self):
        from numba import cuda

        nbconv.conv3d_vjp(self.x, self.w, self.dy, wrt=("x", "w"), backend="cuda", **self.workload.options)
        cuda.synchronize()
