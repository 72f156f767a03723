"""PyTorch as a peer: its convolution of a workload on NCDHW tensors (channels_last_3d memory), forward
and autograd backward, on the CPU or a CUDA device; shared by the CPU bench (nbconv/tools/bench.py)
and the CUDA bench (nbconv/tools/cuda_bench.py). torch is imported only when a runner is made."""
import numpy as np


def torch_runner(wl, x, w, threads, device="cpu"):
    """torch.nn.functional.conv3d on channels_last_3d tensors (`torch_conv`) on `device`."""
    import torch

    torch.set_num_threads(threads)
    made = torch_conv(wl, w)
    if made is None:
        return None
    wt, conv = made
    xt = torch.from_numpy(x).to(device).permute(0, 4, 1, 2, 3)  # NDHWC memory = channels_last_3d
    wt = wt.to(device)  # keeps its channels_last_3d strides
    return lambda: conv(xt, wt)


def torch_conv(wl, w):
    """(w as a torch tensor, conv(xt, wt) -> the NDHWC result) for x as NCDHW tensors; input dilation as
    conv_transpose3d (stride = lhs_dilation, flipped kernel); asymmetric padding by an explicit F.pad.
    None where torch has no such convolution."""
    import torch
    import torch.nn.functional as F

    g = wl.geometry
    if max(g.lhs_dilation) > 1:
        k_eff = [(k - 1) * r + 1 for k, r in zip(g.kernel, g.rhs_dilation)]
        pads = [k - 1 - lo for k, (lo, hi) in zip(k_eff, g.pads)]
        if any(lo != hi for lo, hi in g.pads) or min(pads) < 0:
            return None
        return torch.from_numpy(transposed_weights(g, w)), lambda xt, wt: F.conv_transpose3d(
            xt, wt, stride=g.lhs_dilation, padding=pads, groups=g.groups, dilation=g.rhs_dilation
        ).permute(0, 2, 3, 4, 1)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 0, 1, 2, 3))).permute(0, 4, 1, 2, 3)
    symmetric = all(lo == hi for lo, hi in g.pads)
    padding = [lo for lo, _ in g.pads] if symmetric else 0
    torch_pads = [p for lo_hi in reversed(g.pads) for p in lo_hi]

    def conv(xt, wt):
        xi = xt if symmetric else F.pad(xt, torch_pads)
        return F.conv3d(xi, wt, stride=g.stride, padding=padding, dilation=g.rhs_dilation,
                        groups=g.groups).permute(0, 2, 3, 4, 1)
    return wt, conv


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
    y = conv(xl.permute(0, 4, 1, 2, 3), wt)
    dyt = torch.from_numpy(dy).to(device)
    return lambda: torch.autograd.grad(y, (xl, wt), dyt, retain_graph=True)[0]


def transposed_weights(g, w):
    """w (DHWIO) as the weights of the transposed convolution that computes input dilation:
    (Cin, Cout / groups, KD, KH, KW), spatially flipped."""
    cout_g = g.out_channels // g.groups
    flipped = w[::-1, ::-1, ::-1].reshape(*g.kernel, g.in_channels // g.groups, g.groups, cout_g)
    return np.ascontiguousarray(flipped.transpose(4, 3, 5, 0, 1, 2).reshape(g.in_channels, cout_g, *g.kernel))
