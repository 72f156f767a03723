"""`python -m nbconv train`'s SGD loop against the same steps in brainstate (a test extra): the loss
falls, and both end with the same parameters to float32 accuracy."""
import numpy as np
import pytest

from nbconv.tools.training import make_problem, train

brainstate = pytest.importorskip("brainstate")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def train_brainstate(x, target, w1, w2, steps, lr):
    """The same network, loss and SGD steps, with brainstate's layers and its autodiff."""
    jax.config.update("jax_enable_x64", False)
    zeros = brainstate.nn.init.ZeroInit()
    first = brainstate.nn.ScaledWSConv3d(x.shape[1:], w1.shape[-1], 3, w_init=jnp.asarray(w1), b_init=zeros)
    second = brainstate.nn.ScaledWSConv3d(first.out_size, w2.shape[-1], 3, w_init=jnp.asarray(w2), b_init=zeros)
    states = {"first": first.weight, "second": second.weight}

    def loss():
        y = second(jnp.tanh(first(jnp.asarray(x))))
        return 0.5 * jnp.mean((y - target) ** 2)

    grad = brainstate.transform.grad(loss, grad_states=states, return_value=True)
    losses = []
    for _ in range(steps):
        grads, value = grad()
        losses.append(float(value))
        for key, state in states.items():
            state.value = jax.tree_util.tree_map(lambda p, g: p - lr * g, state.value, grads[key])
    return losses, (first, second)


def test_training_matches_brainstate():
    problem, steps, lr = make_problem(), 30, 0.5
    losses, ours = train(*problem, steps=steps, lr=lr)
    want_losses, theirs = train_brainstate(*problem, steps=steps, lr=lr)
    assert losses[-1] < 0.3 * losses[0]
    # float32 on both sides: 30 steps of sums of up to a few thousand terms each drift apart by a
    # few float32 ulps of the parameters' size (measured: 6e-8 to 9e-8 absolute, values up to 1).
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    for layer, reference in zip(ours, theirs):
        assert set(layer.weight.value) == set(reference.weight.value)
        for name, value in layer.weight.value.items():
            want = np.asarray(reference.weight.value[name])
            np.testing.assert_allclose(value, want, rtol=0, atol=2e-6 * max(1.0, np.abs(want).max()))
