"""ONNX classifiers from any producer, read as source graphs: the model as its graph defines it.

The files people hold come from a handful of exporters (FORMATS.md: torch.onnx's TorchScript and
dynamo exporters, Keras 3's `export`, tf2onnx, the ONNX Model Zoo's MXNet and Caffe2 files).
They differ in how they say the same network — an NHWC input with `Transpose`s around every
convolution, a flatten as `Flatten` or as a `Reshape` whose target shape is computed from
`Shape(x)`, a dense layer as `Gemm` with `transB` or as `MatMul` + `Add`, a batch norm after a
dense layer as `Mul` + `Add` — and each is transcribed as it is written: a `Transpose` op, a
flatten of the array as laid out, a `Dense` in the layout `transB` says, an `Affine` along the
axis the constant broadcasts over. What those mean (which order the flatten reads the volume
in, that an `Add` after a transposed convolution is its bias) is compile's business and,
independently, the referee's.

What is only layout or bookkeeping is read and dropped here: `Identity`, `Cast` to float,
`Dropout` (kept, as an identity), `AveragePool` of kernel 1 (torch's `AdaptiveAvgPool2d((7, 7))`
at 224), a flatten of what is already a vector, and the shape subgraph (`Shape`, `Gather`,
`Slice`, `Unsqueeze`, `Squeeze`, `Concat`, `Cast`, `Constant`) computing a `Reshape`'s target,
which is evaluated here with the batch size unknown. Any other op is refused by node and type.

The graph must be a chain from its one real input (inputs minus initializers: opset-7 files list
every initializer as an input) to its one output, in the order the file lists its nodes (ONNX
requires topological order: a node reading a value no earlier node made is a cycle, or out of
order). Weights stay in the file (`onnx_proto`); external data is refused there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

from ..errors import ArchitectureError, FormatError
from ..graph import (
    Activation,
    Affine,
    ArrayLayout,
    BatchNorm,
    ChannelOrder,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InputSpec,
    MaxPool,
    Op,
    OutputActivation,
    Preprocessing,
    Provenance,
    SourceGraph,
    Transpose,
)
from ..tensor import Tensor
from . import onnx_proto
from .onnx_proto import Initializer, Model, Node

#: The ONNX versions whose files were read in this reader's tests (opset 7: the Model Zoo's
#: MXNet exports; 9: Caffe2's; 15: tf2onnx; 17-20: torch and Keras): outside them, an op's
#: meaning may have changed, so they are refused rather than guessed at.
OPSETS = range(7, 21)
IR_VERSIONS = range(3, 11)
_FLOAT_TYPES = {1, 10, 11}  # FLOAT, FLOAT16, DOUBLE


@dataclass(frozen=True)
class _Data:
    """An activation: its dims (the batch None when the file leaves it free)."""

    dims: tuple[int | None, ...]


@dataclass(frozen=True)
class _Weight:
    """A float constant, lazy; `transposed` when a `Transpose` of it was asked for."""

    tensor: Tensor
    transposed: bool = False


@dataclass(frozen=True)
class _Ints:
    """A small integer constant or a shape computed from the graph (None: the free batch)."""

    values: tuple[int | None, ...]
    scalar: bool = False


_Value = _Data | _Weight | _Ints


def read(model: Model) -> SourceGraph:
    """The source graph of an ONNX classifier, as its graph defines it.

    Raises:
        FormatError: versions outside those tested, another number of inputs or outputs than
            one, a node off the chain, or an op outside a VGG classifier's (named).
        ArchitectureError: shapes that do not chain.
    """
    return _Reader(model).graph()


class _Reader:
    def __init__(self, model: Model) -> None:
        self.model, self.path = model, model.path
        self.values: dict[str, _Value] = {}
        self.ops: list[Op] = []
        self.current = ""  # the data value the chain has reached
        self.activation: OutputActivation = "linear"
        self.opset = model.opsets.get("", model.opsets.get("ai.onnx", 0))

    def error(self, text: str) -> FormatError:
        return FormatError(f"{self.path}: {text}")

    def graph(self) -> SourceGraph:
        self._check_versions()
        layout, size = self._input()
        for node in self.model.graph.nodes:
            self._node(node)
        outputs = [value.name for value in self.model.graph.outputs]
        if outputs != [self.current]:
            raise self.error(
                f"graph outputs {outputs}; expected one output, the end of the chain of nodes "
                f"({self.current!r})"
            )
        order, preprocessing = _conventions(self.model.producer, layout)
        producer = self.model.producer or "unnamed producer"
        model = self.model
        ops = ", ".join(sorted({node.op for node in model.graph.nodes}))
        version = f" {model.producer_version}" if model.producer_version else ""
        notes: tuple[str, ...] = (
            f"ONNX by {producer}{version} (IR {model.ir_version}, opset {self.opset}): {ops}",
        )
        if order != "unknown":
            notes += (
                f"channel order and preprocessing are {producer}'s conventions, not the file's",
            )
        return SourceGraph(
            ops=tuple(self.ops),
            input=InputSpec(
                size=size,
                channels=3,
                channel_order=order,
                preprocessing=preprocessing,
                size_from="file",
                layout=layout,
            ),
            output_activation=self.activation,
            provenance=Provenance(
                path=self.path,
                format="onnx",
                generation=_generation(self.model),
                notes=notes,
            ),
            spatial="NCHW",
        )

    def _check_versions(self) -> None:
        model = self.model
        if model.ir_version not in IR_VERSIONS or self.opset not in OPSETS:
            raise self.error(
                f"ONNX IR version {model.ir_version}, opset {self.opset or 'none'}: vggfcn reads "
                f"IR versions {IR_VERSIONS.start}..{IR_VERSIONS.stop - 1} and opsets "
                f"{OPSETS.start}..{OPSETS.stop - 1} (the ones it was tested with)"
            )

    def _input(self) -> tuple[ArrayLayout, tuple[int, int]]:
        graph = self.model.graph
        for name, initializer in graph.initializers.items():
            self.values[name] = self._constant(initializer)
        real = [value for value in graph.inputs if value.name not in graph.initializers]
        if len(real) != 1:
            raise self.error(f"graph inputs {[v.name for v in real]}; expected one image input")
        (image,) = real
        dims = image.dims or ()
        static = [d if isinstance(d, int) and d > 0 else None for d in dims]
        if len(static) != 4 or image.elem_type not in _FLOAT_TYPES:
            raise self.error(
                f"input {image.name!r} is {list(dims)} of type {image.elem_type}; expected "
                "float images, (N, 3, H, W) or (N, H, W, 3)"
            )
        layout: ArrayLayout
        if static[1] == 3 and static[3] != 3:
            layout, size = "NCHW", (static[2], static[3])
        elif static[3] == 3 and static[1] != 3:
            layout, size = "NHWC", (static[1], static[2])
        else:
            raise self.error(
                f"input {image.name!r} is {list(dims)}; expected 3 channels first or last"
            )
        h, w = size
        if h is None or w is None:
            raise self.error(
                f"input {image.name!r} is {list(dims)}: its height and width are not fixed; "
                "export the classifier at the size it was built for"
            )
        self.values[image.name] = _Data(tuple(None if i == 0 else d for i, d in enumerate(static)))
        self.current = image.name
        return layout, (h, w)

    def _constant(self, initializer: Initializer) -> _Value:
        if initializer.data_type in _FLOAT_TYPES:
            return _Weight(onnx_proto.tensor(self.model, initializer))
        values = onnx_proto.array(self.model, initializer)
        return _Ints(tuple(int(v) for v in values.reshape(-1)), scalar=values.ndim == 0)

    def _get(self, node: Node, name: str) -> _Value:
        value = self.values.get(name)
        if value is None:
            raise self.error(
                f"node {_label(node)} reads {name!r}, which no earlier node makes (a cycle, "
                "or nodes out of order)"
            )
        return value

    def _node(self, node: Node) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.error(
                f"node {_label(node)} is {node.domain}.{node.op}, not an op of a VGG classifier"
            )
        names = list(node.inputs)
        inputs = [self._get(node, name) if name else None for name in names]
        if node.op == "Shape" or not any(isinstance(v, _Data) for v in inputs):
            # constants and shapes: computed here, never part of the network
            self._set(node, self._shape_op(node, inputs))
            return
        if node.op in ("Add", "Mul") and len(inputs) == 2 and names[1] == self.current:
            names.reverse()  # commutative: the constant may come first
            inputs.reverse()
        handler = getattr(self, f"_op_{node.op}", None)
        if handler is None:
            raise self.error(
                f"node {_label(node)} is a {node.op}, which is not an op of a VGG classifier "
                "vggfcn reads"
            )
        data = inputs[0]
        if not isinstance(data, _Data) or names[0] != self.current:
            raise self.error(
                f"node {_label(node)} ({node.op}) reads {names[0]!r}, not the output of "
                f"the node before it ({self.current!r}): vggfcn reads a chain of layers"
            )
        if self.activation != "linear":
            raise self.error(f"node {_label(node)} follows the output activation")
        dims = handler(node, data, inputs[1:])
        self._set(node, _Data(dims))
        self.current = node.outputs[0]

    def _set(self, node: Node, value: _Value) -> None:
        if not node.outputs:
            raise self.error(f"node {_label(node)} makes nothing")
        self.values[node.outputs[0]] = value

    # -------------------------------------------------------------- the data path's ops

    def _op_Conv(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        weight, bias = self._weight(node, rest, 0), self._weight(node, rest, 1, optional=True)
        kernel = weight.tensor
        if weight.transposed or len(kernel.shape) != 4 or len(x.dims) != 4:
            raise self.error(f"Conv {_label(node)} has a weight of shape {kernel.shape}")
        o, i, kh, kw = kernel.shape
        pads = node.ints("pads", [0, 0, 0, 0])
        checks = {
            "strides": (node.ints("strides", [1, 1]), [1, 1]),
            "dilations": (node.ints("dilations", [1, 1]), [1, 1]),
            "group": ([node.int("group", 1)], [1]),
            "kernel_shape": (node.ints("kernel_shape", [kh, kw]), [kh, kw]),
        }
        wrong = {k: v for k, (v, want) in checks.items() if v != want}
        same, valid = pads == [kh // 2, kw // 2] * 2 and kh % 2 == kw % 2 == 1, pads == [0] * 4
        auto = node.attributes.get("auto_pad")
        if (
            wrong
            or not (same or valid)
            or (auto is not None and auto.value not in (b"NOTSET", b""))
        ):
            raise self.error(
                f"Conv {_label(node)} has {_shown(node)}; a VGG convolution has stride 1, "
                "dilation 1, group 1 and pads of half its kernel (3x3, pad 1) or none"
            )
        if x.dims[1] != i:
            raise ArchitectureError(
                f"{self.path}: Conv {_label(node)} reads {x.dims[1]} channels with a weight of "
                f"shape {kernel.shape}"
            )
        h, w = _spatial(x.dims[2], kh, same), _spatial(x.dims[3], kw, same)
        b = bias.tensor if bias is not None else None
        self.ops.append(Conv(_label(node), kernel, b, "OIHW", "same" if same else "valid"))
        return (x.dims[0], o, h, w)

    def _op_Relu(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        self.ops.append(Activation(_label(node), "relu"))
        return x.dims

    def _op_MaxPool(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        pads = node.ints("pads", [0, 0, 0, 0])
        ceil = node.int("ceil_mode", 0) == 1 or pads == [0, 0, 1, 1]  # Caffe2: pads at the end
        plain = (
            node.ints("kernel_shape") == [2, 2]
            and node.ints("strides", [1, 1]) == [2, 2]
            and node.ints("dilations", [1, 1]) == [1, 1]
            and pads in ([0, 0, 0, 0], [0, 0, 1, 1])
            and node.int("storage_order", 0) == 0
            and len(node.outputs) == 1
        )
        if not plain or len(x.dims) != 4:
            raise self.error(
                f"MaxPool {_label(node)} has {_shown(node)}; a VGG pool is 2x2, stride 2"
            )
        self.ops.append(MaxPool(_label(node), ceil=ceil))
        h, w = (_pooled(d, ceil) for d in x.dims[2:])
        return (*x.dims[:2], h, w)

    def _op_AveragePool(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        if node.ints("kernel_shape") != [1, 1] or node.ints("strides", [1, 1]) != [1, 1]:
            raise self.error(
                f"AveragePool {_label(node)} has {_shown(node)}: it averages, where torch's "
                "AdaptiveAvgPool2d((7, 7)) at the size a VGG was built for is an identity "
                "(kernel 1); export the classifier at that size"
            )
        return x.dims

    def _op_GlobalAveragePool(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        self.ops.append(GlobalAvgPool(_label(node), keepdims=True))
        return (*x.dims[:2], 1, 1)

    def _op_BatchNormalization(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        gamma, beta, mean, var = (self._weight(node, rest, i).tensor for i in range(4))
        if len(node.outputs) > 1 and any(node.outputs[1:]) or node.int("training_mode", 0):
            raise self.error(f"BatchNormalization {_label(node)} is in training mode")
        eps = node.float("epsilon", 1e-5)
        self.ops.append(BatchNorm(_label(node), gamma, beta, mean, var, eps))
        return x.dims

    def _op_Dropout(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        self.ops.append(Dropout(_label(node)))
        return x.dims

    def _op_Identity(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        return x.dims

    def _op_Cast(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        if node.int("to", 1) != onnx_proto.FLOAT:
            raise self.error(f"Cast {_label(node)} casts the images to type {node.int('to', 0)}")
        return x.dims

    def _op_Transpose(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        perm = tuple(node.ints("perm", list(range(len(x.dims)))[::-1]))
        if sorted(perm) != list(range(len(x.dims))) or perm[0] != 0:
            raise self.error(f"Transpose {_label(node)} moves axes {list(perm)}")
        self.ops.append(Transpose(_label(node), perm))
        return tuple(x.dims[i] for i in perm)

    def _op_Flatten(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        if node.int("axis", 1) != 1:
            raise self.error(f"Flatten {_label(node)} flattens from axis {node.int('axis', 1)}")
        return self._flatten(node, x)

    def _op_Reshape(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        shape = rest[0] if rest else None
        if not isinstance(shape, _Ints):
            raise self.error(f"Reshape {_label(node)} has no shape it can compute")
        target = list(shape.values)
        allowzero = node.int("allowzero", 0)
        target = [
            x.dims[i] if v == 0 and not allowzero and i < len(x.dims) else v
            for i, v in enumerate(target)
        ]
        features = prod(d or 1 for d in x.dims[1:])
        if (
            len(target) == 2
            and target[0] in (None, -1, x.dims[0], 1)
            and target[1]
            in (
                -1,
                features,
            )
        ):
            return self._flatten(node, x)
        raise self.error(
            f"Reshape {_label(node)} makes {list(x.dims)} into {shape.values}; only a flatten "
            "to (N, -1) is a VGG classifier's"
        )

    def _flatten(self, node: Node, x: _Data) -> tuple[int | None, ...]:
        if any(d is None for d in x.dims[1:]):
            raise self.error(f"{_label(node)} flattens {list(x.dims)}, whose size is not fixed")
        if len(x.dims) > 2:
            self.ops.append(Flatten(_label(node), "array"))
        return (x.dims[0], prod(d or 1 for d in x.dims[1:]))

    def _op_Gemm(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        weight = self._weight(node, rest, 0)
        bias = self._weight(node, rest, 1, optional=True)
        attributes = (node.float("alpha", 1.0), node.float("beta", 1.0), node.int("transA", 0))
        if attributes != (1.0, 1.0, 0):
            raise self.error(
                f"Gemm {_label(node)} has {_shown(node)}; expected alpha 1, beta 1, transA 0"
            )
        dense = self._dense(node, x, weight, bool(node.int("transB", 0)))
        outputs = dense.kernel.shape[0 if dense.layout == "OI" else 1]
        if bias is not None:
            if bias.tensor.shape not in ((outputs,), (1, outputs)):
                raise self.error(f"Gemm {_label(node)} adds C of shape {bias.tensor.shape}")
            dense = Dense(dense.name, dense.kernel, bias.tensor.reshape((outputs,)), dense.layout)
        self.ops.append(dense)
        return (x.dims[0], outputs)

    def _op_MatMul(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        dense = self._dense(node, x, self._weight(node, rest, 0), False)
        self.ops.append(dense)
        return (x.dims[0], dense.kernel.shape[0 if dense.layout == "OI" else 1])

    def _dense(self, node: Node, x: _Data, weight: _Weight, trans_b: bool) -> Dense:
        """A Dense as written: B (in, out), or (out, in) when transposed once (transB, or a
        Transpose of the initializer)."""
        kernel = weight.tensor
        if len(kernel.shape) != 2 or len(x.dims) != 2:
            raise self.error(
                f"{node.op} {_label(node)} multiplies {list(x.dims)} by {kernel.shape}; "
                "expected a vector by a matrix"
            )
        out_in = trans_b != weight.transposed
        return Dense(_label(node), kernel, None, "OI" if out_in else "IO")

    def _op_Add(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        axis, vector = self._along(node, x, rest)
        self.ops.append(Affine(_label(node), None, vector, axis))
        return x.dims

    def _op_Sub(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        axis, vector = self._along(node, x, rest)  # a few thousand values: negated here
        negated = Tensor.wrap(-vector.read(), f"{vector.where} (negated)")
        self.ops.append(Affine(_label(node), None, negated, axis))
        return x.dims

    def _op_Mul(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int | None, ...]:
        axis, vector = self._along(node, x, rest)
        self.ops.append(Affine(_label(node), vector, None, axis))
        return x.dims

    def _along(self, node: Node, x: _Data, rest: list[_Value | None]) -> tuple[int, Tensor]:
        """(axis, vector) of a constant c in `x op c` that varies along one axis of x
        (broadcast, as NumPy's rules right-align the shapes)."""
        constant = rest[0] if rest else None
        if len(node.inputs) != 2 or not isinstance(constant, _Weight) or constant.transposed:
            raise self.error(
                f"{node.op} {_label(node)} combines the activations with {node.inputs[1:]}; "
                "expected a constant of one value per channel or feature"
            )
        shape = constant.tensor.shape
        aligned = (1,) * (len(x.dims) - len(shape)) + tuple(shape)
        varying = [i for i, d in enumerate(aligned) if d != 1]
        if len(aligned) != len(x.dims) or len(varying) != 1 or varying[0] == 0:
            raise self.error(
                f"{node.op} {_label(node)} combines {list(x.dims)} with a constant of shape "
                f"{shape}; expected one value per channel or feature"
            )
        axis = varying[0]
        if x.dims[axis] != aligned[axis]:
            raise ArchitectureError(
                f"{self.path}: {node.op} {_label(node)} has {aligned[axis]} values for an axis "
                f"of {x.dims[axis]}"
            )
        return axis, constant.tensor.reshape((aligned[axis],))

    def _op_Softmax(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        return self._output(node, x, "softmax")

    def _op_Sigmoid(
        self, node: Node, x: _Data, rest: list[_Value | None]
    ) -> tuple[int | None, ...]:
        return self._output(node, x, "sigmoid")

    def _output(self, node: Node, x: _Data, kind: OutputActivation) -> tuple[int | None, ...]:
        axis = node.int("axis", -1 if self.opset >= 13 else 1)
        if len(x.dims) != 2 or axis not in (1, -1):
            raise self.error(f"{node.op} {_label(node)} acts on {list(x.dims)}, axis {axis}")
        self.activation = kind
        return x.dims

    def _weight(
        self, node: Node, rest: list[_Value | None], index: int, optional: bool = False
    ) -> Any:
        value = rest[index] if index < len(rest) else None
        if value is None and optional:
            return None
        if not isinstance(value, _Weight):
            raise self.error(
                f"{node.op} {_label(node)} reads {node.inputs[1 + index : 2 + index]} as a weight; "
                "expected a float initializer or constant"
            )
        return value

    # -------------------------------------------------------------- the shape subgraph

    def _shape_op(self, node: Node, inputs: Sequence[_Value | None]) -> _Value:
        op = node.op
        first = inputs[0] if inputs else None
        if op == "Constant":
            return self._constant_node(node)
        if op == "Shape":
            if not isinstance(first, _Data):
                raise self.error(f"Shape {_label(node)} of a constant")
            dims = list(first.dims)
            start, end = node.int("start", 0), node.ints("end", [len(dims)])[0]
            return _Ints(tuple(dims[slice(start, end)]))
        if op == "Cast":
            if isinstance(first, _Weight):
                return first
            return self._ints(node, first)
        if isinstance(first, _Weight) and op == "Transpose":
            if node.ints("perm", [1, 0]) != [1, 0] or len(first.tensor.shape) != 2:
                raise self.error(f"Transpose {_label(node)} of a weight by {node.ints('perm')}")
            return _Weight(first.tensor, not first.transposed)
        values = list(self._ints(node, first).values)
        if op == "Gather":
            indices = self._ints(node, inputs[1] if len(inputs) > 1 else None)
            if node.int("axis", 0) != 0:
                raise self.error(f"Gather {_label(node)} along axis {node.int('axis', 0)}")
            picked = tuple(values[i] for i in indices.values if i is not None)
            return _Ints(picked, scalar=indices.scalar)
        if op == "Slice":
            starts, ends, axes, steps = self._slice_arguments(node, inputs)
            if axes not in ([0], []) or steps not in ([1], []):
                raise self.error(f"Slice {_label(node)} of a shape along axes {axes}")
            return _Ints(tuple(values[starts[0] : ends[0]]))
        if op in ("Unsqueeze", "Squeeze"):
            return _Ints(tuple(values), scalar=op == "Squeeze" and len(values) == 1)
        if op == "Concat":
            parts = [self._ints(node, value).values for value in inputs]
            return _Ints(tuple(v for part in parts for v in part))
        raise self.error(f"node {_label(node)} is a {op} of constants vggfcn does not compute")

    def _slice_arguments(
        self, node: Node, inputs: Sequence[_Value | None]
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        if self.opset < 10:
            return (node.ints("starts"), node.ints("ends"), node.ints("axes"), [])
        found = [
            [v if v is not None else 0 for v in self._ints(node, value).values]
            for value in inputs[1:]
        ]
        starts, ends = found[0], found[1]
        return starts, ends, found[2] if len(found) > 2 else [], found[3] if len(found) > 3 else []

    def _ints(self, node: Node, value: _Value | None) -> _Ints:
        if not isinstance(value, _Ints):
            raise self.error(
                f"{node.op} {_label(node)} computes with {type(value).__name__.strip('_')}; "
                "vggfcn computes shapes, nothing else"
            )
        return value

    def _constant_node(self, node: Node) -> _Value:
        attribute = node.attributes.get("value")
        if attribute is not None and isinstance(attribute.value, Initializer):
            return self._constant(attribute.value)
        for name in ("value_int", "value_ints"):
            found = node.attributes.get(name)
            if found is not None:
                values = found.value if isinstance(found.value, list) else [found.value]
                return _Ints(tuple(int(v) for v in values), scalar=name == "value_int")
        raise self.error(f"Constant {_label(node)} holds {sorted(node.attributes)}")


def _label(node: Node) -> str:
    """A node as messages and ops name it: its name, or (Caffe2 leaves names empty) its first
    output."""
    return node.name or (node.outputs[0] if node.outputs else node.op)


def _shown(node: Node) -> str:
    return str({name: a.value for name, a in node.attributes.items()})


def _spatial(side: int | None, kernel: int, same: bool) -> int | None:
    if side is None:
        return None
    return side if same else side - kernel + 1


def _pooled(side: int | None, ceil: bool) -> int | None:
    if side is None:
        return None
    return (side + 1) // 2 if ceil else side // 2


def _generation(model: Model) -> str:
    """Who wrote the file, as `inspect` and metadata say it: the producer's name (MXNet's
    Model Zoo exports leave it empty)."""
    return model.producer or "unnamed"


def _conventions(producer: str, layout: ArrayLayout) -> tuple[ChannelOrder, Preprocessing]:
    """Channel order and preprocessing, which no ONNX file records, where its producer's
    conventions say them: torch's exports of torchvision-style models take RGB normalised by
    the ImageNet mean and std; tf2onnx's and Caffe2's are Keras' and Caffe's VGGs, BGR minus
    the means. Anything else (Keras 3's exports go through torch too, but take NHWC images):
    unknown, and `--rgb`/`--bgr`, `--preprocess` say it."""
    if producer == "pytorch" and layout == "NCHW":
        return "rgb", "torch"
    if producer in ("tf2onnx", "onnx-caffe2"):
        return "bgr", "caffe"
    return "unknown", "unknown"
