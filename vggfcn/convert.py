"""Compile: a source graph in, its fully-convolutional twin out. Pure and lazy.

Every permutation, flatten-order resolution, fold and reshape between a file's own layout and
the FCN (HWIO kernels, see `fcn`) happens here and nowhere else:

- trunk convolutions: OIHW kernels move their axes to HWIO; a batch norm folds into its conv;
- the first dense layer after pool5 is a p_h x p_w convolution over the p_h x p_w pool5 the
  model was built for. Its kernel *is* the dense kernel, element for element, once the rows are
  read in the order the file flattened pool5: channels-last (H, W, C) rows reshape to HWIO
  directly; channels-first (C, H, W) rows must be transposed; (out, in) kernels too;
- `GlobalAveragePooling2D -> Dense(W)` is the same p_h x p_w convolution with every tap
  W / (p_h * p_w): exactly the classifier on each window;
- later dense layers are 1x1 convolutions; convolutions in the head (timm's pre_logits) stay
  what they are; dropout is dropped; ReLU or nothing between layers, logits out.

Nothing is read: every tensor of the result is a reshape, permutation or scaling of the file's
own, so a conversion streams from the input file (and OIHW in, OIHW out copies bytes as they are).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .arch import conv_names
from .errors import ArchitectureError
from .fcn import FCN, ConvLayer, FCNInfo, head_name
from .fold import fold_batch_norms
from .graph import (
    Activation,
    Affine,
    BatchNorm,
    ChannelOrder,
    Conv,
    Dense,
    Dropout,
    Flatten,
    FlattenOrder,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool,
    Op,
    SourceGraph,
    Transpose,
    pool5_side,
)
from .layouts import permutation
from .precision import F32
from .shapes import block_plan
from .tensor import Tensor

#: The axis moves compile makes, each named once (the injected-bug tests break them one by one)
#: and derived from the layouts' letters (`layouts.permutation`). Each goes from the file's own
#: layout to HWIO in one permutation, so it composes with an output layout's (a torch fc6
#: written OIHW is its own bytes, streamed) and is never read here.
#: An OIHW kernel: (O, I, H, W) -> (H, W, I, O).
OIHW_TO_HWIO = permutation("OIHW", "HWIO")
#: An (out, in) dense kernel -> (in, out).
OI_TO_IO = permutation("OI", "IO")
#: A dense layer after a channels-first flatten, (out, in) viewed as (out, C, H, W) or (in, out)
#: viewed as (C, H, W, out); after a channels-last one, (out, in) viewed as (out, H, W, C).
CHW_COLUMNS_TO_HWIO = permutation("OIHW", "HWIO")
CHW_ROWS_TO_HWIO = permutation("IHWO", "HWIO")
HWC_COLUMNS_TO_HWIO = permutation("OHWI", "HWIO")


def to_fcn(graph: SourceGraph, *, channel_order: ChannelOrder | None = None) -> FCN:
    """The fully-convolutional twin of a checked classifier graph (lazy: no tensor is read).

    Args:
        channel_order: "rgb" or "bgr" to have the FCN take its input channels in that order:
            when the source expects the other, conv1's input channels are flipped (what
            MatConvNet did to Caffe's BGR models), so a Caffe or Keras VGG takes RGB images.

    Example:
        >>> with vggfcn.load("vgg16.h5") as classifier:
        ...     fcn = to_fcn(classifier)       # fcn.head[0].kernel.shape == (7, 7, 512, 4096)

    Raises:
        ArchitectureError: a layer the FCN cannot express (a conv without its ReLU, a batch
            norm with nothing to fold into, an activation other than ReLU between layers), or
            a channel order asked of a source that does not say its own.
    """
    if graph.input.size is None:
        raise ArchitectureError(f"{graph.path}: input size unknown; check the graph first")
    ops, eps = fold_batch_norms(channels_last(graph), graph.path)
    last_pool = max(i for i, op in enumerate(ops) if isinstance(op, MaxPool))
    trunk_ops, head_ops = ops[: last_pool + 1], ops[last_pool + 1 :]
    plan = block_plan(trunk_ops)
    trunk = _trunk(trunk_ops, plan, graph.path)
    pools = [op for op in trunk_ops if isinstance(op, MaxPool)]
    window = (pool5_side(graph.input.size[0], pools), pool5_side(graph.input.size[1], pools))
    head = _head(head_ops, window, graph.path)
    folded = ", ".join(sorted({f"{e:g}" for e in eps}))
    info = FCNInfo(
        path=graph.path,
        source_format=graph.provenance.label,
        input_size=graph.input.size,
        output_activation=graph.output_activation,
        channel_order=graph.input.channel_order,
        preprocessing=graph.input.preprocessing,
        batch_norm=f"folded (eps={folded})" if eps else "none",
    )
    fcn = FCN(plan, trunk, head, info)
    return fcn if channel_order is None else with_channel_order(fcn, channel_order)


def channels_last(graph: SourceGraph) -> tuple[Op, ...]:
    """The graph's ops on channels-last arrays, what the rest of compile reads: a graph file's
    transposes followed and dropped, its flatten of the array as laid out given the order that
    layout reads the volume in, its `Affine`s placed on the channel (or feature) axis.

    Compile's own account of the layouts; the referee keeps another (`referee`), so a mistake
    in either shows up in `verify`.

    Raises:
        ArchitectureError: a spatial op on an array not laid out as the file's spatial ops
            read, a flatten of a layout that is no VGG volume's, or an `Affine` along an axis
            other than the channels' (or the features').
    """
    axes: str = graph.input.layout  # the letters of the array's axes, outermost first
    out: list[Op] = []
    for op in graph.ops:
        if isinstance(op, Transpose):
            axes = "".join(axes[i] for i in op.perm)
            continue
        spatial = Conv | MaxPool | GlobalAvgPool | GlobalMaxPool | BatchNorm
        if isinstance(op, spatial) and len(axes) == 4:
            if axes != graph.spatial:
                raise ArchitectureError(
                    f"{graph.path}: {op.name} reads an array laid out {axes}; the file's "
                    f"spatial ops read {graph.spatial}"
                )
            pooled = isinstance(op, GlobalMaxPool) or (
                isinstance(op, GlobalAvgPool) and not op.keepdims
            )
            axes = "NF" if pooled else axes
        elif isinstance(op, Flatten):
            order = axes[1:] if op.order == "array" else op.order
            if len(axes) == 2:  # a flatten of a vector is no op
                continue
            if order not in ("HWC", "CHW"):
                raise ArchitectureError(
                    f"{graph.path}: {op.name} flattens an array laid out {axes}, which reads "
                    "no volume in (H, W, C) or (C, H, W) order"
                )
            op = replace(op, order=order)  # type: ignore[arg-type]
            axes = "NF"
        elif isinstance(op, Affine):
            if axes[op.axis] not in "CF":
                raise ArchitectureError(
                    f"{graph.path}: {op.name} scales or shifts the {axes[op.axis]} axis of an "
                    f"array laid out {axes}; vggfcn folds those of the channels only"
                )
            op = replace(op, axis=-1)
        elif isinstance(op, Dense):
            axes = "NF"
        out.append(op)
    return tuple(out)


def with_channel_order(fcn: FCN, order: ChannelOrder) -> FCN:
    """A converted network made to take its input channels in `order` (conv1 flipped when it
    takes the other).

    Raises:
        ArchitectureError: the network does not say which order it takes.
    """
    if order == fcn.info.channel_order:
        return fcn
    if fcn.info.channel_order == "unknown":
        raise ArchitectureError(
            f"{fcn.path}: the file does not say which channel order it expects; "
            f"nothing to flip to {order}"
        )
    trunk = (_flipped_input(fcn.trunk[0]), *fcn.trunk[1:])
    return replace(fcn, trunk=trunk, info=replace(fcn.info, channel_order=order))


def _flipped_input(layer: ConvLayer) -> ConvLayer:
    """conv1 reading its input channels in reverse order (RGB <-> BGR); 1,728 weights of VGG16,
    read here."""
    kernel = np.ascontiguousarray(layer.kernel.read()[:, :, ::-1, :])
    return replace(layer, kernel=Tensor.wrap(kernel, f"{layer.kernel.where} (channels flipped)"))


def hwio(op: Conv) -> Tensor:
    """A convolution's kernel in HWIO, whatever the file's layout."""
    if op.layout == "HWIO":
        return op.kernel
    return op.kernel.permute(op.kernel.shape, OIHW_TO_HWIO)


def _bias(op: Conv | Dense, width: int) -> Tensor:
    if op.bias is not None:
        return op.bias
    return Tensor.wrap(np.zeros(width, dtype=F32), f"{op.name} (no bias)")


def _relu_after(layers: list[ConvLayer], op: Activation, path: str) -> None:
    """Attach a ReLU to the layer before it; anything else between layers is refused."""
    if op.kind == "linear":
        return
    if not layers or layers[-1].relu:
        raise ArchitectureError(f"{path}: {op.name}: a ReLU that does not follow a layer")
    layers[-1] = replace(layers[-1], relu=True)


def _trunk(ops: tuple[Op, ...], plan: tuple[int, ...], path: str) -> tuple[ConvLayer, ...]:
    layers: list[ConvLayer] = []
    for op in ops:
        if isinstance(op, Conv):
            kernel = hwio(op)
            name = conv_names(plan)[len(layers)]
            layers.append(ConvLayer(name, kernel, _bias(op, kernel.shape[3]), False, op.name))
        elif isinstance(op, Activation):
            _relu_after(layers, op, path)
        elif not isinstance(op, MaxPool | Dropout):
            raise ArchitectureError(f"{path}: {op.name}: a {type(op).__name__} inside the trunk")
    missing = [layer.source_name for layer in layers if not layer.relu]
    if missing:
        raise ArchitectureError(
            f"{path}: {', '.join(missing)}: a VGG convolution is followed by a ReLU"
        )
    return tuple(layers)


def _head(ops: tuple[Op, ...], window: tuple[int, int], path: str) -> tuple[ConvLayer, ...]:
    """Walk the head from the pool5 window: a map, flattened (in an order), or averaged."""
    layers: list[ConvLayer] = []
    h, w = window
    flattened: FlattenOrder | None = None
    averaged = False
    for op in ops:
        if isinstance(op, Conv):
            kernel = hwio(op)
            h, w = h - kernel.shape[0] + 1, w - kernel.shape[1] + 1
        elif isinstance(op, Dense):
            kernel = _dense_as_conv(op, h, w, flattened, averaged)
            h = w = 1
            flattened, averaged = None, False
        elif isinstance(op, Flatten):
            flattened = op.order
            continue
        elif isinstance(op, GlobalAvgPool):
            averaged = True
            continue
        elif isinstance(op, GlobalMaxPool):
            if (h, w) != (1, 1):  # the max of one cell is the cell; of more, no convolution
                raise ArchitectureError(
                    f"{path}: {op.name}: a global max pool over a {h}x{w} map, which no "
                    "convolution computes"
                )
            continue
        elif isinstance(op, Activation):
            _relu_after(layers, op, path)
            continue
        elif isinstance(op, Dropout):
            continue
        else:
            raise ArchitectureError(f"{path}: {op.name}: a {type(op).__name__} in the head")
        bias = _bias(op, kernel.shape[3])
        layers.append(ConvLayer(head_name(len(layers)), kernel, bias, False, op.name))
    return tuple(layers)


def _dense_as_conv(
    op: Dense, h: int, w: int, flattened: FlattenOrder | None, averaged: bool
) -> Tensor:
    """A dense layer as the HWIO convolution that computes it on every window of its input.

    Input index (y * w + x) * C + c of a channels-last flatten is tap (y, x, c), and
    (c * h + y) * w + x of a channels-first one too: the kernel, viewed with its input axis
    split that way, moves its axes to HWIO.
    """
    kernel = op.kernel
    out, inputs = kernel.shape if op.layout == "OI" else kernel.shape[::-1]
    if averaged:  # the mean of an h x w map, times W: every tap is W / (h * w)
        if op.layout == "OI":
            kernel = kernel.permute((out, inputs), OI_TO_IO)
        return Tensor.wrap(_Averaged(kernel, h, w), f"{op.kernel.where} / {h * w}")
    if flattened is None:  # a vector (1x1 map): a 1x1 convolution
        flattened, h, w = "HWC", 1, 1
    channels = inputs // (h * w)
    if op.layout == "OI":
        if flattened == "CHW":
            return kernel.permute((out, channels, h, w), CHW_COLUMNS_TO_HWIO)
        return kernel.permute((out, h, w, channels), HWC_COLUMNS_TO_HWIO)
    if flattened == "CHW":
        return kernel.permute((channels, h, w, out), CHW_ROWS_TO_HWIO)
    return kernel.reshape((h, w, channels, out))  # (H, W, C) rows: HWIO as it stands


class _Averaged:
    """(h, w, in, out) taps, each the (in, out) kernel divided by h * w (float64, then float32)."""

    dtype = F32

    def __init__(self, kernel: Tensor, h: int, w: int) -> None:
        self.kernel, self.h, self.w = kernel, h, w
        self.shape = (h, w, *kernel.shape)
        self._tap: np.ndarray | None = None

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._tap is None:
            self._tap = (self.kernel.read().astype(np.float64) / (self.h * self.w)).astype(F32)
        rows = range(self.h)[key] if isinstance(key, slice) else range(self.h)
        return np.broadcast_to(self._tap, (len(rows), *self.shape[1:])).copy()
