"""PyTorch as a peer: its convolution of a workload on NC... tensors in channels-last memory, with
the workload's number of spatial axes, forward and autograd backward, on the CPU or a CUDA device;
shared by the CPU bench (nbconv/tools/bench.py) and the CUDA bench (nbconv/tools/cuda_bench.py).
torch is imported only when a runner is made."""
import numpy as np


def torch_runner(wl, x, w, threads, device="cpu"):
    """torch.nn.functional.conv1d/2d/3d on channels-last tensors (`torch_conv`) on `device`."""
    import torch

    torch.set_num_threads(threads)
    made = torch_conv(wl, w)
    if made is None:
        return None
    wt, conv = made
    xt = torch.from_numpy(x).to(device).permute(*to_first(wl.spatial))  # NDHWC memory = channels_last_3d
    wt = wt.to(device)  # keeps its channels-last strides
    return lambda: conv(xt, wt)


def torch_conv(wl, w):
    """(w as a torch tensor, conv(xt, wt) -> the channels-last result) for x as NC... tensors; input
    dilation as conv_transpose (stride = lhs_dilation, flipped kernel); asymmetric padding by an explicit
    F.pad. None where torch has no such convolution."""
    import torch
    import torch.nn.functional as F

    n, g, axes = wl.spatial, wl.geometry, wl.axes
    last = to_last(n)
    if max(axes.lhs_dilation) > 1:
        k_eff = [(k - 1) * r + 1 for k, r in zip(axes.kernel, axes.rhs_dilation)]
        pads = [k - 1 - lo for k, (lo, hi) in zip(k_eff, axes.pads)]
        if any(lo != hi for lo, hi in axes.pads) or min(pads) < 0:
            return None
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
        return torch.from_numpy(transposed_weights(wl, w)), lambda xt, wt: transpose(
            xt, wt, stride=axes.lhs_dilation, padding=pads, groups=g.groups, dilation=axes.rhs_dilation
        ).permute(*last)
    # (O, *kernel, I) memory, viewed as (O, I, *kernel): channels-last weights
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(n + 1, *range(n), n))).permute(*to_first(n))
    symmetric = all(lo == hi for lo, hi in axes.pads)
    padding = [lo for lo, _ in axes.pads] if symmetric else 0
    torch_pads = [p for lo_hi in reversed(axes.pads) for p in lo_hi]
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]

    def run(xt, wt):
        xi = xt if symmetric else F.pad(xt, torch_pads)
        return conv(xi, wt, stride=axes.stride, padding=padding, dilation=axes.rhs_dilation,
                    groups=g.groups).permute(*last)
    return wt, run


def to_first(n):
    """The permutation of a channels-last array of n spatial axes to channels first."""
    return (0, n + 1, *range(1, n + 1))


def to_last(n):
    """The inverse of `to_first`."""
    return (0, *range(2, n + 2), 1)


def torch_backward_runner(wl, x, w, dy, threads, device="cpu"):
    """PyTorch autograd's backward, dx and dw: torch.autograd.grad of `torch_conv`'s result with dy,
    its graph kept between runs (the forward is not timed), on `device`. Returns dx (NDHWC)."""
    import torch

    torch.set_num_threads(threads)
    made = torch_conv(wl, w)
    if made is None:
        return None
    wt, conv = made
    xl = torch.from_numpy(x.copy()).to(device).requires_grad_()
    wt = wt.detach().to(device).clone().requires_grad_()
    y = conv(xl.permute(*to_first(wl.spatial)), wt)
    dyt = torch.from_numpy(dy).to(device)
    return lambda: torch.autograd.grad(y, (xl, wt), dyt, retain_graph=True)[0]


def transposed_weights(wl, w):
    """w (*kernel, I, O) as the weights of the transposed convolution that computes input dilation:
    (Cin, Cout / groups, *kernel), spatially flipped."""
    n, g = wl.spatial, wl.geometry
    kernel, cout_g = w.shape[:n], g.out_channels // g.groups
    flipped = w[(slice(None, None, -1),) * n].reshape(*kernel, g.in_channels // g.groups, g.groups, cout_g)
    order = (n + 1, n, n + 2, *range(n))
    return np.ascontiguousarray(flipped.transpose(order).reshape(g.in_channels, cout_g, *kernel))
