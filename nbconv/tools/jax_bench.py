"""`python -m nbconv bench --jax`: brainstate's Conv1d/2d/3d under ``jax.jit``, its convolution on XLA and
on nbconv (`nbconv.jax`), beside nbconv on NumPy arrays; one process, interleaved medians.

Per workload: the layer's forward, and a training step: the loss ``mean(y**2)``, its gradients with
respect to the parameters and to the input (what a layer inside a network needs: dx and dw), and an
SGD update of the parameters. The NumPy columns are `nbconv.conv3d` (conv1d, conv2d) and the same
step in NumPy (the convolution, the loss, its vjp for dx and dw, the update): what the bridge is
measured against.
"""
import numpy as np

from nbconv.tools.timing import interleaved_medians

RUNNERS = ("xla", "nbconv.jax", "numpy")  # and "fill" for the forward


def layers(wl, w):
    """brainstate's Conv1d/2d/3d and nbconv.jax's on the workload, with the same weights."""
    import brainstate

    import nbconv.jax

    options = dict(in_size=wl.shape, out_channels=wl.out_channels, kernel_size=wl.kernel, stride=wl.stride,
                   padding=wl.padding, lhs_dilation=wl.lhs_dilation, rhs_dilation=wl.rhs_dilation, groups=wl.groups,
                   w_init=w)
    kind = f"Conv{wl.spatial}d"
    return getattr(brainstate.nn, kind)(**options), getattr(nbconv.jax, kind)(**options)


def runners(layer, x):
    """(forward, step) of a layer on x, jitted, each a call that waits for its result; the step
    returns the loss, dx and the updated parameters."""
    import jax
    import jax.numpy as jnp

    def loss(params, x):
        return jnp.mean(layer._conv_op(x, params) ** 2)

    def step(params, x):
        value, (grads, dx) = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
        return value, dx, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

    forward, step, params = jax.jit(layer._conv_op), jax.jit(step), layer.weight.value
    return (lambda: forward(x, params).block_until_ready()), (lambda: jax.block_until_ready(step(params, x)))


def measure(wl, repeats):
    """Milliseconds of the forward and of the step, per runner, and the largest relative difference
    of nbconv.jax's results (forward, loss, dx, parameters) from XLA's."""
    with precision(wl):
        return _measure(wl, repeats)


def precision(wl):
    """The context in which to build and trace a workload's layers: brainstate casts a layer's
    input to its default float, which must be the workload's dtype."""
    import brainstate

    return brainstate.environ.context(precision=np.dtype(wl.dtype).itemsize * 8)


def _measure(wl, repeats):
    import jax

    x, w = wl.arrays()
    xj = jax.device_put(x)
    forwards, steps = {}, {}
    xla, ours = layers(wl, w)
    for name, layer in (("xla", xla), ("nbconv.jax", ours)):
        forwards[name], steps[name] = runners(layer, xj)

    def numpy_step():  # the same step in NumPy: loss, dy, dx, dw and the update
        y = wl.conv(x, w)
        loss = np.mean(y**2)
        dx, dw, _ = wl.vjp(x, w, (2 / y.size) * y, wrt=("x", "w"))
        return loss, dx, w - 0.01 * dw

    forwards["numpy"] = lambda: wl.conv(x, w)
    steps["numpy"] = numpy_step
    # XLA writing a fresh result of the forward's shape, and nothing else: a floor of every jitted
    # forward (a fresh buffer faults in every page, which nbconv's NumPy results reuse).
    fill = jax.jit(lambda x: jax.numpy.full(wl.out_shape, x.ravel()[0]))
    forwards["fill"] = lambda: fill(xj).block_until_ready()
    error = max(_relative(forwards["nbconv.jax"](), forwards["xla"]()),
                *map(_relative, jax.tree.leaves(steps["nbconv.jax"]()), jax.tree.leaves(steps["xla"]())))
    return {"workload": wl.name, "error": error,
            **{f"forward {name}": seconds * 1e3 for name, seconds in interleaved_medians(forwards, repeats).items()},
            **{f"step {name}": seconds * 1e3 for name, seconds in interleaved_medians(steps, repeats).items()}}


def call_overhead(repeats):
    """Microseconds of a small call, (1, 8, 8, 8, 16) -> 16 channels, 3x3x3 "SAME": nbconv.conv3d on
    NumPy arrays and nbconv.jax.conv3d jitted, and their difference."""
    import jax

    import nbconv.jax

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 8, 8, 8, 16), np.float32), rng.standard_normal((3, 3, 3, 16, 16), np.float32)
    xj, wj = jax.device_put(x), jax.device_put(w)
    conv = jax.jit(nbconv.jax.conv3d)
    times = interleaved_medians({"numpy": lambda: nbconv.conv3d(x, w),
                                 "jit": lambda: conv(xj, wj).block_until_ready()}, repeats, min_time=1.0)
    return {name: seconds * 1e6 for name, seconds in times.items()}


def _relative(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(b.dtype).tiny))


def format_table(rows, overhead):
    kinds = ("forward", "step")
    lines = ["milliseconds, medians. forward: the jitted layer. step: value_and_grad of mean(y**2) in the "
             "parameters and x, and an SGD update (numpy: the same with conv3d and conv3d_vjp). xla fill: a jitted "
             "function that only writes a fresh array of the forward's result shape",
             f"{'workload':<15}" + "".join(f"{kind[:4] + ' ' + name:>16}" for kind in kinds for name in RUNNERS)
             + f"{'xla fill':>10}"
             + "".join(f"{'xla/jax ' + kind[:4]:>14}" for kind in kinds)
             + "".join(f"{'jax/numpy ' + kind[:4]:>16}" for kind in kinds) + f"{'rel. error':>12}"]
    for row in rows:
        cells = "".join(f"{row[f'{kind} {name}']:>16.1f}" for kind in kinds for name in RUNNERS)
        cells += f"{row['forward fill']:>10.1f}"
        cells += "".join(f"{row[f'{kind} xla'] / row[f'{kind} nbconv.jax']:>13.1f}x" for kind in kinds)
        cells += "".join(f"{row[f'{kind} nbconv.jax'] / row[f'{kind} numpy']:>15.2f}x" for kind in kinds)
        lines.append(f"{row['workload']:<15}{cells}{row['error']:>12.1e}")
    lines.append(f"small call (1, 8, 8, 8, 16) -> 16 channels: numpy {overhead['numpy']:.0f} us, jitted nbconv.jax "
                 f"{overhead['jit']:.0f} us: {overhead['jit'] - overhead['numpy']:.0f} us more")
    return "\n".join(lines)
