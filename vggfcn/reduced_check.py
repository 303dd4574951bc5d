"""The proof of a reduced head (`reduce`): a backbone initialisation, checked value by value.

A reduced head is not the classifier, so no logits can be compared: the trunk must be the
original's bit for bit (conv1 flipped if the channel order was) and every value kept must equal
the original's at its index — conv6 = W6[0::4, :, 0::3, 0::3], conv7 = W7[0::4, 0::4],
fc8 = W8[:, 0::4], biases b[0::4], in (out, in, kh, kw) terms — with fc6/fc7/fc8 read from the
original's own file by this module's own reading of its conventions, as the referee reads it.
Like the referee, it spells out its axis handling itself (no `layouts`, nothing of compile):
a bug there must show up as a mismatch, not be applied to both sides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import referee
from .errors import ArchitectureError
from .fcn import FCN
from .graph import Conv, Dense, Flatten, GlobalAvgPool, MaxPool, SourceGraph, pool5_side
from .precision import F32, stored
from .trunks import flipped, same_bits


@dataclass(frozen=True)
class LayerCheck:
    """One layer of a reduced head against the original's values at the kept indices."""

    name: str
    compared: int  # values compared, kernel and bias
    mismatched: int  # of those, how many differ in any bit


@dataclass(frozen=True)
class ReducedResult:
    """`verify` of a reduced head: a backbone initialisation, proven value by value."""

    arch: str
    trunk_identical: bool
    layers: tuple[LayerCheck, ...]
    passed: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def verify_reduced(original: SourceGraph, converted: FCN) -> ReducedResult:
    """Check a reduced head against the original (see the module's doc).

    Raises:
        ArchitectureError: not a reduced head, or an original it cannot be compared with.
    """
    if converted.info.head != "reduced":
        raise ArchitectureError(f"{converted.path}: not a reduced head")
    kernels = referee.trunk_kernels(original)
    trunk = kernels is not None and len(kernels) == len(converted.trunk)
    if trunk and kernels is not None:
        if flipped(original, converted):
            kernels[0] = (kernels[0][0][:, :, ::-1, :], kernels[0][1])
        trunk = all(
            same_bits(k, layer.kernel.read()) and same_bits(b, layer.bias.read())
            for (k, b), layer in zip(kernels, converted.trunk, strict=True)
        )
    head = head_kernels(original)
    if len(head) != 3 or len(converted.head) > 3:
        raise ArchitectureError(
            f"{original.path}: has {len(head)} head layers; a reduced head comes from VGG16's 3"
        )
    rows, taps = slice(None, None, 4), slice(None, None, 3)
    wanted = [
        (head[0][0][rows, :, taps, taps], head[0][1][rows]),
        (head[1][0][rows][:, rows], head[1][1][rows]),
        (head[2][0][:, rows], head[2][1]),
    ]
    layers = []
    precision = converted.info.precision
    for layer, (kernel, bias) in zip(converted.head, wanted, strict=False):
        ours = layer.kernel.read().transpose(3, 2, 0, 1)  # the FCN's HWIO -> (out, in, kh, kw)
        bad = _mismatches(stored(kernel, precision), ours)
        bad += _mismatches(stored(bias, precision), layer.bias.read())
        layers.append(LayerCheck(layer.name, kernel.size + bias.size, bad))
    passed = trunk and all(check.mismatched == 0 for check in layers)
    return ReducedResult(converted.name, trunk, tuple(layers), passed)


def head_kernels(graph: SourceGraph) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer of the head as (out, in, kh, kw) kernel and bias: what its op computes on
    pool5, written as a convolution by this module's own reading of the file's conventions.

    A dense layer after a flatten reads the (p, q, C) pool5 window in the flatten's order, p x q
    being pool5's size at the input the model was built for, each pool rounding as the file's
    does; one after another dense layer is 1x1; a convolution is itself.

    Raises:
        ArchitectureError: a head with anything but flatten, dense and convolution layers
            (a global average pool has no fc6 kernel to decimate).
    """
    trunk, head = graph.split()
    convs = [op for op in trunk if isinstance(op, Conv)]
    last = convs[-1].kernel.shape
    channels = last[3] if convs[-1].layout == "HWIO" else last[0]
    if graph.input.size is None:
        raise ArchitectureError(f"{graph.path}: input size unknown; check the graph first")
    pools = [op for op in trunk if isinstance(op, MaxPool)]
    p, q = (pool5_side(side, pools) for side in graph.input.size)
    order = None  # the flatten order, until a dense layer consumes it
    out = []
    for op in head:
        if isinstance(op, Flatten):
            order = op.order
        elif isinstance(op, GlobalAvgPool):
            raise ArchitectureError(
                f"{graph.path}: {op.name}: a global average pool's head has no fc6 kernel"
            )
        elif isinstance(op, Conv | Dense):
            out.append((_as_oihw(op, order, p, q, channels), op.bias.read() if op.bias else None))
            order = None
    return [(k, b if b is not None else np.zeros(k.shape[0], F32)) for k, b in out]


def _as_oihw(op: Conv | Dense, order: str | None, p: int, q: int, channels: int) -> np.ndarray:
    kernel = op.kernel.read()
    if isinstance(op, Conv):
        return kernel if op.layout == "OIHW" else kernel.transpose(3, 2, 0, 1)
    rows = kernel if op.layout == "OI" else kernel.T  # (out, in): one row per output
    if order == "CHW":
        return rows.reshape(-1, channels, p, q)
    if order == "HWC":
        return rows.reshape(-1, p, q, channels).transpose(0, 3, 1, 2)
    return rows[:, :, None, None]


def _mismatches(expected: np.ndarray, got: np.ndarray) -> int:
    """Values that differ in any bit (all of them when the shapes differ)."""
    if expected.shape != got.shape:
        return int(max(expected.size, got.size))
    e = np.ascontiguousarray(expected).view(np.uint32)
    g = np.ascontiguousarray(got).view(np.uint32)
    return int(np.count_nonzero(e != g))
