"""conv3d on Dask arrays: a lazy result whose every block is computed by the backend's entry from
the window of x it needs (docs/volumes.md).

`dask.array.map_overlap` fits stride-1 convolutions whose padding is only at the volume's edges.
Here each axis's output chunks follow x's (scaled to the output's size), and for each output block
`ConvGeometry.input_window` works out from the geometry which input elements its taps reach (kernel extent, rhs
dilation, stride, lhs dilation, padding) and the explicit padding that makes a convolution of just
that window give exactly those outputs: the real pads at the volume's edges, negative ones (a crop)
or the zeros between dilated inputs inside it. So every option works the same as on NumPy. The
graph has one task per output block, which assembles its window from the input chunks it covers
whole and the halos of the others, and one task per input chunk that others only partly read,
which copies out those parts (`_halo`): on a cluster a block then fetches thin slabs from another
worker, not whole chunks (a slicing task per block and chunk would multiply the tasks, and the
scheduler's ordering of them costs more than the copies). The tasks are `dask.task_spec.Task`s, which
the scheduler takes without converting them. w and the bias enter the graph once; each task runs the
kernel on DASK_TASK_THREADS threads (`nbconv.config`), so that a scheduler running a task per core
does not ask each core for all.
"""
import threading
from collections import namedtuple
from itertools import product
from math import prod

import numba
import numpy as np

from nbconv import buffers, config
from nbconv.call import check_out, validate
from nbconv.dispatch import backend_module


def lazy_convolution(call, x, w, bias, backend):
    """The lazy conv3d of the validated `call` on the Dask array x (w, bias: NumPy): one task per
    output block, reading the parts of the input chunks its window overlaps."""
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    from dask.task_spec import List, Task, TaskRef

    if any(np.isnan(size) for size in x.shape):
        raise ValueError("x must have known chunk sizes (call x.compute_chunk_sizes() first)")
    x5 = x if call.batched else x[None]
    if call.channel_first:
        x5 = da.moveaxis(x5, 1, -1)
    x5 = x5.rechunk({4: -1})  # every output pixel needs all the input channels of its group
    geometry = call.geometry
    options = geometry.stride, geometry.lhs_dilation, geometry.rhs_dilation, geometry.groups  # `_block`'s
    # Each axis's cuts once; a block is one cut of each axis.
    axes = [[_Cut(n, n, (0, 0), _parts(x5.chunks[0], a, a + n)) for a, n in zip(np.cumsum((0,) + x5.chunks[0]),
                                                                               x5.chunks[0])],
            *(_spatial_cuts(x5.chunks[1 + axis], geometry, axis) for axis in range(3))]
    w_task, bias_task = dask.delayed(w, pure=True), dask.delayed(bias, pure=True)
    alone = (np.zeros(geometry.out_channels) if bias is None else np.asarray(bias, call.compute_dtype).reshape(-1)
             ).astype(call.result_dtype)  # a block that no real input reaches
    token = tokenize(x5, w, bias, geometry, backend)
    name, halo_name = "nbconv-conv3d-" + token, "nbconv-halo-" + token
    layer, halos = {}, {}  # halos: input chunk index -> {its slices a block reads: place in its halo}
    for index in product(*(range(len(cuts)) for cuts in axes)):
        cuts = [cuts[i] for cuts, i in zip(axes, index)]
        shape, key = (*(cut.size for cut in cuts), geometry.out_channels), (name, *index, 0)
        # No real input reaches these outputs: the bias. (Or there are none: an empty batch chunk, as
        # `x[mask]` gives, has no input chunk to read.)
        if any(cut.parts is None for cut in cuts) or 0 in shape:
            layer[key] = Task(key, np.broadcast_to, alone, shape)
            continue
        inputs, parts = [], []
        for piece in product(*(cut.parts for cut in cuts)):
            chunk, target = tuple(part.chunk for part in piece), tuple(part.target for part in piece)
            if all(part.whole for part in piece):
                inputs.append(TaskRef((x5.name, *chunk, 0)))
                parts.append((None, target))
            else:
                places = halos.setdefault(chunk, {})
                inputs.append(TaskRef((halo_name, *chunk)))
                bounds = tuple((part.source.start, part.source.stop) for part in piece)  # slices: unhashable
                parts.append((places.setdefault(bounds, len(places)), target))
        layer[key] = Task(key, _block, List(*inputs), parts, [cut.window for cut in cuts], (shape, call.result_dtype),
                          TaskRef(w_task.key), TaskRef(bias_task.key), tuple(cut.pads for cut in cuts[1:]), options,
                          backend)
    for chunk, places in halos.items():
        layer[(halo_name, *chunk)] = Task((halo_name, *chunk), _halo, TaskRef((x5.name, *chunk, 0)), tuple(places))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x5, w_task, bias_task])
    chunks = (*(tuple(cut.size for cut in cuts) for cuts in axes), (geometry.out_channels,))
    y = da.Array(graph, name, chunks, dtype=call.result_dtype)
    if call.channel_first:
        y = da.moveaxis(y, -1, 1)
    return y if call.batched else y[0]


# One axis of an output block: its `size`, the `window` of input it reads, the `pads` that give its
# outputs from that window alone, and the `parts` (input chunk index, its slice, the window's slice)
# the window is assembled from (None: no real input reaches these outputs).
_Cut = namedtuple("_Cut", "size window pads parts")


def _spatial_cuts(in_chunks, geometry, axis):
    """The cuts of a spatial axis: the output chunks follow the input's (`_output_chunks`)."""
    cuts = []
    for o0, o1 in _output_chunks(in_chunks, geometry.in_spatial[axis], geometry.out_spatial[axis]):
        window = geometry.input_window(axis, o0, o1)
        if window is None:
            cuts.append(_Cut(o1 - o0, 0, (0, 0), None))
        else:
            i0, i1, pads = window
            cuts.append(_Cut(o1 - o0, i1 - i0, pads, _parts(in_chunks, i0, i1)))
    return cuts


# One input chunk's share of a window along one axis: the chunk's index, its `source` slice, the
# window's `target` slice, and whether the source is `whole` (the chunk's every element).
_Part = namedtuple("_Part", "chunk source target whole")


def _parts(chunks, a, b):
    """The `_Part`s of the chunks (sizes) overlapping the window [a, b) of an axis."""
    bounds = np.cumsum((0,) + tuple(chunks))
    first, end = int(np.searchsorted(bounds, a, "right")) - 1, int(np.searchsorted(bounds, b, "left"))
    parts = []
    for c in range(first, end):
        lo, hi = max(a, bounds[c]), min(b, bounds[c + 1])
        parts.append(_Part(c, slice(lo - bounds[c], hi - bounds[c]), slice(lo - a, hi - a),
                           (lo, hi) == (bounds[c], bounds[c + 1])))
    return parts


def _output_chunks(in_chunks, n_in, n_out):
    """[(o0, o1)...]: the output axis cut where x's chunks end, scaled from n_in to n_out elements."""
    ends = np.cumsum(in_chunks)
    bounds = sorted({0, n_out, *(round(end * n_out / n_in) if n_in else 0 for end in ends)})
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]


def _halo(chunk, parts):
    """Copies of the parts (per axis (start, stop)) of an input chunk that windows of other blocks
    read: a worker of another machine then fetches these thin slabs, not the whole chunk."""
    return tuple(np.array(chunk[tuple(slice(*bounds) for bounds in part)]) for part in parts)


def _block(inputs, parts, window, result, w, bias, pads, options, backend):
    """One output block, `result` = (shape, dtype): its window (of `window` sizes but for the
    channels) assembled from its `inputs` (whole input chunks, or halos: the part at `place`) at
    `parts` = [(place or None, the window's slices)...], then the backend's convolution of it on
    DASK_TASK_THREADS kernel threads (Numba's thread count belongs to the calling thread, so this
    holds for this task alone). Into a fresh array (`buffers.fresh`), not nbconv's kept buffers: a
    scheduler holds many blocks at once, and glibc gives the memory of the stored ones to the next (no
    page faults)."""
    pieces = [value if place is None else value[place] for value, (place, _) in zip(inputs, parts)]
    x = _scratch((*window, pieces[0].shape[-1]), pieces[0].dtype)
    for piece, (_, target) in zip(pieces, parts):
        x[target] = piece
    out = buffers.fresh(*result)
    before = numba.get_num_threads()
    numba.set_num_threads(min(config.DASK_TASK_THREADS or before, numba.config.NUMBA_NUM_THREADS))
    try:
        stride, lhs_dilation, rhs_dilation, groups = options
        call = validate(x, w, bias, (stride, pads, lhs_dilation, rhs_dilation, groups, False))
        check_out(out, call, x, w, bias)  # a chunk whose dtype is not the one its Dask array declares
        return backend_module(backend).convolve(call, x, w, bias, out)
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
