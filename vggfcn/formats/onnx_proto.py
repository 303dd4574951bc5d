"""ONNX's protobuf messages, both ways, without the `onnx` package: the models we write, and the
models any exporter writes, read into plain objects with their weights left in the file.

Why not the `onnx` package: it builds the whole ModelProto in memory (553 MB of VGG16 weights,
then a serialised copy of them) and it is a test client here, never a run-time dependency. The
wire format is `protobuf`'s; the field numbers, from onnx/onnx.proto (proto2), are these:

- ModelProto: ir_version 1, producer_name 2, producer_version 3, graph 7, opset_import 8,
  metadata_props 14;
- OperatorSetIdProto: domain 1, version 2; StringStringEntryProto: key 1, value 2;
- GraphProto: node 1, name 2, initializer 5, input 11, output 12, value_info 13,
  sparse_initializer 15;
- NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7;
- AttributeProto: name 1, f 2 (a fixed 32-bit float), i 3, s 4, t 5 (a TensorProto), g 6,
  floats 7, ints 8, strings 9, type 20 (`AttributeType`);
- TensorProto: dims 1, data_type 2, segment 3, float_data 4, int32_data 5, string_data 6,
  int64_data 7, name 8, raw_data 9, double_data 10, uint64_data 11, external_data 13,
  data_location 14 (1 = EXTERNAL);
- ValueInfoProto: name 1, type 2; TypeProto: tensor_type 1; TypeProto.Tensor: elem_type 1,
  shape 2; TensorShapeProto: dim 1; Dimension: dim_value 1, dim_param 2.

Reading parses a message's fields once and decodes only what is asked: a weight's `raw_data` is
a span of the file, mapped when read (`FileRegion`), never copied; small typed arrays (a
Reshape's int64 shape, a Constant's value) are decoded, bounded. A tensor whose data lives in
another file (`data_location = EXTERNAL`) is refused by name: we never open a path a file names
(the onnx package's own loader once followed `../` out of its folder: CVE-2022-25882).
Integers are int64 on the wire, negative ones as 10-byte two's complements (`signed`).
"""

from __future__ import annotations

import builtins
import contextlib
import mmap
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from ..errors import FormatError
from ..tensor import Tensor
from .protobuf import LEN, Message, Wire, bytes_field, int_field, key, varint
from .region import FileRegion

#: TensorProto.DataType codes -> NumPy dtypes we read (FLOAT16 and DOUBLE weights, integer and
#: bool shapes and indices; STRING and complex types are refused where met).
DATA_TYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
}
FLOAT, INT64, DOUBLE = 1, 7, 11
#: AttributeProto.AttributeType codes.
ATTR_FLOAT, ATTR_INT, ATTR_STRING, ATTR_TENSOR, ATTR_FLOATS, ATTR_INTS = 1, 2, 3, 4, 6, 7
#: Elements a typed (non-raw) array may hold: shapes and small constants, never weights.
SMALL_ELEMENTS = 1 << 16
#: The typed-data fields of a TensorProto, by element type they hold.
_TYPED = {4: "float_data", 5: "int32_data", 7: "int64_data", 10: "double_data", 11: "uint64_data"}
_ELSEWHERE = {3: "segment", 6: "string_data", 13: "external_data"}


def signed(value: int) -> int:
    """An int64 read as an unsigned varint, back to its sign."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class Initializer:
    """A TensorProto: its name, dims and element type, and where its data is.

    Attributes:
        raw: (start, end) of `raw_data` in the file, or None when the data is typed.
        values: the typed data, decoded (small arrays only), or None.
        field: the TensorProto field holding the data ("raw_data", "float_data"...).
    """

    name: str
    dims: tuple[int, ...]
    data_type: int
    raw: tuple[int, int] | None
    values: np.ndarray | None
    field: str = "raw_data"


@dataclass(frozen=True)
class Attribute:
    """A node attribute: its name, type code and value (int, float, bytes, list, Initializer)."""

    name: str
    type: int
    value: Any


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    domain: str = ""

    def ints(self, name: str, default: Sequence[int] = ()) -> list[int]:
        """A list-of-ints attribute (`kernel_shape`, `pads`...), or `default`."""
        attribute = self.attributes.get(name)
        return [int(v) for v in attribute.value] if attribute is not None else list(default)

    def int(self, name: str, default: int) -> int:
        attribute = self.attributes.get(name)
        return int(attribute.value) if attribute is not None else default

    def float(self, name: str, default: float) -> float:
        attribute = self.attributes.get(name)
        return float(attribute.value) if attribute is not None else default


@dataclass(frozen=True)
class Value:
    """A graph input or output: its name, element type and dims (an int, a symbolic name, or
    None where the file leaves a dimension out)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None  # None: no shape recorded


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    initializers: Mapping[str, Initializer]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]


@dataclass(frozen=True)
class Model:
    path: str
    ir_version: int
    producer: str
    producer_version: str
    opsets: Mapping[str, int]  # domain ("" for ai.onnx) -> version
    metadata: Mapping[str, str]
    graph: Graph


@contextlib.contextmanager
def read(path: str) -> Iterator[Model]:
    """The model in an ONNX file, parsed (weights stay in the file: see `tensor`).

    Raises:
        FormatError: not a well-formed ONNX protobuf (a bad varint, a length past its end, a
            field of the wrong type), or a feature we do not read (sparse initializers,
            external or segmented data), each named.
    """
    with builtins.open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise FormatError(f"{path}: empty file, expected an ONNX model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            model = _model(Wire(path, data))
    yield model


def tensor(model: Model, initializer: Initializer) -> Tensor:
    """A float initializer as a lazy tensor: its raw bytes mapped from the file when read, or
    its typed values.

    Raises:
        FormatError: not a float type we read, or data that disagrees with its dims.
    """
    where = f"{model.path}:{initializer.name}"
    dtype = DATA_TYPES.get(initializer.data_type)
    if dtype is None or dtype.kind != "f":
        raise FormatError(
            f"{where}: data_type {initializer.data_type} is not a float type "
            "(expected FLOAT, FLOAT16 or DOUBLE)"
        )
    if initializer.values is not None:
        return Tensor.wrap(initializer.values.astype(dtype).reshape(initializer.dims), where)
    start, end = initializer.raw or (0, 0)
    nbytes = prod(initializer.dims) * dtype.itemsize
    if end - start != nbytes:
        raise FormatError(
            f"{where}: dims {list(initializer.dims)} need {nbytes} bytes of raw_data, it has "
            f"{end - start}"
        )
    return Tensor.wrap(FileRegion(model.path, start, initializer.dims, dtype), where)


def array(model: Model, initializer: Initializer, limit: int = SMALL_ELEMENTS) -> np.ndarray:
    """A small initializer's values (a shape, an index), read whole.

    Raises:
        FormatError: a type we do not read, data that disagrees with its dims, or more than
            `limit` elements.
    """
    where = f"{model.path}:{initializer.name}"
    dtype = DATA_TYPES.get(initializer.data_type)
    count = prod(initializer.dims)
    if dtype is None or count > limit:
        raise FormatError(
            f"{where}: data_type {initializer.data_type} with {count} elements; expected a "
            f"small numeric constant (at most {limit})"
        )
    if initializer.values is not None:
        values = initializer.values
    else:
        start, end = initializer.raw or (0, 0)
        if end - start != count * dtype.itemsize:
            raise FormatError(
                f"{where}: dims {list(initializer.dims)} need {count * dtype.itemsize} bytes "
                f"of raw_data, it has {end - start}"
            )
        with builtins.open(model.path, "rb") as f:
            f.seek(start)
            values = np.frombuffer(f.read(end - start), dtype)
    if values.size != count:
        raise FormatError(f"{where}: {values.size} values for dims {list(initializer.dims)}")
    return values.astype(dtype, copy=False).reshape(initializer.dims)


def _model(wire: Wire) -> Model:
    model = wire.message([(0, len(wire.data))], "ModelProto")
    opsets: dict[str, int] = {}
    for span in model.spans.get(8, []):
        entry = wire.message([span], "opset_import")
        opsets[wire.string(entry, 1)] = entry.last(2)
    meta: dict[str, str] = {}
    for span in model.spans.get(14, []):
        entry = wire.message([span], "metadata_props")
        meta[wire.string(entry, 1)] = wire.string(entry, 2)
    return Model(
        path=wire.path,
        ir_version=model.last(1),
        producer=wire.string(model, 2),
        producer_version=wire.string(model, 3),
        opsets=opsets,
        metadata=meta,
        graph=_graph(wire, wire.one(model, 7, "GraphProto")),
    )


def _graph(wire: Wire, graph: Message) -> Graph:
    if graph.has(15):
        raise wire.error("graph has sparse initializers; vggfcn reads dense ones only")
    initializers: dict[str, Initializer] = {}
    for span in graph.spans.get(5, []):
        found = _initializer(wire, wire.message([span], "initializer"))
        if found.name in initializers:
            raise wire.error(f"graph has two initializers named {found.name!r}")
        initializers[found.name] = found
    return Graph(
        name=wire.string(graph, 2),
        nodes=tuple(_node(wire, wire.message([s], "NodeProto")) for s in graph.spans.get(1, [])),
        initializers=initializers,
        inputs=tuple(_value(wire, s) for s in graph.spans.get(11, [])),
        outputs=tuple(_value(wire, s) for s in graph.spans.get(12, [])),
    )


def _initializer(wire: Wire, message: Message) -> Initializer:
    name = wire.string(message, 8)
    if message.last(14) == 1 or message.has(13):
        raise wire.error(
            f"tensor {name!r} keeps its data in another file (external data); refused: vggfcn "
            "never opens a path a model names. Save the model whole: torch.onnx.export(..., "
            "external_data=False), or onnx.save(onnx.load(path), new_path)"
        )
    elsewhere = [what for number, what in _ELSEWHERE.items() if message.has(number)]
    if elsewhere:
        raise wire.error(f"tensor {name!r} has {', '.join(elsewhere)}; vggfcn reads plain tensors")
    dims = tuple(signed(d) for d in wire.ints(message, 1))
    if any(d < 0 or d > 1 << 32 for d in dims) or prod(dims) > 1 << 40:
        raise wire.error(f"tensor {name!r} has dims {list(dims)}")
    data_type = message.last(2)
    raw = message.spans.get(9, [])
    typed = [number for number in _TYPED if message.has(number)]
    if len(raw) + len(typed) > 1 or len(raw) > 1:
        raise wire.error(f"tensor {name!r} holds its data in more than one field")
    if raw:
        return Initializer(name, dims, data_type, raw[0], None)
    packed = message.spans.get(typed[0], []) if typed else []
    if typed and (typed[0], data_type) in ((4, FLOAT), (10, DOUBLE)) and len(packed) == 1:
        # packed float_data (MXNet's exports) is little-endian floats in one run, like
        # raw_data: read in place, however large
        return Initializer(name, dims, data_type, packed[0], None, _TYPED[typed[0]])
    if not typed:
        return Initializer(name, dims, data_type, None, np.zeros(0, np.int64), "no data field")
    values = _typed(wire, message, typed[0], name)
    return Initializer(name, dims, data_type, None, values, _TYPED[typed[0]])


def _typed(wire: Wire, message: Message, number: int, name: str) -> np.ndarray:
    """A TensorProto's typed data field: varints (int32/int64/uint64) or packed floats."""
    if number in (4, 10):  # float_data (fixed32), double_data (fixed64), packed or not
        dtype = np.dtype("<f4") if number == 4 else np.dtype("<f8")
        chunks = [bytes(wire.data[a:b]) for a, b in message.spans.get(number, [])]
        data = b"".join(chunks)
        if len(data) > SMALL_ELEMENTS * dtype.itemsize or len(data) % dtype.itemsize:
            raise wire.error(f"tensor {name!r}: typed float data too large or not whole values")
        return np.frombuffer(data, dtype)
    values = wire.ints(message, number)
    if len(values) > SMALL_ELEMENTS:
        raise wire.error(f"tensor {name!r}: more than {SMALL_ELEMENTS} typed values")
    return np.array([signed(v) for v in values] if number != 11 else values, np.int64)


def _node(wire: Wire, message: Message) -> Node:
    name = wire.string(message, 3)
    attributes: dict[str, Attribute] = {}
    for span in message.spans.get(5, []):
        attribute = _attribute(wire, wire.message([span], "AttributeProto"), name)
        attributes[attribute.name] = attribute
    return Node(
        name=name,
        op=wire.string(message, 4),
        inputs=tuple(wire.strings(message, 1)),
        outputs=tuple(wire.strings(message, 2)),
        attributes=attributes,
        domain=wire.string(message, 7),
    )


def _attribute(wire: Wire, message: Message, node: str) -> Attribute:
    name, kind = wire.string(message, 1), message.last(20)
    value: Any
    if kind == ATTR_FLOAT:
        value = _floats(wire, message, 2)[-1:] or [0.0]
        value = value[0]
    elif kind == ATTR_INT:
        value = signed(message.last(3))
    elif kind == ATTR_STRING:
        spans = message.spans.get(4, [])
        value = bytes(wire.data[spans[-1][0] : spans[-1][1]]) if spans else b""
    elif kind == ATTR_TENSOR:
        value = _initializer(wire, wire.one(message, 5, "TensorProto"))
    elif kind == ATTR_FLOATS:
        value = _floats(wire, message, 7)
    elif kind == ATTR_INTS:
        value = [signed(v) for v in wire.ints(message, 8)]
    else:
        raise wire.error(
            f"node {node!r} attribute {name!r} has type {kind}, which vggfcn reads not"
        )
    return Attribute(name, kind, value)


def _floats(wire: Wire, message: Message, number: int) -> list[float]:
    """A float field's values: 4-byte fixed values, packed or one per field."""
    data = b"".join(bytes(wire.data[a:b]) for a, b in message.spans.get(number, []))
    if len(data) % 4:
        raise wire.error(f"{message.what}: float field {number} is not whole 4-byte values")
    return [float(v) for v in struct.unpack(f"<{len(data) // 4}f", data)]


def _value(wire: Wire, span: tuple[int, int]) -> Value:
    message = wire.message([span], "ValueInfoProto")
    name = wire.string(message, 1)
    if not message.has(2):
        return Value(name, 0, None)
    kind = wire.one(message, 2, "TypeProto")
    if not kind.has(1):
        return Value(name, 0, None)
    tensor_type = wire.one(kind, 1, "TypeProto.Tensor")
    if not tensor_type.has(2):
        return Value(name, tensor_type.last(1), None)
    dims: list[int | str | None] = []
    for dim_span in wire.one(tensor_type, 2, "TensorShapeProto").spans.get(1, []):
        dim = wire.message([dim_span], "Dimension")
        if dim.has(1):
            dims.append(signed(dim.last(1)))
        elif dim.has(2):
            dims.append(wire.string(dim, 2))
        else:
            dims.append(None)
    return Value(name, tensor_type.last(1), tuple(dims))


# Writing: each function gives a message's bytes (or, for a streamed initializer, its bytes up
# to its data), fields in number order, which is also the order `SerializeToString` uses, so
# our bytes equal a re-serialisation of them by the `onnx` package.


def node_bytes(node: Node) -> bytes:
    """A NodeProto whose attributes are all lists of ints (all that `onnx_fcn` writes)."""
    fields = b"".join(bytes_field(1, i.encode()) for i in node.inputs)
    fields += b"".join(bytes_field(2, o.encode()) for o in node.outputs)
    fields += bytes_field(3, node.name.encode()) + bytes_field(4, node.op.encode())
    for attribute in node.attributes.values():
        body = bytes_field(1, attribute.name.encode())
        body += b"".join(int_field(8, v) for v in attribute.value) + int_field(20, ATTR_INTS)
        fields += bytes_field(5, body)
    return fields


def initializer_head(name: str, dims: tuple[int, ...], itemsize: int = 4) -> bytes:
    """GraphProto.initializer's key and length, then a float TensorProto up to its raw bytes
    (the caller streams `prod(dims) * itemsize` bytes after it)."""
    nbytes = prod(dims) * itemsize
    body = b"".join(int_field(1, d) for d in dims) + int_field(2, FLOAT)
    body += bytes_field(8, name.encode()) + key(9, LEN) + varint(nbytes)
    return key(5, LEN) + varint(len(body) + nbytes) + body


def value_bytes(name: str, dims: Sequence[int | str]) -> bytes:
    """A float ValueInfoProto with these dims (a string is a symbolic dimension)."""
    shape = b"".join(
        bytes_field(1, bytes_field(2, d.encode()) if isinstance(d, str) else int_field(1, d))
        for d in dims
    )
    tensor_type = int_field(1, FLOAT) + bytes_field(2, shape)
    return bytes_field(1, name.encode()) + bytes_field(2, bytes_field(1, tensor_type))


def ints(name: str, values: Sequence[int]) -> Attribute:
    """A list-of-ints attribute, as `node_bytes` writes them."""
    return Attribute(name, ATTR_INTS, list(values))
