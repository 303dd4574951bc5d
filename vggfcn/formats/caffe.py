"""Caffe `.caffemodel` files (the original Oxford VGG16/VGG19 release among them), read without
Caffe or the protobuf package.

A caffemodel is one serialised `NetParameter` (BVLC Caffe, `src/caffe/proto/caffe.proto`,
proto2). The protobuf wire format is small enough to own: each field is a varint key
`number << 3 | wire type`, then a varint (type 0), 8 or 4 fixed bytes (types 1, 5) or a varint
length and that many bytes (type 2: strings, sub-messages, packed arrays); groups (types 3, 4)
are not used by Caffe and are refused. The fields read here:

- NetParameter: name 1, `layers` 2 (V1LayerParameter, the 2014 format), input 3, input_dim 4
  (N, C, H, W per input), input_shape 8, `layer` 100 (LayerParameter). Caffe itself refuses a
  net holding both lists. The Oxford VGG16 release is V1 with `input: "data"` and no dims
  (Caffe's upgrade crashed on that: BVLC/caffe#3750), so its input size comes from fc6's fan-in.
- V1LayerParameter: bottom 2, top 3, name 4, type 5 (an enum, `_V1_TYPES`), blobs 6,
  convolution_param 10, inner_product_param 17, pooling_param 19, relu_param 30; field 1 holds a
  V0 layer (older still), refused.
- LayerParameter: name 1, type 2 (a string), bottom 3, top 4, blobs 7, convolution_param 106,
  inner_product_param 117, pooling_param 121, relu_param 123, input_param 143 (shape 1).
- BlobProto: num 1, channels 2, height 3, width 4 (the legacy 4-D shape: an InnerProduct weight
  is 1x1xOUTxIN, a bias 1x1x1xN; Caffe prefers them to `shape` when present), data 5 (float32,
  packed or not), shape 7 (BlobShape: dim 1, int64, packed or not), double_data 8.
- ConvolutionParameter: bias_term 2, pad 3, kernel_size 4, group 5, stride 6, pad_h/w 9/10,
  kernel_h/w 11/12, stride_h/w 13/14, axis 16, dilation 18. PoolingParameter: pool 1 (MAX 0),
  kernel_size 2, stride 3 (default 1), pad 4, kernel_h/w 5/6, stride_h/w 7/8, pad_h/w 9/10,
  global_pooling 12, round_mode 13 (CEIL 0, the default: Caffe rounds pooled sizes up).
  InnerProductParameter: bias_term 2, axis 5, transpose 6 (weight stored (in, out)).
  ReLUParameter: negative_slope 1.

Packed float data is little-endian float32 bytes: each blob becomes a `FileRegion` over them,
so a 553 MB file converts in about the time of copying it. The file is memory-mapped and scanned
once; every length is checked against the message holding it, and nesting is bounded by
construction: the reader descends only into the messages it knows (net > layer > blob or
parameter > shape), stepping over any other field by its wire type.

As Caffe runs it: OIHW convolutions, then InnerProduct layers over the volume flattened as
(C, H, W); ReLU, Dropout and max-pool layers of their own; BGR input minus the ImageNet means.
Input, data, accuracy and loss layers are not part of the classifier and are skipped, a Split
(Caffe's fan-out of one blob) only renames the chain's blob, and a final Softmax (or a
SoftmaxWithLoss on the logits) is the output activation. Anything else is refused by name.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..graph import (
    Activation,
    Conv,
    Dense,
    Dropout,
    Flatten,
    InputSpec,
    MaxPool,
    Op,
    OutputActivation,
    Provenance,
    SourceGraph,
)
from ..tensor import Tensor
from .protobuf import Message, Wire
from .region import FileRegion

#: V1LayerParameter.LayerType, as Caffe's own upgrade (`UpgradeV1LayerType`) names them.
# fmt: off
_V1_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col",
    12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise", 26: "Power",
    27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData", 30: "ArgMax",
    31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal", 36: "Silence",
    37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}
# fmt: on
_POOL_METHODS = {0: "max", 1: "average", 2: "stochastic"}
#: Layers that feed the net rather than compute it: they seed the chain with their first top.
_INPUTS = frozenset(
    {"Input", "Data", "DummyData", "ImageData", "HDF5Data", "MemoryData", "WindowData"}
)


@dataclass(frozen=True)
class _Layout:
    """Field numbers of one generation's layer message."""

    generation: str
    name: int
    type: int
    bottom: int
    top: int
    blobs: int
    params: dict[str, int]  # layer type -> its parameter message's field


_V1 = _Layout(
    "v1", 4, 5, 2, 3, 6, {"Convolution": 10, "InnerProduct": 17, "Pooling": 19, "ReLU": 30}
)
_V2 = _Layout(
    "v2", 1, 2, 3, 4, 7,
    {"Convolution": 106, "InnerProduct": 117, "Pooling": 121, "ReLU": 123, "Input": 143},
)  # fmt: skip


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph]:  # noqa: A001 (the reader contract's name)
    """The classifier in a `.caffemodel`, its blobs lazy views of the file.

    Raises:
        FormatError: not a NetParameter (truncated, bad varint, a length past its end, a group),
            blobs whose data disagree with their shape, both layer lists, V0 layers, layers that
            do not form a chain, or layer types and settings a VGG classifier does not have.
    """
    with builtins.open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FormatError(f"{path}: empty file, expected a .caffemodel")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            graph = _Net(Wire(path, data)).read()
    yield graph


class _Net:
    """A NetParameter read layer by layer into the ops of a chain."""

    def __init__(self, wire: Wire) -> None:
        self.wire, self.path = wire, wire.path
        self.net = wire.message([(0, len(wire.data))], "NetParameter")
        self.ops: list[Op] = []
        self.current = set(wire.strings(self.net, 3))  # blobs holding the chain's activation
        self.output: OutputActivation = "linear"
        self.dims = wire.ints(self.net, 4)[:4] or self._shape(self.net, 8, "input_shape")
        self.assumed: list[str] = []

    def read(self) -> SourceGraph:
        v1, v2 = self.net.spans.get(2, []), self.net.spans.get(100, [])
        if v1 and v2:
            raise self.wire.error(
                f"holds both V1 `layers` ({len(v1)}) and current `layer` ({len(v2)}) lists; "
                "expected one (Caffe refuses such nets too)"
            )
        if not (v1 or v2):
            raise self.wire.error("no layers: neither V1 `layers` nor `layer` (not a caffemodel?)")
        layout = _V1 if v1 else _V2
        for index, span in enumerate(v1 or v2):
            self._layer(layout, index, self.wire.message([span], f"layer #{index + 1}"))
        if self.dims and (len(self.dims) != 4 or not all(0 < d < 2**31 for d in self.dims)):
            raise self.wire.error(f"input shape {self.dims}; expected (N, C, H, W)")
        assumed = (
            f"no parameters for {', '.join(self.assumed)}: VGG's 3x3 pad 1 convolutions and "
            "2x2 stride 2 max pools (rounding up) assumed"
        )
        notes = (assumed,) if self.assumed else ()
        return SourceGraph(
            ops=tuple(self.ops),
            input=InputSpec(
                size=(self.dims[2], self.dims[3]) if self.dims else None,
                channels=self.dims[1] if self.dims else 3,
                channel_order="bgr",
                preprocessing="caffe",
                size_from="file" if self.dims else "",
            ),
            output_activation=self.output,
            provenance=Provenance(self.path, "caffemodel", layout.generation, notes),
        )

    def _shape(self, message: Message, number: int, what: str) -> list[int]:
        """The dims of the first BlobShape in a repeated field, or []."""
        spans = message.spans.get(number, [])
        return self.wire.ints(self.wire.message(spans[:1], what), 1)

    def _layer(self, layout: _Layout, index: int, layer: Message) -> None:
        wire = self.wire
        name = (wire.strings(layer, layout.name) or [f"#{index + 1}"])[-1]
        if layout is _V1:
            if layer.has(1):
                raise wire.error(
                    f"layer {name} is in the V0 format (2014); upgrade the file with Caffe's "
                    "upgrade_net_proto_binary first"
                )
            number = layer.last(layout.type)
            kind = _V1_TYPES.get(number, f"V1 type {number}")
        else:
            kind = (wire.strings(layer, layout.type) or [""])[-1]
        if not kind:
            raise wire.error(f"layer {name} has no type")
        bottoms, tops = wire.strings(layer, layout.bottom), wire.strings(layer, layout.top)
        spans = layer.spans.get(layout.params.get(kind, 0))
        param = wire.message(spans, f"layer {name} parameters") if spans else None
        if kind in _INPUTS:
            if not self.ops and tops:
                self.current = {tops[0]}
            if kind == "Input" and param is not None and not self.dims:
                self.dims = self._shape(param, 1, f"layer {name} input shape")
            return
        if kind in ("Accuracy", "Silence") or kind.endswith("Loss"):
            if kind == "SoftmaxWithLoss" and bottoms[:1] and bottoms[0] in self.current:
                self.output = "softmax"
            return
        if len(bottoms) != 1 or not tops or (len(tops) > 1 and kind != "Split"):
            raise wire.error(
                f"layer {name} ({kind}) reads {bottoms} and writes {tops}; expected one blob "
                "each way (a VGG is a chain)"
            )
        if self.current and bottoms[0] not in self.current:
            raise wire.error(
                f"layer {name} reads {bottoms[0]!r}, but the layer before it wrote "
                f"{sorted(self.current)}; expected the layers to form a chain"
            )
        if self.output != "linear":
            raise wire.error(f"layer {name} ({kind}) follows the output softmax; expected none")
        self.current = {bottoms[0], *tops} if kind == "Split" else {tops[0]}
        self._op(kind, name, param, layer.spans.get(layout.blobs, []))

    def _op(
        self, kind: str, name: str, param: Message | None, blobs: list[tuple[int, int]]
    ) -> None:
        """The op of one chain layer, its settings checked against what the op can mean."""
        wire = self.wire
        if kind in ("Convolution", "InnerProduct"):
            if kind == "InnerProduct" and not any(isinstance(op, Dense) for op in self.ops):
                self.ops.append(Flatten(f"{name}.flatten", "CHW"))  # Caffe flattens (C, H, W)
            with_bias = param is None or param.last(2, 1) != 0
            if len(blobs) != 1 + with_bias:
                raise wire.error(
                    f"layer {name} has {len(blobs)} blobs, expected {1 + with_bias} "
                    f"(weights{', bias' if with_bias else ''})"
                )
            bias = self._tensor(name, 1, blobs[1], 1) if with_bias else None
            if kind == "Convolution":
                self._check_conv(name, param)
                self.ops.append(Conv(name, self._tensor(name, 0, blobs[0], 4), bias, "OIHW"))
            else:
                axis, transpose = (1, 0) if param is None else (param.last(5, 1), param.last(6))
                if axis != 1:
                    raise wire.error(f"layer {name} has inner-product axis {axis}, expected 1")
                kernel = self._tensor(name, 0, blobs[0], 2)
                self.ops.append(Dense(name, kernel, bias, "IO" if transpose else "OI"))
        elif kind == "Pooling":
            self.ops.append(MaxPool(name, ceil=self._check_pool(name, param)))
        elif kind == "ReLU":
            slopes = param.spans.get(1, []) if param is not None else []
            raw = wire.data[slopes[-1][0] : slopes[-1][1]] if slopes else bytes(4)
            if len(raw) != 4 or np.frombuffer(raw, "<f4")[0] != 0:
                raise wire.error(f"layer {name} is a leaky ReLU; expected a plain ReLU")
            self.ops.append(Activation(name, "relu"))
        elif kind == "Dropout":
            self.ops.append(Dropout(name))
        elif kind == "Softmax":
            self.output = "softmax"
        elif kind != "Split":  # a Split only names its input again
            raise wire.error(
                f"layer {name} has type {kind}, which a VGG classifier does not use; expected "
                "Convolution, ReLU, Pooling, InnerProduct, Dropout, Softmax"
            )

    def _geometry(self, param: Message, one: int, h: int, w: int, default: int) -> set[int]:
        """The values of a side setting given once (`one`) or per axis (`h`, `w`)."""
        wire = self.wire
        return set(wire.ints(param, one) or wire.ints(param, h) + wire.ints(param, w) or [default])

    def _check_conv(self, name: str, param: Message | None) -> None:
        if param is None:
            self.assumed.append(name)
            return
        kernel, pad = self._geometry(param, 4, 11, 12, 0), self._geometry(param, 3, 9, 10, 0)
        stride = self._geometry(param, 6, 13, 14, 1)
        dilation, group = set(self.wire.ints(param, 18) or [1]), param.last(5, 1)
        if (kernel, pad, stride, dilation, group, param.last(16, 1)) != ({3}, {1}, {1}, {1}, 1, 1):
            raise self.wire.error(
                f"layer {name} is a convolution with kernel {sorted(kernel)}, pad {sorted(pad)}, "
                f"stride {sorted(stride)}, dilation {sorted(dilation)}, group {group}; expected "
                "VGG's 3x3, pad 1, stride 1"
            )

    def _check_pool(self, name: str, param: Message | None) -> bool:
        """Whether a 2x2 stride-2 max pool rounds its output size up (Caffe's default)."""
        if param is None:
            self.assumed.append(name)
            return True
        kernel, stride = self._geometry(param, 2, 5, 6, 0), self._geometry(param, 3, 7, 8, 1)
        pad, method = self._geometry(param, 4, 9, 10, 0), param.last(1)
        if (method, kernel, stride, pad, param.last(12)) != (0, {2}, {2}, {0}, 0):
            raise self.wire.error(
                f"layer {name} is {_POOL_METHODS.get(method, f'method-{method}')}"
                f"{' global' if param.last(12) else ''} pooling with kernel {sorted(kernel)}, "
                f"stride {sorted(stride)}, pad {sorted(pad)}; expected a 2x2 max pool of stride 2"
            )
        return param.last(13) == 0

    def _tensor(self, name: str, index: int, span: tuple[int, int], rank: int) -> Tensor:
        """A blob as a lazy tensor of `rank` dims (leading 1s of a legacy 4-D shape dropped):
        a map of its packed bytes, or (unpacked, rare) an array of them."""
        wire, what = self.wire, f"layer {name} blob {index}"
        blob = wire.message([span], what)
        if any(blob.has(n) for n in (1, 2, 3, 4)):  # the legacy shape wins, as in Caffe
            shape = [blob.last(n) for n in (1, 2, 3, 4)]
        else:
            shape = self._shape(blob, 7, f"{what} shape")
        if any(d >= 2**31 for d in shape):
            raise wire.error(f"{what} has shape {shape} with a negative or huge dimension")
        floats, doubles = blob.spans.get(5, []), blob.spans.get(8, [])
        if floats and doubles:
            raise wire.error(f"{what} holds both float and double data; expected one")
        spans, dtype = (doubles, np.dtype("<f8")) if doubles else (floats, np.dtype("<f4"))
        nbytes = sum(b - a for a, b in spans)
        if nbytes % dtype.itemsize:
            raise wire.error(
                f"{what} has {nbytes} bytes of {dtype.name} data, not a multiple of "
                f"{dtype.itemsize}"
            )
        if nbytes // dtype.itemsize != math.prod(shape):
            raise wire.error(
                f"{what} holds {nbytes // dtype.itemsize} values, its shape {shape} needs "
                f"{math.prod(shape)}"
            )
        lead, kept = shape[: max(0, len(shape) - rank)], tuple(shape[-rank:])
        if len(shape) < rank or any(d != 1 for d in lead):
            raise wire.error(f"{what} has shape {shape}; expected {rank} dims (after leading 1s)")
        where = f"{self.path}:{name}.blobs[{index}]"
        if len(spans) == 1:
            return Tensor.wrap(FileRegion(self.path, spans[0][0], kept, dtype), where)
        raw = b"".join(wire.data[a:b] for a, b in spans)
        return Tensor.wrap(np.frombuffer(raw, dtype).reshape(kept), where)
