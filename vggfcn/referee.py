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
  output size rounded up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import forward
from .graph import (
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    Op,
    SourceGraph,
)
from .precision import F32


def pool5(graph: SourceGraph, images: np.ndarray, scratch: forward.Scratch) -> np.ndarray:
    """The trunk (every op through the last max-pool) on (N, H, W, C) images: (N, h, w, C5).

    Temporaries live in `scratch`; what is returned is not a view of it.
    """
    trunk, _ = graph.split()
    return _run(trunk, np.asarray(images, dtype=F32), scratch)


def head(graph: SourceGraph, volumes: np.ndarray) -> np.ndarray:
    """The head (every op after pool5) on (N, h, w, C5) pool5 volumes: (N, logits).

    All volumes go through each layer as one batch, so each kernel is read once.
    """
    _, ops = graph.split()
    out = _run(ops, np.array(volumes, dtype=F32), forward.Scratch())
    return out.reshape(out.shape[0], -1)


def trunk_kernels(graph: SourceGraph) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Every trunk convolution as (HWIO kernel, bias), put in that layout by the referee; None
    when the trunk holds anything but convolutions, ReLUs and max-pools (a batch norm), which
    an FCN's trunk never does."""
    trunk, _ = graph.split()
    layers = []
    for op in trunk:
        if isinstance(op, Conv) and op.bias is not None and op.padding == "same":
            layers.append((_hwio(op), op.bias.read()))
        elif not isinstance(op, MaxPool) and not (isinstance(op, Activation) and op.kind == "relu"):
            return None
    return layers


def _run(ops: Sequence[Op], x: np.ndarray, scratch: forward.Scratch) -> np.ndarray:
    ours = False  # whether x may be overwritten: made here, not the caller's nor a kernel's
    for i, op in enumerate(ops):
        if isinstance(op, Conv):
            kernel = _hwio(op)
            bias = np.zeros(kernel.shape[3], F32) if op.bias is None else op.bias.read()
            # A ReLU right after a convolution is applied while each block is in cache.
            fused = _is_relu(ops[i + 1]) if i + 1 < len(ops) else False
            x = forward.conv2d(
                x, kernel, bias, same=op.padding == "same", relu=fused, scratch=scratch
            )
            ours = True
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
            x, ours = _batch_norm(x, op), True
        elif isinstance(op, MaxPool):
            x, ours = _max_pool(x, op.ceil), True
        elif isinstance(op, Flatten):
            volume = x if op.order == "HWC" else x.transpose(0, 3, 1, 2)
            x = volume.reshape(x.shape[0], -1)
        elif isinstance(op, GlobalAvgPool):
            x, ours = x.mean(axis=(1, 2), dtype=np.float64).astype(F32), True
        elif not isinstance(op, Dropout):
            raise TypeError(f"the referee cannot run {type(op).__name__}")
    return np.array(x, dtype=F32) if scratch.holds(x) else x


def _is_relu(op: Op) -> bool:
    return isinstance(op, Activation) and op.kind == "relu"


def _hwio(op: Conv) -> np.ndarray:
    """The kernel in HWIO: as stored, or an OIHW one transposed (O, I, H, W) -> (H, W, I, O)."""
    kernel = op.kernel.read()
    if op.layout == "HWIO":
        return kernel
    return np.ascontiguousarray(kernel.transpose(2, 3, 1, 0))


def _batch_norm(x: np.ndarray, op: BatchNorm) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta over the last (channel or feature) axis."""
    y: np.ndarray = (x - op.mean.read()) / np.sqrt(op.var.read() + np.float32(op.eps))
    if op.gamma is not None:
        y *= op.gamma.read()
    if op.beta is not None:
        y += op.beta.read()
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
