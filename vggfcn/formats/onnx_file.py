"""Our ONNX output, both directions: one self-contained `.onnx` file, streamed out and read back.

Why not the `onnx` package: it builds the whole ModelProto in memory (553 MB of VGG16 weights,
then a serialised copy of them), and it is a test client here, never a run-time dependency.
The protobuf wire format is simple enough to own: a message is a sequence of fields, each a
varint key `field << 3 | wire type` then a varint (type 0), or a varint length and that many
bytes (type 2: strings, bytes, sub-messages); types 1 and 5 are 8 and 4 fixed bytes.
Every length is known from the shapes before a weight is read, so the file is written front to
back, each initializer's `raw_data` streamed piece by piece into its place (`write_tensor`), and
nothing is patched afterwards.

Field numbers, from onnx/onnx.proto (proto2; the few we write, in field-number order, which is
also the order `SerializeToString` uses, so our bytes equal a re-serialisation by `onnx`):

- ModelProto: ir_version 1, producer_name 2, producer_version 3, graph 7, opset_import 8,
  metadata_props 14 (last: `metadata()` is called once the weights are out);
- OperatorSetIdProto: domain 1, version 2; StringStringEntryProto: key 1, value 2;
- GraphProto: node 1, name 2, initializer 5, input 11, output 12 (sparse_initializer 15 refused);
- NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7;
- AttributeProto: name 1, ints 8 (repeated int64, unpacked), type 20 (INTS = 7);
- TensorProto: dims 1, data_type 2 (FLOAT = 1), name 8, raw_data 9 (little-endian; the typed
  `float_data` etc., `segment` and external data are refused);
- ValueInfoProto: name 1, type 2; TypeProto: tensor_type 1; TypeProto.Tensor: elem_type 1,
  shape 2; TensorShapeProto: dim 1; Dimension: dim_value 1, dim_param 2.

The graph (opset 17, IR version 8, NCHW): `input` (N, 3, H, W) -> per trunk conv a 3x3 `Conv`
(pads 1) and its `Relu`, a 2x2 stride-2 `MaxPool` after each block -> head `Conv`s (pads 0,
"valid"), each with a `Relu` where the layer has one -> `logits` (N, classes, h, w). Kernels are
OIHW, as ONNX's Conv wants. Names follow the source's layers (`layer_names`). `metadata_props`
holds `metadata()` sorted by key, with `STORAGE` describing this file; the network's structure
is read back from the graph itself.
"""

from __future__ import annotations

import builtins
import contextlib
import mmap
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from math import prod
from typing import BinaryIO

from .. import __version__
from ..arch import PLANS, conv_names
from ..errors import ArchitectureError, FormatError
from ..fcn import FCN, ConvLayer, head_name
from ..tensor import F32, Tensor
from . import fcn_file
from .blocks import write_tensor
from .protobuf import LEN, VARINT, Message, Wire
from .region import FileRegion

IR_VERSION = 8  # the IR of ONNX 1.12, which introduced opset 17
OPSET = 17
PRODUCER = "vggfcn"
STORED_AS = f"vggfcn-onnx opset {OPSET} float32"
#: Metadata the writer sets whatever `metadata()` says: the facts of this file's storage.
STORAGE = {
    "format": fcn_file.FORMAT,
    "format_version": fcn_file.FORMAT_VERSION,
    "layout": "OIHW",
    "names": "source",
    "dtype": "float32",
}
HWIO_TO_OIHW = (3, 2, 0, 1)
OIHW_TO_HWIO = (2, 3, 1, 0)
_FLOAT, _INTS = 1, 7  # TensorProto.FLOAT, AttributeProto.INTS
#: TensorProto fields that hold or locate data somewhere other than `raw_data`.
_OTHER_DATA = {
    3: "segment",
    4: "float_data",
    5: "int32_data",
    6: "string_data",
    7: "int64_data",
    10: "double_data",
    11: "uint64_data",
    13: "external_data",
    14: "data_location",
}
_POOL = {"kernel_shape": [2, 2], "strides": [2, 2]}
_BLOCKS = len(PLANS["vgg16"])  # every VGG plan has five blocks


def layer_names(fcn: FCN) -> list[str]:
    """Each layer's name in the graph: its source name (`features.0`, `fc1`) made a C
    identifier (`features_0`), numbered `_2`, `_3`... where that would repeat a name in use.

    The layer's Conv node and output are called that name, its Relu `{name}_relu`, its
    initializers `{name}_weight` and `{name}_bias`; block b's MaxPool is `pool{b}`, the graph's
    input `input` and its output `logits`.
    """
    used = {"input", "logits", *(f"pool{b}" for b in range(1, len(fcn.plan) + 1))}
    names = []
    for layer in fcn.layers:
        base = re.sub(r"\W", "_", layer.source_name, flags=re.ASCII)
        base = base if base[:1].isalpha() or base[:1] == "_" else f"_{base}"
        name, n = base, 1
        while used & (derived := {name, *(f"{name}_{s}" for s in ("relu", "weight", "bias"))}):
            n += 1
            name = f"{base}_{n}"
        used |= derived
        names.append(name)
    return names


def write(
    f: BinaryIO,
    fcn: FCN,
    metadata: Callable[[], Mapping[str, str]],
    progress: Callable[[int], object] = lambda _n: None,
    allow_nonfinite: bool = False,
) -> None:
    """Stream `fcn` into `f` as one ONNX model, float32, holding one weight block at a time.

    Args:
        metadata: called once the weights are written (a source digest may be computed
            meanwhile); stored as `metadata_props` with `STORAGE` over it, sorted.
        progress: called with the number of weight bytes after each block.
        allow_nonfinite: write NaN/Inf weights instead of refusing them.

    Raises:
        FormatError: a weight holds NaN or Inf (unless allowed), naming it and the count.
    """
    nodes, initializers = _graph(fcn)
    images = _value_info("input", ["N", fcn.trunk[0].kernel.shape[2], "H", "W"])
    ends = _bytes(11, images) + _bytes(12, _value_info("logits", ["N", fcn.classes, "h", "w"]))
    start = nodes + _bytes(2, f"{fcn.name}_fcn".encode())
    weights = sum(len(head) + t.size * F32.itemsize for head, t in initializers)
    f.write(_int(1, IR_VERSION) + _bytes(2, PRODUCER.encode()) + _bytes(3, __version__.encode()))
    f.write(_key(7, LEN) + _varint(len(start) + weights + len(ends)) + start)
    for head, tensor in initializers:
        f.write(head)
        write_tensor(f, tensor, allow_nonfinite, progress)
    f.write(ends + _bytes(8, _bytes(1, b"") + _int(2, OPSET)))
    for key, value in sorted({**metadata(), **STORAGE}.items()):
        f.write(_bytes(14, _bytes(1, key.encode()) + _bytes(2, value.encode())))


def _graph(fcn: FCN) -> tuple[bytes, list[tuple[bytes, Tensor]]]:
    """The nodes' bytes, and each initializer's bytes up to its data with the tensor to stream.

    Layers are chained by output names; the last value is renamed `logits`.
    """
    nodes, initializers, value = [], [], "input"
    pools = {end: b for b, end in enumerate(accumulate(fcn.plan), 1)}  # last conv -> block
    for i, (layer, name) in enumerate(zip(fcn.layers, layer_names(fcn), strict=True)):
        kernel = layer.kernel.permute(layer.kernel.shape, HWIO_TO_OIHW)
        for suffix, tensor in (("weight", kernel), ("bias", layer.bias)):
            initializers.append((_initializer(f"{name}_{suffix}", tensor.shape), tensor))
        pads = [1] * 4 if i < len(fcn.trunk) else [0] * 4
        attributes = {"kernel_shape": list(kernel.shape[2:]), "pads": pads, "strides": [1, 1]}
        inputs = [value, f"{name}_weight", f"{name}_bias"]
        nodes.append((name, "Conv", inputs, attributes))
        if layer.relu:
            nodes.append((f"{name}_relu", "Relu", [name], {}))
        if i + 1 in pools:
            nodes.append((f"pool{pools[i + 1]}", "MaxPool", [nodes[-1][0]], _POOL))
        value = nodes[-1][0]
    out = b""
    for n, (name, op, inputs, attributes) in enumerate(nodes):
        output = "logits" if n + 1 == len(nodes) else name
        out += _bytes(1, _node(name, op, inputs, output, attributes))
    return out, initializers


def _node(
    name: str, op: str, inputs: list[str], output: str, attributes: Mapping[str, list[int]]
) -> bytes:
    fields = b"".join(_bytes(1, i.encode()) for i in inputs) + _bytes(2, output.encode())
    fields += _bytes(3, name.encode()) + _bytes(4, op.encode())
    for key, ints in attributes.items():
        body = _bytes(1, key.encode()) + b"".join(_int(8, v) for v in ints) + _int(20, _INTS)
        fields += _bytes(5, body)
    return fields


def _initializer(name: str, shape: tuple[int, ...]) -> bytes:
    """GraphProto.initializer's key and length, then the TensorProto up to its raw bytes."""
    nbytes = prod(shape) * F32.itemsize
    body = b"".join(_int(1, d) for d in shape) + _int(2, _FLOAT) + _bytes(8, name.encode())
    body += _key(9, LEN) + _varint(nbytes)
    return _key(5, LEN) + _varint(len(body) + nbytes) + body


def _value_info(name: str, dims: list[str | int]) -> bytes:
    shape = b"".join(
        _bytes(1, _bytes(2, d.encode()) if isinstance(d, str) else _int(1, d)) for d in dims
    )
    return _bytes(1, name.encode()) + _bytes(2, _bytes(1, _int(1, _FLOAT) + _bytes(2, shape)))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _int(number: int, value: int) -> bytes:
    return _key(number, VARINT) + _varint(value)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, LEN) + _varint(len(data)) + data


@contextlib.contextmanager
def open(path: str) -> Iterator[FCN]:  # noqa: A001 (the reader contract's name)
    """The network in an ONNX file `write` made, its tensors lazy views of the file.

    Raises:
        FormatError: not a protobuf we wrote (truncated, bad varint, a length past its end),
            ops or attributes we never write, initializers that disagree with the graph,
            missing metadata.
        ArchitectureError: the layers do not form a VGG FCN.
    """
    with builtins.open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FormatError(f"{path}: empty file, expected an ONNX model written by vggfcn")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            fcn = _read(Wire(path, data))
    yield fcn


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, list[int]]


def _read(wire: Wire) -> FCN:
    path = wire.path
    model = wire.message([(0, len(wire.data))], "ModelProto")
    ir, producer = model.ints.get(1, [0])[-1], wire.string(model, 2)
    opsets = [wire.message([s], "opset_import") for s in model.spans.get(8, [])]
    imports = [(wire.string(o, 1), o.ints.get(2, [0])[-1]) for o in opsets]
    if (ir, producer, imports) != (IR_VERSION, PRODUCER, [("", OPSET)]):
        raise wire.error(
            f"ONNX ir_version {ir} by {producer!r} importing {imports}; expected ir_version "
            f"{IR_VERSION} by 'vggfcn' importing [('', {OPSET})]"
        )
    meta: dict[str, str] = {}
    for span in model.spans.get(14, []):
        entry = wire.message([span], "metadata_props")
        meta[wire.string(entry, 1)] = wire.string(entry, 2)
    missing = {k: meta.get(k) for k in ("format", "format_version") if meta.get(k) != STORAGE[k]}
    if missing:
        raise wire.error(
            f"metadata_props {missing}; expected format={fcn_file.FORMAT} format_version="
            f"{fcn_file.FORMAT_VERSION} (not written by vggfcn, or cut short)"
        )
    graph = wire.one(model, 7, "GraphProto")
    if graph.has(15):
        raise wire.error("graph has sparse initializers; vggfcn writes dense ones only")
    tensors = dict(_tensor(wire, span) for span in graph.spans.get(5, []))
    if len(tensors) != len(graph.spans.get(5, [])):
        raise wire.error("graph has initializers of the same name")
    for number, name in ((11, "input"), (12, "logits")):
        _check_value(wire, graph, number, name)
    nodes = [_node_of(wire, span) for span in graph.spans.get(1, [])]
    plan, convs = _walk(wire, nodes, tensors)
    names = conv_names(plan)
    layers = [
        ConvLayer(
            names[i] if i < len(names) else head_name(i - len(names)),
            tensors[node.inputs[1]].permute(tensors[node.inputs[1]].shape, OIHW_TO_HWIO),
            tensors[node.inputs[2]],
            relu,
            node.name,
        )
        for i, (node, relu) in enumerate(convs)
    ]
    info = fcn_file.info_from_metadata(path, meta, STORED_AS)
    fcn = FCN(plan, tuple(layers[: len(names)]), tuple(layers[len(names) :]), info)
    fcn_file.check_shapes(fcn)
    graph_says = {
        "arch": fcn.name,
        "classes": str(fcn.classes),
        "head_activations": ",".join(fcn.head_activations),
    }
    for key, value in graph_says.items():
        if meta.get(key, value) != value:
            raise wire.error(f"metadata_props say {key}={meta[key]}, the graph has {value}")
    return fcn


def _tensor(wire: Wire, span: tuple[int, int]) -> tuple[str, Tensor]:
    """An initializer as a lazy float32 tensor over its `raw_data` bytes in the file."""
    tensor = wire.message([span], "initializer")
    name = wire.string(tensor, 8)
    shape = tuple(wire.ints(tensor, 1))
    other = [what for number, what in _OTHER_DATA.items() if tensor.has(number)]
    data = tensor.spans.get(9, [])
    if other or tensor.ints.get(2) != [_FLOAT] or len(data) != 1:
        raise wire.error(
            f"initializer {name!r} has data_type {tensor.ints.get(2)} in "
            f"{[*other, *['raw_data'] * len(data)]}; expected [{_FLOAT}] (float32) in ['raw_data']"
        )
    (start, end), nbytes = data[0], prod(shape) * F32.itemsize
    if end - start != nbytes:
        raise wire.error(
            f"initializer {name!r} of shape {shape} needs {nbytes} bytes, raw_data has "
            f"{end - start}"
        )
    return name, Tensor.wrap(FileRegion(wire.path, start, shape, F32), f"{wire.path}:{name}")


def _check_value(wire: Wire, graph: Message, number: int, name: str) -> None:
    """The graph's one input (or output): `name`, a rank-4 float tensor."""
    values = [wire.message([span], "ValueInfoProto") for span in graph.spans.get(number, [])]
    found = [wire.string(v, 1) for v in values]
    if found == [name]:
        tensor = wire.one(wire.one(values[0], 2, "TypeProto"), 1, "TypeProto.Tensor")
        dims = wire.one(tensor, 2, "TensorShapeProto").spans.get(1, []) if tensor.has(2) else []
        if tensor.ints.get(1) == [_FLOAT] and len(dims) == 4:
            return
    kind = "input" if number == 11 else "output"
    raise wire.error(f"graph {kind}s {found}; expected one float (N, C, H, W) {kind} {name!r}")


def _node_of(wire: Wire, span: tuple[int, int]) -> _Node:
    node = wire.message([span], "NodeProto")
    name = wire.string(node, 3)
    if wire.string(node, 7):
        raise wire.error(f"node {name!r} is in domain {wire.string(node, 7)!r}, expected ''")
    attributes = {}
    for attribute_span in node.spans.get(5, []):
        attribute = wire.message([attribute_span], "AttributeProto")
        key = wire.string(attribute, 1)
        if attribute.ints.get(20) != [_INTS]:
            raise wire.error(f"node {name!r} attribute {key!r} is not a list of ints")
        attributes[key] = wire.ints(attribute, 8)
    op, inputs, outputs = wire.string(node, 4), wire.strings(node, 1), wire.strings(node, 2)
    return _Node(name, op, inputs, outputs, attributes)


def _walk(
    wire: Wire, nodes: list[_Node], tensors: dict[str, Tensor]
) -> tuple[tuple[int, ...], list[tuple[_Node, bool]]]:
    """The plan and each Conv with whether a Relu follows, from a chain of nodes `write` makes.

    Raises:
        FormatError: an op other than Conv, Relu and MaxPool, a node off the chain, attributes
            or initializers other than `write` gives them.
        ArchitectureError: pools that do not make a VGG plan, or no head.
    """
    convs: list[tuple[_Node, bool]] = []
    blocks: list[int] = []
    value, previous, used = "input", "", set()
    for node in nodes:
        if node.inputs[:1] != [value] or len(node.outputs) != 1:
            raise wire.error(
                f"node {node.name!r} reads {node.inputs[:1]} and makes {node.outputs}; "
                f"expected a chain continuing from {value!r} with one output"
            )
        value = node.outputs[0]
        if node.op == "Conv":
            want = _conv_attributes(wire, node, tensors, trunk=len(blocks) < _BLOCKS)
            if node.attributes != want:
                raise wire.error(f"Conv {node.name!r} has {node.attributes}; expected {want}")
            used |= set(node.inputs[1:])
            convs.append((node, False))
        elif (
            node.op == "Relu"
            and previous == "Conv"
            and (len(node.inputs), node.attributes) == (1, {})
        ):
            convs[-1] = (convs[-1][0], True)
        elif node.op == "MaxPool" and previous in ("Conv", "Relu") and len(node.inputs) == 1:
            if node.attributes != _POOL:
                raise wire.error(f"MaxPool {node.name!r} has {node.attributes}; expected {_POOL}")
            blocks.append(len(convs) - sum(blocks))
        else:
            raise wire.error(
                f"node {node.name!r}: {node.op} with {len(node.inputs)} input(s) after "
                f"{previous or 'the input'}; a vggfcn ONNX graph has only Conv, its Relu and "
                "MaxPool after a block"
            )
        previous = node.op
    if value != "logits" or set(tensors) != used:
        raise wire.error(
            f"the chain of nodes ends in {value!r}, initializers {sorted(set(tensors) - used)} "
            "are read by none; expected it to end in 'logits' and read them all"
        )
    plan = tuple(blocks)
    if plan not in PLANS.values() or len(convs) == sum(plan):
        raise ArchitectureError(
            f"{wire.path}: blocks of {list(plan)} convs and {len(convs) - sum(plan)} head "
            "convs; expected a VGG plan and a head"
        )
    return plan, convs


def _conv_attributes(
    wire: Wire, node: _Node, tensors: dict[str, Tensor], *, trunk: bool
) -> dict[str, list[int]]:
    """The attributes `write` gives this Conv, after checking its weight and bias."""
    names = node.inputs[1:] if len(node.inputs) == 3 else ["", ""]
    weight, bias = (tensors.get(n) for n in names)
    if weight is None or bias is None or len(weight.shape) != 4:
        raise wire.error(
            f"Conv {node.name!r} reads {node.inputs}; expected the previous output, an OIHW "
            "weight and a bias, both initializers"
        )
    if bias.shape != weight.shape[:1]:
        raise wire.error(
            f"Conv {node.name!r} has weight {weight.shape} and bias {bias.shape}; expected "
            f"bias ({weight.shape[0]},)"
        )
    pads = [1] * 4 if trunk else [0] * 4
    return {"kernel_shape": list(weight.shape[2:]), "pads": pads, "strides": [1, 1]}
