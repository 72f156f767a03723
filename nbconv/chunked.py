"""conv3d on Dask arrays: a lazy result whose every block is computed by the NumPy path from the
window of x it needs (issue 14; README, "Volumes larger than memory").

`dask.array.map_overlap` fits stride-1 convolutions whose padding is only at the volume's edges.
Here each axis's output chunks follow x's (scaled to the output's size), and for each output block
`_window` works out from the geometry which input elements its taps reach (kernel extent, rhs
dilation, stride, lhs dilation, padding) and the explicit padding that makes a convolution of just
that window give exactly those outputs: the real pads at the volume's edges, negative ones (a crop)
or the zeros between dilated inputs inside it. So every option works the same as on NumPy. The
graph has one task per output block, which copies the parts of the input chunks its window overlaps
(not a slicing layer per block: 1826 tasks for 32 blocks made the scheduler's ordering alone cost
0.15 s). w and the bias enter the graph once; each task runs the kernel on DASK_TASK_THREADS threads
(`nbconv.config`), so that a scheduler running a task per core does not ask each core for all.
"""
import sys
import threading
from itertools import product
from math import prod

import numba
import numpy as np

from nbconv import config
from nbconv.geometry import dilated


def is_dask_array(a):
    """A Dask array, without importing dask (only one whose module is loaded can be one)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(a, module.Array)


def conv3d(x, w, bias, call, backend):
    """The lazy conv3d of the Dask array x (w, bias: NumPy), `call` its validated ConvCall: one task
    per output block, reading the parts of the input chunks its window overlaps."""
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if any(np.isnan(size) for size in x.shape):
        raise ValueError("x must have known chunk sizes (call x.compute_chunk_sizes() first)")
    x5 = x if call.batched else x[None]
    if call.channel_first:
        x5 = da.moveaxis(x5, 1, -1)
    x5 = x5.rechunk({4: -1})  # every output pixel needs all the input channels of its group
    geometry = call.geometry
    options = dict(stride=geometry.stride, lhs_dilation=geometry.lhs_dilation, rhs_dilation=geometry.rhs_dilation,
                   groups=geometry.groups)
    spans = [_output_chunks(x5.chunks[1 + axis], geometry.in_spatial[axis], geometry.out_spatial[axis])
             for axis in range(3)]
    w_task, bias_task = dask.delayed(w, pure=True), dask.delayed(bias, pure=True)
    alone = (np.zeros(geometry.out_channels) if bias is None else np.asarray(bias, call.compute_dtype).reshape(-1)
             ).astype(call.result_dtype)  # a block that no real input reaches
    name = "nbconv-conv3d-" + tokenize(x5, w, bias, geometry, backend)
    starts = [np.cumsum((0,) + sizes) for sizes in x5.chunks[:4]]
    layer = {}
    for index in product(range(len(x5.chunks[0])), *map(range, map(len, spans))):
        ranges = [spans[axis][index[1 + axis]] for axis in range(3)]
        windows = [_window(o0, o1, geometry, axis) for axis, (o0, o1) in enumerate(ranges)]
        shape = (x5.chunks[0][index[0]], *(o1 - o0 for o0, o1 in ranges), geometry.out_channels)
        if any(window is None for window in windows):  # no real input reaches these outputs: the bias
            layer[(name, *index, 0)] = (np.broadcast_to, alone, shape)
            continue
        inputs = [(starts[0][index[0]], starts[0][index[0] + 1]), *((i0, i1) for i0, i1, _ in windows)]
        pieces = list(_pieces(x5.name, starts, inputs))
        layer[(name, *index, 0)] = (_block, [key for key, _ in pieces], [part for _, part in pieces],
                                    [b - a for a, b in inputs], (shape, call.result_dtype), w_task.key,
                                    bias_task.key, tuple(pad for _, _, pad in windows), options, backend)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x5, w_task, bias_task])
    chunks = (x5.chunks[0], *(tuple(o1 - o0 for o0, o1 in axis) for axis in spans), (geometry.out_channels,))
    y = da.Array(graph, name, chunks, dtype=call.result_dtype)
    if call.channel_first:
        y = da.moveaxis(y, -1, 1)
    return y if call.batched else y[0]


def _pieces(name, starts, ranges):
    """(input chunk key, (its slices, the window's slices)) of every chunk of x that overlaps the
    window `ranges` (batch and spatial: [first, end) each; the channels are one chunk)."""
    per_axis = []
    for bounds, (a, b) in zip(starts, ranges):
        chunks = range(int(np.searchsorted(bounds, a, "right")) - 1, int(np.searchsorted(bounds, b, "left")))
        per_axis.append([(c, slice(max(a, bounds[c]) - bounds[c], min(b, bounds[c + 1]) - bounds[c]),
                          slice(max(a, bounds[c]) - a, min(b, bounds[c + 1]) - a)) for c in chunks])
    for parts in product(*per_axis):
        yield (name, *(c for c, _, _ in parts), 0), (tuple(s for _, s, _ in parts), tuple(t for _, _, t in parts))


def _output_chunks(in_chunks, n_in, n_out):
    """[(o0, o1)...]: the output axis cut where x's chunks end, scaled from n_in to n_out elements."""
    ends = np.cumsum(in_chunks)
    bounds = sorted({0, n_out, *(round(end * n_out / n_in) if n_in else 0 for end in ends)})
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]


def _window(o0, o1, geometry, axis):
    """The input range [i0, i1) that outputs o0... o1 - 1 of `axis` read, and the (lo, hi) padding of a
    convolution of that range alone that gives them; None when they read no real input."""
    n, k = geometry.in_spatial[axis], geometry.kernel[axis]
    stride, (lo, _), lhs, rhs = (geometry.stride[axis], geometry.pads[axis], geometry.lhs_dilation[axis],
                                 geometry.rhs_dilation[axis])
    if o1 <= o0:
        return None
    # taps of outputs o0 .. o1 - 1 reach dilated-and-padded positions first .. last; real input i
    # sits at i * lhs
    first, last = o0 * stride - lo, (o1 - 1) * stride + (k - 1) * rhs - lo
    i0, i1 = max(0, -(-first // lhs)), min(n, last // lhs + 1)
    if i1 <= i0:
        return None
    lo_window = lo - o0 * stride + i0 * lhs
    hi_window = (o1 - o0 - 1) * stride + dilated(k, rhs) - dilated(i1 - i0, lhs) - lo_window
    return i0, i1, (lo_window, hi_window)


def _block(chunks, parts, window, result, w, bias, pads, options, backend):
    """One output block, `result` = (shape, dtype): its window (of `window` sizes but for the
    channels) assembled from the overlapping parts of the input chunks, then the NumPy conv3d of it on
    DASK_TASK_THREADS kernel threads (Numba's thread count belongs to the calling thread, so this
    holds for this task alone). Into a plain np.empty, not nbconv's kept buffers: a scheduler holds
    many blocks at once, and glibc gives the memory of the stored ones to the next (no page faults)."""
    from nbconv.functional import conv3d

    x = _scratch((*window, chunks[0].shape[-1]), chunks[0].dtype)
    for chunk, (source, target) in zip(chunks, parts):
        x[target] = chunk[source]
    out = np.empty(*result)
    before = numba.get_num_threads()
    numba.set_num_threads(min(config.DASK_TASK_THREADS or before, numba.config.NUMBA_NUM_THREADS))
    try:
        return conv3d(x, w, padding=pads, bias=bias, backend=backend, out=out, **options)
    finally:
        numba.set_num_threads(before)


_THREAD = threading.local()


def _scratch(shape, dtype):
    """An array over this thread's window buffer, kept between its tasks (a window is used up within
    its task): a fresh one of several MB faulted its pages in every time."""
    nbytes = prod(shape) * np.dtype(dtype).itemsize
    if getattr(_THREAD, "buffer", None) is None or _THREAD.buffer.nbytes < nbytes:
        _THREAD.buffer = np.empty(nbytes, np.uint8)
    return _THREAD.buffer[:nbytes].view(dtype).reshape(shape)
