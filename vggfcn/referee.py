"""The referee: a source graph run op by op, in its file's own conventions.

This is what `verify` trusts, so it shares nothing with what it judges but the convolution GEMM
(`forward.conv2d`, itself tested against a direct loop): no reader's normalisation, nothing of
compile, and on purpose not the project's one table of axis permutations (`layouts`): its
independence is the point, so it spells out its axis handling itself. Activations are
channels-last arrays; whatever a file stores otherwise, the referee handles with its own few
lines, written as the framework defines the op:

- an OIHW kernel is transposed to HWIO here, right before it is used;
- a channels-first (CHW) flatten really flattens C, H, W: the volume is transposed first;
- an (out, in) dense computes x @ W.T, an (in, out) one x @ W;
- batch norm runs as batch norm, global average pooling as a mean, Caffe's max-pool with its
  output size rounded up;
- a graph file's arrays are laid out as it lays them out (an NCHW input, a `Transpose`, an
  `Affine` along one axis, a flatten of the array as it is): the referee keeps its own account
  of each array's axes and re-lays an array only where an op of its own needs channels-last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import forward
from .graph import (
    Activation,
    Affine,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool,
    Op,
    SourceGraph,
    Transpose,
)
from .precision import F32


def pool5(graph: SourceGraph, images: np.ndarray, scratch: forward.Scratch) -> np.ndarray:
    """The trunk (every op through the last max-pool) on (N, H, W, C) images: (N, h, w, C5).

    The images are handed to the graph laid out as its input is (NCHW for most ONNX files),
    and pool5 is handed back channels-last. Temporaries live in `scratch`; what is returned is
    not a view of it.
    """
    trunk, _ = graph.split()
    x = _relaid(np.asarray(images, dtype=F32), "NHWC", graph.input.layout)
    x, axes = _run(trunk, x, graph.input.layout, graph.spatial, scratch)
    return np.ascontiguousarray(_relaid(x, axes, "NHWC"))


def head(graph: SourceGraph, volumes: np.ndarray) -> np.ndarray:
    """The head (every op after pool5) on (N, h, w, C5) pool5 volumes: (N, logits).

    The volumes are handed to the head laid out as the file's trunk leaves them. All volumes
    go through each layer as one batch, so each kernel is read once.
    """
    trunk, ops = graph.split()
    axes = _axes_after(trunk, graph.input.layout, graph.spatial)
    x = np.array(_relaid(np.asarray(volumes, dtype=F32), "NHWC", axes))
    out, _ = _run(ops, x, axes, graph.spatial, forward.Scratch())
    return out.reshape(out.shape[0], -1)


def trunk_kernels(graph: SourceGraph) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Every trunk convolution as (HWIO kernel, bias), put in that layout by the referee; None
    when the trunk holds anything but convolutions, ReLUs and max-pools on channels-last
    arrays (a batch norm, a transpose), which an FCN's trunk never does."""
    trunk, _ = graph.split()
    if (graph.input.layout, graph.spatial) != ("NHWC", "NHWC"):
        return None
    layers = []
    for op in trunk:
        if isinstance(op, Conv) and op.bias is not None and op.padding == "same":
            layers.append((_hwio(op), op.bias.read()))
        elif not isinstance(op, MaxPool) and not (isinstance(op, Activation) and op.kind == "relu"):
            return None
    return layers


# The referee's own account of how an activation array is laid out: a string of axis letters,
# N (batch), H, W (rows, columns), C (channels) for a 4-D array, "NF" (features) for a 2-D one.
# Spatial ops read their input as the graph's `spatial` layout says; a transpose moves the
# letters with the axes; a flatten reads the volume in the order it names, or as laid out.


def _relaid(x: np.ndarray, axes: str, want: str) -> np.ndarray:
    """`x`, whose axes are `axes`, with its axes put in the order `want` (a view)."""
    if axes == want:
        return x
    return x.transpose([axes.index(axis) for axis in want])


def _axes_after(ops: Sequence[Op], axes: str, spatial: str) -> str:
    """The layout of the array the ops leave, from the layout they are given."""
    for op in ops:
        if isinstance(op, Transpose):
            axes = "".join(axes[i] for i in op.perm)
        elif isinstance(op, Conv | MaxPool):
            axes = spatial
    return axes


def _run(
    ops: Sequence[Op], x: np.ndarray, axes: str, spatial: str, scratch: forward.Scratch
) -> tuple[np.ndarray, str]:
    ours = False  # whether x may be overwritten: made here, not the caller's nor a kernel's
    for i, op in enumerate(ops):
        if isinstance(op, Conv):
            kernel = _hwio(op)
            bias = np.zeros(kernel.shape[3], F32) if op.bias is None else op.bias.read()
            # A ReLU right after a convolution is applied while each block is in cache.
            fused = _is_relu(ops[i + 1]) if i + 1 < len(ops) else False
            y = forward.conv2d(
                _relaid(x, spatial, "NHWC"),
                kernel,
                bias,
                same=op.padding == "same",
                relu=fused,
                scratch=scratch,
            )
            x, axes, ours = _relaid(y, "NHWC", spatial), spatial, True
        elif isinstance(op, Activation):
            if op.kind == "relu" and not (i > 0 and isinstance(ops[i - 1], Conv)):
                x = np.maximum(x, 0, out=x) if ours else np.maximum(x, 0)
                ours = True
        elif isinstance(op, Dense):
            kernel = op.kernel.read()
            x = x @ (kernel if op.layout == "IO" else kernel.T)
            if op.bias is not None:
                x += op.bias.read()
            ours = True
        elif isinstance(op, BatchNorm):
            channel = spatial.index("C") if x.ndim == 4 else x.ndim - 1
            x, ours = _batch_norm(x, op, channel), True
        elif isinstance(op, MaxPool):
            pooled = _max_pool(np.ascontiguousarray(_relaid(x, spatial, "NHWC")), op.ceil)
            x, axes, ours = _relaid(pooled, "NHWC", spatial), spatial, True
        elif isinstance(op, Flatten):
            volume = x if op.order == "array" else _relaid(x, axes, "N" + op.order)
            x, axes = np.ascontiguousarray(volume).reshape(x.shape[0], -1), "NF"
        elif isinstance(op, GlobalAvgPool):
            rows_columns = (spatial.index("H"), spatial.index("W"))
            mean = x.mean(axis=rows_columns, dtype=np.float64, keepdims=op.keepdims)
            x, ours = mean.astype(F32), True
            axes = spatial if op.keepdims else "NF"
        elif isinstance(op, GlobalMaxPool):
            x, ours = x.max(axis=(spatial.index("H"), spatial.index("W"))), True
            axes = "NF"
        elif isinstance(op, Transpose):
            x, axes = x.transpose(op.perm), "".join(axes[i] for i in op.perm)
        elif isinstance(op, Affine):
            x, ours = _affine(x, op), True
        elif not isinstance(op, Dropout):
            raise TypeError(f"the referee cannot run {type(op).__name__}")
    return (np.array(x, dtype=F32) if scratch.holds(x) else x), axes


def _is_relu(op: Op) -> bool:
    return isinstance(op, Activation) and op.kind == "relu"


def _hwio(op: Conv) -> np.ndarray:
    """The kernel in HWIO: as stored, or an OIHW one transposed (O, I, H, W) -> (H, W, I, O)."""
    kernel = op.kernel.read()
    if op.layout == "HWIO":
        return kernel
    return np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))


def _along(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A vector shaped to broadcast along `axis` of an `ndim`-D array."""
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _batch_norm(x: np.ndarray, op: BatchNorm, axis: int) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta along the channel (or feature) axis."""
    mean, var = (_along(t.read(), axis, x.ndim) for t in (op.mean, op.var))
    y: np.ndarray = (x - mean) / np.sqrt(var + np.float32(op.eps))
    if op.gamma is not None:
        y *= _along(op.gamma.read(), axis, x.ndim)
    if op.beta is not None:
        y += _along(op.beta.read(), axis, x.ndim)
    return y


def _affine(x: np.ndarray, op: Affine) -> np.ndarray:
    """x * scale + shift along the op's axis of the array, as written."""
    y = np.array(x, dtype=F32)
    if op.scale is not None:
        y *= _along(op.scale.read(), op.axis, x.ndim)
    if op.shift is not None:
        y += _along(op.shift.read(), op.axis, x.ndim)
    return y


def _max_pool(x: np.ndarray, ceil: bool) -> np.ndarray:
    """2x2 max-pool, stride 2; an odd last row/column is dropped (floor) or pooled alone (ceil).

    The pooling itself is `forward.max_pool2` (tested against the definition on its own); the
    referee pads for Caffe's rounding up, with -inf so the padding never wins.
    """
    n, h, w, c = x.shape
    if ceil and (h % 2 or w % 2):
        padded = np.full((n, h + h % 2, w + w % 2, c), -np.inf, dtype=F32)
        padded[:, :h, :w] = x
        x = padded
    return forward.max_pool2(x)


def stitched(
    graph: SourceGraph, images: np.ndarray, stride: int, window: tuple[int, int]
) -> np.ndarray:
    """The original's map at output stride `stride` by shift-and-stitch: (N, h, w, classes).

    Long et al.'s construction, with none of the dilated network it is compared with: at
    stride 16 the input of pool5 (F) is shifted by a, b in {0, 1} and the original's own
    pool5 and head run on each shift, cell (i, j) of shift (a, b) becoming cell
    (2i + a, 2j + b); at stride 8 the same one pool earlier (pool4, then block5 as the file
    defines it), each of those four maps stitched again at pool5. Every classifier window is
    the original's head on a p_h x p_w window of a pool5 (`window`, its size at the native
    input). A shifted map is cut to even sides before its pool, so a pool that rounds up
    (Caffe) pools the same complete 2x2 windows as one that rounds down.
    """
    trunk, _ = graph.split()
    pools = [i for i, op in enumerate(trunk) if isinstance(op, MaxPool)]
    shifts = {32: 0, 16: 1, 8: 2}[stride]
    cut = pools[len(pools) - shifts] if shifts else len(trunk)
    scratch = forward.Scratch()
    x = _relaid(np.asarray(images, dtype=F32), "NHWC", graph.input.layout)
    x, axes = _run(trunk[:cut], x, graph.input.layout, graph.spatial, scratch)
    return _phases(graph, trunk[cut:], x, axes, shifts, window, scratch)


def _phases(
    graph: SourceGraph,
    ops: Sequence[Op],
    x: np.ndarray,
    axes: str,
    shifts: int,
    window: tuple[int, int],
    scratch: forward.Scratch,
) -> np.ndarray:
    """`ops` (the trunk from a pool on) on `x` shifted by a, b in {0, 1}, `shifts` pools deep,
    the maps interleaved; with no shift left, the classifier on every window of the pool5
    they make."""
    if not shifts:
        pool5, last = _run(ops, x, axes, graph.spatial, scratch)
        return _every_window(graph, np.ascontiguousarray(_relaid(pool5, last, "NHWC")), window)
    following = next((i for i, op in enumerate(ops) if i and isinstance(op, MaxPool)), len(ops))
    rows, columns = axes.index("H"), axes.index("W")
    maps = {}
    for a in (0, 1):
        for b in (0, 1):
            shifted = _even(_even(x, rows, a), columns, b)
            y, after = _run(ops[:following], shifted, axes, graph.spatial, scratch)
            maps[a, b] = _phases(graph, ops[following:], y, after, shifts - 1, window, scratch)
    return _interleave(maps)


def _even(x: np.ndarray, axis: int, start: int) -> np.ndarray:
    """`x` from `start` along `axis`, cut to an even length."""
    length = (x.shape[axis] - start) // 2 * 2
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + length)
    return x[tuple(index)]


def _every_window(graph: SourceGraph, pool5: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """The original's head on every p_h x p_w window of (N, h, w, C5) pool5: (N, h', w', K)."""
    n, h, w, c = pool5.shape
    rows, columns = h - window[0] + 1, w - window[1] + 1
    if rows < 1 or columns < 1:
        return np.zeros((n, max(rows, 0), max(columns, 0), 0), dtype=F32)
    windows = sliding_window_view(pool5, window, axis=(1, 2))  # (N, h', w', C, p_h, p_w)
    volumes = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, *window, c)
    scores = head(graph, volumes)
    return scores.reshape(n, rows, columns, -1)


def _interleave(maps: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """The map whose cell (2i + a, 2j + b) is cell (i, j) of maps[a, b]."""
    first = maps[0, 0]
    n, classes = first.shape[0], max(m.shape[3] for m in maps.values())
    h = maps[0, 0].shape[1] + maps[1, 0].shape[1]
    w = maps[0, 0].shape[2] + maps[0, 1].shape[2]
    out = np.zeros((n, h, w, classes), dtype=F32)
    for (a, b), m in maps.items():
        if m.size:
            out[:, a::2, b::2][:, : m.shape[1], : m.shape[2]] = m
    return out
