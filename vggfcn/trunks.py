"""pool5 for both sides of a proof, computed once when the two trunks are the same function.

The trunk (every op through pool5) is a tenth of VGG16's weights but nearly all of its compute.
When the converted file holds, bit for bit, the trunk the referee reads from the original, the
converted network's pool5 *is* the original's: running it again would prove nothing and double
the cost of `verify`. Otherwise each side runs its own: the referee the original as its file
defines it, `forward` the converted network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from . import forward, referee
from .fcn import FCN
from .graph import Conv, MaxPool, SourceGraph
from .shapes import block_plan
from .tensor import Tensor


def flipped(original: SourceGraph | FCN, converted: FCN) -> bool:
    """Whether the converted network takes its input channels in the other order (`--rgb` /
    `--bgr`): the original is then fed the same images with their channels flipped, which is
    what proves the flip."""
    theirs = (
        original.input.channel_order
        if isinstance(original, SourceGraph)
        else original.info.channel_order
    )
    ours = converted.info.channel_order
    return "unknown" not in (theirs, ours) and theirs != ours


def pool5s(
    original: SourceGraph | FCN, converted: FCN, inputs: Sequence[np.ndarray]
) -> tuple[bool, list[tuple[np.ndarray, np.ndarray]]]:
    """Whether the trunks are shared, and both networks' pool5 for each input.

    Each trunk tensor is read from disk once: the trunks (a tenth of the model) are held in
    memory for every input size, and dropped when this returns, before the heads map their
    largest kernels; so are the buffers the passes share (pass the largest input first, so
    later passes fit in them).
    """
    flip = flipped(original, converted)
    converted = _fcn_trunk_in_memory(converted)
    if isinstance(original, FCN):
        original = _fcn_trunk_in_memory(original)
        shared = not flip and _same_trunks(original, converted)
    else:
        original = _trunk_in_memory(original)
        shared = not flip and identical(original, converted)
    scratch = forward.Scratch()
    out = []
    for x in inputs:
        y = x[..., ::-1] if flip else x
        if isinstance(original, FCN):
            pool5 = forward.trunk(original, np.ascontiguousarray(y), scratch)
        else:
            pool5 = referee.pool5(original, y, scratch)
        out.append((pool5, pool5 if shared else forward.trunk(converted, x, scratch)))
    return shared, out


def _same_trunks(a: FCN, b: FCN) -> bool:
    """Two converted networks' trunks: the same plan, ReLUs and tensors bit for bit."""
    return (
        a.plan == b.plan
        and len(a.trunk) == len(b.trunk)
        and all(
            x.relu == y.relu
            and same_bits(x.kernel.read(), y.kernel.read())
            and same_bits(x.bias.read(), y.bias.read())
            for x, y in zip(a.trunk, b.trunk, strict=True)
        )
    )


def identical(original: SourceGraph, converted: FCN) -> bool:
    """Whether the converted trunk is the original's, as the referee reads it: the same pools
    and ReLUs, and equal tensors bit for bit (NaN payloads included). A trunk with batch norms
    is never shared: a file that forgot to fold them must not borrow the original's pool5; nor
    one whose pools round up (Caffe's), which the FCN's do not; nor a dilated FCN's."""
    kernels = referee.trunk_kernels(original)
    trunk, _ = original.split()
    if (
        kernels is None
        or any(isinstance(op, MaxPool) and op.ceil for op in trunk)
        or block_plan(trunk) != converted.plan
        or len(kernels) != len(converted.trunk)
        or not all(layer.relu for layer in converted.trunk)
    ):
        return False
    for (kernel, bias), layer in zip(kernels, converted.trunk, strict=True):
        for ours, theirs in ((kernel, layer.kernel.read()), (bias, layer.bias.read())):
            if not same_bits(ours, theirs):
                return False
    return True


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and float32 values equal bit for bit (NaN payloads included)."""
    return a.shape == b.shape and bool(
        np.array_equal(
            np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32)
        )
    )


def _trunk_in_memory(graph: SourceGraph) -> SourceGraph:
    trunk, head = graph.split()
    ops = tuple(
        replace(op, kernel=_in_memory(op.kernel), bias=op.bias and _in_memory(op.bias))
        if isinstance(op, Conv)
        else op
        for op in trunk
    )
    return replace(graph, ops=ops + head)


def _fcn_trunk_in_memory(fcn: FCN) -> FCN:
    trunk = tuple(
        replace(layer, kernel=_in_memory(layer.kernel), bias=_in_memory(layer.bias))
        for layer in fcn.trunk
    )
    return replace(fcn, trunk=trunk)


def _in_memory(tensor: Tensor) -> Tensor:
    """The tensor's values read once (in its own shape; the file's layout is kept)."""
    return Tensor.wrap(tensor.read(), tensor.where)
