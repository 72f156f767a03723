"""A slow, obviously correct NumPy 3-D convolution, for tests and for users who want to check a result.

It shares no code with the kernels: it inserts the dilation zeros, pads, and sums one einsum per
kernel tap in extended precision (``np.longdouble``). A product is only formed with a real input
element: taps that land on padding or on an inserted zero contribute nothing, as in
``jax.lax.conv_general_dilated`` (this matters for NaN and Inf weights).
"""
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# The option types of `nbconv.conv3d`, written out here: this module shares nothing with the package.
Ints = int | Sequence[int]
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]


def conv3d_reference(x: ArrayLike, w: ArrayLike, stride: Ints = 1, padding: Padding = "SAME",
                     lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1, bias: ArrayLike | None = None,
                     channel_first: bool = False) -> np.ndarray:
    """Convolve as `nbconv.conv3d` does, slowly and plainly: a result to check others against.

    Parameters
    ----------
    x, w, stride, padding, lhs_dilation, rhs_dilation, groups, bias, channel_first
        As in `nbconv.conv3d` (there is no backend and no ``out``).

    Returns
    -------
    ndarray
        The result in float64, summed in ``np.longdouble``.
    """
    x = np.asarray(x, np.longdouble)
    w = np.asarray(w, np.longdouble)
    if channel_first:
        x = np.moveaxis(x, -4, -1)
    batched = x.ndim == 5
    x = x if batched else x[None]
    stride, lhs, rhs = (_three(v) for v in (stride, lhs_dilation, rhs_dilation))
    kernel = w.shape[:3]
    sizes = x.shape[1:4]
    pads = _explicit_pads(padding, sizes, kernel, stride, lhs, rhs)

    real = np.ones(x.shape[:4] + (1,), bool)
    x, real = _dilate(x, lhs), _dilate(real, lhs)
    x, real = _pad(x, pads), _pad(real, pads)

    k_eff = [(k - 1) * r + 1 for k, r in zip(kernel, rhs)]
    out_sizes = [max((x.shape[1 + a] - k_eff[a]) // stride[a] + 1, 0) for a in range(3)]
    cin_g, cout = w.shape[3], w.shape[4]
    out = np.zeros((x.shape[0], *out_sizes, groups, cout // groups), np.longdouble)
    wg = w.reshape(*kernel, cin_g, groups, cout // groups)
    # No input channel has no product to sum (NumPy's einsum can leave a longdouble sum over nothing unset).
    for tap in np.ndindex(*kernel) if cin_g else ():
        window = _window(x, tap, rhs, stride, out_sizes)
        present = _window(real, tap, rhs, stride, out_sizes)
        xs = window.reshape(*window.shape[:4], groups, cin_g)
        part = np.einsum("ndhwgi,igo->ndhwgo", xs, wg[tap])
        out += np.where(present[..., None], part, 0)
    out = out.reshape(*out.shape[:4], cout)
    if bias is not None:
        out = out + np.asarray(bias, np.longdouble).reshape(-1)
    if channel_first:
        out = np.moveaxis(out, -1, 1)
    return np.asarray(out if batched else out[0], np.float64)


def conv3d_vjp_reference(x: ArrayLike, w: ArrayLike, dy: ArrayLike, stride: Ints = 1, padding: Padding = "SAME",
                         lhs_dilation: Ints = 1, rhs_dilation: Ints = 1, groups: int = 1,
                         channel_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Compute (dx, dw) of `conv3d_reference` with the cotangent dy, by transposing its steps.

    Each tap's products go back to the window they came from (dx, on the dilated and padded input,
    whose padding and inserted zeros are then dropped) or are summed against the window (dw), where it
    holds a real input: like the forward, no product is formed with padding or an inserted zero, so a
    NaN or Inf in dy reaches dw only through the inputs its taps read (as in JAX).

    Parameters
    ----------
    x, w, dy : array_like
        The forward operands and the cotangent of its result.
    stride, padding, lhs_dilation, rhs_dilation, groups, channel_first
        As in `nbconv.conv3d`.

    Returns
    -------
    dx, dw : ndarray
        In float64, summed in ``np.longdouble``.
    """
    x, w, dy = (np.asarray(a, np.longdouble) for a in (x, w, dy))
    if channel_first:
        x, dy = np.moveaxis(x, -4, -1), np.moveaxis(dy, -4, -1)
    batched = x.ndim == 5
    x, dy = (x, dy) if batched else (x[None], dy[None])
    stride, lhs, rhs = (_three(v) for v in (stride, lhs_dilation, rhs_dilation))
    kernel, sizes = w.shape[:3], x.shape[1:4]
    pads = _explicit_pads(padding, sizes, kernel, stride, lhs, rhs)
    spread = _pad(_dilate(x, lhs), pads)
    real = _pad(_dilate(np.ones(x.shape[:4] + (1,), bool), lhs), pads)
    out_sizes = dy.shape[1:4]
    cin_g, cout = w.shape[3], w.shape[4]
    wg = w.reshape(*kernel, cin_g, groups, cout // groups)
    dyg = dy.reshape(*dy.shape[:4], groups, cout // groups)
    d_spread = np.zeros_like(spread)
    dw = np.zeros_like(wg)
    # An empty dy has no product to sum (NumPy's einsum can leave a longdouble sum over nothing unset).
    for tap in np.ndindex(*kernel) if dy.size else ():
        window = _window(spread, tap, rhs, stride, out_sizes)
        xs = window.reshape(*window.shape[:4], groups, cin_g)
        present = _window(real, tap, rhs, stride, out_sizes)[..., None]  # (n, d, h, w, 1, 1)
        dw[tap] = np.einsum("ndhwgi,ndhwgo->igo", xs, np.where(present, dyg, 0))
        d_window = _window(d_spread, tap, rhs, stride, out_sizes)  # a view: distinct elements per tap
        d_window += np.einsum("ndhwgo,igo->ndhwgi", dyg, wg[tap]).reshape(d_window.shape)
    dilated_shape = (x.shape[0], *((n - 1) * d + 1 for n, d in zip(sizes, lhs)), x.shape[4])
    dx = _unpad(d_spread, pads, dilated_shape)[:, ::lhs[0], ::lhs[1], ::lhs[2]]
    if channel_first:
        dx = np.moveaxis(dx, -1, 1)
    return np.asarray(dx if batched else dx[0], np.float64), np.asarray(dw.reshape(w.shape), np.float64)


def _unpad(a, pads, shape):
    """Invert `_pad` for gradients.

    The elements of `a` that lie on the unpadded array of `shape`, zeros where `_pad` cropped.
    """
    out = np.zeros(shape, a.dtype)
    source, target = [slice(None)], [slice(None)]
    for axis, (lo, _) in enumerate(pads):
        first, end = max(lo, 0), min(a.shape[1 + axis], lo + shape[1 + axis])  # `a` positions on the input
        source.append(slice(first, max(end, first)))
        target.append(slice(first - lo, max(end, first) - lo))
    out[tuple(target)] = a[tuple(source)]
    return out


def _three(v):
    v = tuple(np.atleast_1d(v).tolist())
    return v * 3 if len(v) == 1 else v


def _explicit_pads(padding, sizes, kernel, stride, lhs, rhs):
    if isinstance(padding, str) and padding.upper() == "VALID":
        return [(0, 0)] * 3
    if isinstance(padding, str):
        pads = []
        for n, k, s, dil_in, dil_k in zip(sizes, kernel, stride, lhs, rhs):
            n_eff, k_eff = (n - 1) * dil_in + 1, (k - 1) * dil_k + 1
            total = max((-(-n_eff // s) - 1) * s + k_eff - n_eff, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    p = np.array(padding).reshape(-1, 2) if np.ndim(padding) == 2 else np.array(padding).reshape(-1, 1)
    p = np.broadcast_to(p, (3, 2))
    return [tuple(int(v) for v in row) for row in p]


def _dilate(a, lhs):
    shape = [a.shape[0]] + [(n - 1) * dil + 1 for n, dil in zip(a.shape[1:4], lhs)] + [a.shape[4]]
    out = np.zeros(shape, a.dtype)
    out[:, ::lhs[0], ::lhs[1], ::lhs[2]] = a
    return out


def _pad(a, pads):
    grow = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)]
    a = np.pad(a, grow)
    crop = [slice(None)] + [slice(max(-lo, 0), a.shape[1 + i] - max(-hi, 0))
                            for i, (lo, hi) in enumerate(pads)] + [slice(None)]
    return a[tuple(crop)]


def _window(a, tap, rhs, stride, out_sizes):
    index = [slice(None)]
    for t, r, s, o in zip(tap, rhs, stride, out_sizes):
        index.append(slice(t * r, t * r + (o - 1) * s + 1, s) if o > 0 else slice(0, 0))
    return a[tuple(index)]
