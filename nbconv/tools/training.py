"""`python -m nbconv train`: a two-layer 3-D network (ScaledWSConv3d, tanh, ScaledWSConv3d) trained
by plain SGD in NumPy with the layers' vjp (docs/gradients.md). The task is synthetic:
learn tanh of a fixed random convolution of random volumes. tests/test_training.py runs the same
steps in brainstate and finds the same parameters."""
import argparse

import numpy as np

import nbconv


def make_problem(seed=0):
    """x (4, 8, 8, 8, 2), its target (4, 8, 8, 8, 1) and the two layers' first weights."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 8, 8, 8, 2)).astype(np.float32)
    teacher = rng.standard_normal((3, 3, 3, 2, 1)).astype(np.float32) / 6
    target = np.tanh(nbconv.conv3d(x, teacher))
    w1 = (rng.standard_normal((3, 3, 3, 2, 8)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((3, 3, 3, 8, 1)) / 8).astype(np.float32)
    return x, target, w1, w2


def train(x, target, w1, w2, steps=30, lr=0.5):
    """SGD on 0.5 * mean((net(x) - target)**2) -> (the loss before each step, the two layers)."""
    first = nbconv.ScaledWSConv3d(x.shape[1:], w1.shape[-1], 3, w_init=w1, b_init=nbconv.init.ZeroInit())
    second = nbconv.ScaledWSConv3d(first.out_size, w2.shape[-1], 3, w_init=w2, b_init=nbconv.init.ZeroInit())
    losses = []
    for _ in range(steps):
        hidden = np.tanh(first(x))
        y = second(hidden)
        losses.append(float(0.5 * np.mean((y - target) ** 2)))
        d_hidden, grads2 = second.vjp(hidden, (y - target) / y.size)
        _, grads1 = first.vjp(x, d_hidden * (1 - hidden**2))  # tanh' = 1 - tanh**2
        for layer, grads in ((first, grads1), (second, grads2)):
            for name, grad in grads.items():
                layer.weight.value[name] = layer.weight.value[name] - lr * grad
    return losses, (first, second)


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m nbconv train", description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--plot", help="write the loss curve to this PNG file (needs matplotlib)")
    args = parser.parse_args(argv)
    losses, _ = train(*make_problem(), steps=args.steps, lr=args.lr)
    for step in range(0, len(losses), 5):
        print(f"step {step:>4}: loss {losses[step]:.5f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(losses)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("loss")
        ax.set_title("ScaledWSConv3d, tanh, ScaledWSConv3d: SGD in NumPy", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
    return 0
