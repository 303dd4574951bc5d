"""Our ONNX output, both directions: one self-contained `.onnx` file, streamed out and read back.

Every length is known from the shapes before a weight is read, so the file is written front to
back (`onnx_proto` has the messages), each initializer's `raw_data` streamed piece by piece into
its place (`write_tensor`), nothing patched afterwards, and `metadata_props` last, once the
source's digest is known.

The graph (opset 17, IR version 8, NCHW): `input` (N, C, H, W) -> per trunk conv a 3x3 `Conv`
and its `Relu`, a `MaxPool` after each block -> head `Conv`s ("valid"), each with a `Relu` where
the layer has one -> `logits` (N, classes, h, w). Kernels are OIHW, as ONNX's Conv wants. At
output stride 16 and 8 (`atrous`) the ops carry their attributes: a Conv's and a MaxPool's
`dilations`, a MaxPool's `strides`; `dilations` is written only where it is not 1, so a
stride-32 graph is the same bytes as before the attribute existed. Which op each layer becomes,
with which attributes, is `nodes` and nowhere else: the writer emits it and the reader checks a
file against it. Names follow the source's layers (`layer_names`). The network's structure is
read back from the graph itself, the ops' attributes included (what they compute, whatever
stride `metadata_props` records: `verify` holds the two together), the rest from
`metadata_props` (`fcn_metadata`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import BinaryIO

from .. import __version__
from ..arch import conv_names, name_of
from ..errors import ArchitectureError, FormatError
from ..fcn import FCN, ConvLayer, Pool, Storage, check_shapes, head_name
from ..layouts import permutation
from ..precision import F32
from ..tensor import Tensor
from . import fcn_metadata, onnx_proto
from .blocks import write_tensor
from .job import Job
from .names import unique_names
from .onnx_proto import Attribute, Model, Node, ints
from .protobuf import LEN, bytes_field, int_field, key, varint

IR_VERSION = 8  # the IR of ONNX 1.12, which introduced opset 17
OPSET = 17
PRODUCER = "vggfcn"
INPUT, OUTPUT = "input", "logits"
_SUFFIXES = ("relu", "weight", "bias")


@dataclass(frozen=True)
class _Layer:
    """A convolution's nodes and initializers: what `nodes` makes of one FCN layer."""

    conv: Node
    weight: tuple[str, Tensor]
    bias: tuple[str, Tensor]


def layer_names(fcn: FCN) -> list[str]:
    """Each layer's name in the graph: its source name (`features.0`, `fc1`) made a C
    identifier (`features_0`), numbered `_2`, `_3`... where that would repeat a name in use.

    The layer's Conv node and output are called that name, its Relu `{name}_relu`, its
    initializers `{name}_weight` and `{name}_bias`; block b's MaxPool is `pool{b}`, the graph's
    input `input` and its output `logits`.
    """
    bases = []
    for layer in fcn.layers:
        base = re.sub(r"\W", "_", layer.source_name, flags=re.ASCII)
        bases.append(base if base[:1].isalpha() or base[:1] == "_" else f"_{base}")
    taken = {INPUT, OUTPUT, *(_pool_name(b) for b in range(1, len(fcn.plan) + 1))}
    return unique_names(bases, taken, lambda n: {n, *(f"{n}_{s}" for s in _SUFFIXES)})


def _pool_name(block: int) -> str:
    return f"pool{block}"


def nodes(fcn: FCN, names: list[str]) -> tuple[list[Node], list[tuple[str, Tensor]]]:
    """The graph of `fcn`: its nodes in order, chained by their outputs, and its initializers
    (name, OIHW tensor). The one place that says which op each layer becomes, with which
    attributes: trunk convs "same" (pads dilation * (k // 2)), head convs "valid" (pads 0),
    every conv stride 1, its `dilations` where the layer has one; each block ends in a 2x2
    MaxPool with its pool's `strides` and `dilations` (`FCN.block_pools`). The last node's
    output is `logits`.
    """
    graph: list[Node] = []
    initializers: list[tuple[str, Tensor]] = []
    pools = {end: b for b, end in enumerate(accumulate(fcn.plan), 1)}  # last conv -> block
    value = INPUT
    for i, (layer, name) in enumerate(zip(fcn.layers, names, strict=True)):
        kernel = layer.kernel.permute(layer.kernel.shape, permutation("HWIO", "OIHW"))
        initializers += [(f"{name}_weight", kernel), (f"{name}_bias", layer.bias)]
        same = i < len(fcn.trunk)
        pad = [layer.dilation * (k // 2) if same else 0 for k in kernel.shape[2:]]
        attributes = _dilations(layer.dilation) | {
            "kernel_shape": ints("kernel_shape", kernel.shape[2:]),
            "pads": ints("pads", pad * 2),  # begins (rows, columns), then ends
            "strides": ints("strides", [1, 1]),
        }
        graph.append(
            Node(name, "Conv", (value, f"{name}_weight", f"{name}_bias"), (name,), attributes)
        )
        if layer.relu:
            graph.append(Node(f"{name}_relu", "Relu", (graph[-1].name,), (f"{name}_relu",)))
        if i + 1 in pools:
            block = pools[i + 1]
            pool, kind = _pool_name(block), fcn.block_pools[block - 1]
            attributes = _dilations(kind.dilation) | {
                "kernel_shape": ints("kernel_shape", [2, 2]),
                "strides": ints("strides", [kind.stride] * 2),
            }
            graph.append(Node(pool, "MaxPool", (graph[-1].name,), (pool,), attributes))
        value = graph[-1].name
    last = graph[-1]
    graph[-1] = Node(last.name, last.op, last.inputs, (OUTPUT,), last.attributes)
    return graph, initializers


def _dilations(dilation: int) -> dict[str, Attribute]:
    """A node's `dilations`, left out where it is ONNX's default, 1 (as before it was written)."""
    return {"dilations": ints("dilations", [dilation] * 2)} if dilation > 1 else {}


def write(f: BinaryIO, job: Job) -> None:
    """`job.Writer.write`: the network as one ONNX model, float32 OIHW, one weight block at
    a time; `metadata_props` (sorted) last, once `metadata.final()` is known."""
    fcn = job.fcn
    graph, initializers = nodes(fcn, layer_names(fcn))
    heads = [(onnx_proto.initializer_head(n, t.shape), t) for n, t in initializers]
    body = b"".join(bytes_field(1, onnx_proto.node_bytes(n)) for n in graph)
    body += bytes_field(2, f"{fcn.name}_fcn".encode())
    channels = fcn.trunk[0].kernel.shape[2]
    ends = bytes_field(11, onnx_proto.value_bytes(INPUT, ["N", channels, "H", "W"]))
    ends += bytes_field(12, onnx_proto.value_bytes(OUTPUT, ["N", fcn.classes, "h", "w"]))
    weights = sum(len(head) + t.size * F32.itemsize for head, t in heads)
    f.write(int_field(1, IR_VERSION) + bytes_field(2, PRODUCER.encode()))
    f.write(bytes_field(3, __version__.encode()))
    f.write(key(7, LEN) + varint(len(body) + weights + len(ends)) + body)
    for head, tensor in heads:
        f.write(head)
        write_tensor(f, tensor, job.allow_nonfinite, job.progress)
    f.write(ends + bytes_field(8, bytes_field(1, b"") + int_field(2, OPSET)))
    for name, value in sorted(job.metadata.final().items()):
        f.write(bytes_field(14, bytes_field(1, name.encode()) + bytes_field(2, value.encode())))


@contextlib.contextmanager
def open(path: str) -> Iterator[FCN]:  # noqa: A001 (the reader contract's name)
    """The network in an ONNX file `write` made, its tensors lazy views of the file.

    Raises:
        FormatError: not a protobuf we wrote (truncated, bad varint, a length past its end),
            ops or attributes we never write, initializers that disagree with the graph,
            missing metadata.
        ArchitectureError: the layers do not form a VGG FCN.
    """
    with onnx_proto.read(path) as model:
        yield read(model)


def read(model: Model) -> FCN:
    """The FCN in a parsed model that `write` made (see `open`)."""
    path = model.path
    opsets = dict(model.opsets)
    if (model.ir_version, model.producer, opsets) != (IR_VERSION, PRODUCER, {"": OPSET}):
        raise FormatError(
            f"{path}: ONNX ir_version {model.ir_version} by {model.producer!r} importing "
            f"{opsets}; expected ir_version {IR_VERSION} by 'vggfcn' importing {{'': {OPSET}}}"
        )
    fcn_metadata.check_version(path, model.metadata)
    graph = model.graph
    for values, name in ((graph.inputs, INPUT), (graph.outputs, OUTPUT)):
        if [v.name for v in values] != [name] or values[0].elem_type != onnx_proto.FLOAT:
            raise FormatError(
                f"{path}: graph {'inputs' if name == INPUT else 'outputs'} "
                f"{[v.name for v in values]}; expected one float (N, C, H, W) tensor {name!r}"
            )
        if values[0].dims is None or len(values[0].dims) != 4:
            raise FormatError(f"{path}: graph value {name!r} is not rank 4 (N, C, H, W)")
    plan, convs = _chain(path, graph.nodes)
    for name, initializer in graph.initializers.items():
        if (initializer.data_type, initializer.field) != (onnx_proto.FLOAT, "raw_data"):
            raise FormatError(
                f"{path}: initializer {name!r} has data_type {initializer.data_type} in "
                f"{initializer.field}; vggfcn writes float32 (1) in raw_data"
            )
    tensors = {name: onnx_proto.tensor(model, i) for name, i in graph.initializers.items()}
    used = {name for node, _ in convs for name in node.inputs[1:]}
    if set(tensors) != used:
        raise FormatError(f"{path}: initializers {sorted(set(tensors) - used)} are read by no node")
    names = conv_names(plan)
    layers = []
    for i, (node, relu) in enumerate(convs):
        weight, bias = _weights(path, node, tensors)
        own = names[i] if i < len(names) else head_name(i - len(names))
        hwio = weight.permute(weight.shape, permutation("OIHW", "HWIO"))
        layers.append(ConvLayer(own, hwio, bias, relu, node.name, _first(node, "dilations")))
    pools = tuple(
        Pool(_first(node, "strides"), _first(node, "dilations"))
        for node in graph.nodes
        if node.op == "MaxPool"
    )
    storage = Storage("onnx", "OIHW", "source", "float32")
    info = fcn_metadata.info(path, model.metadata, storage)
    fcn = FCN(plan, tuple(layers[: len(names)]), tuple(layers[len(names) :]), info, pools)
    check_shapes(fcn)
    expected, _ = nodes(fcn, [node.name for node, _ in convs])
    for found, want in zip(graph.nodes, expected, strict=True):
        if (found.op, dict(found.attributes)) != (want.op, dict(want.attributes)):
            raise FormatError(
                f"{path}: node {found.name!r} is {found.op} with {_shown(found)}; vggfcn writes "
                f"{want.op} with {_shown(want)} there"
            )
    recorded = {
        "arch": fcn.name,
        "classes": str(fcn.classes),
        "head_activations": ",".join(fcn.head_activations),
    }
    for name, value in recorded.items():
        if model.metadata.get(name, value) != value:
            raise FormatError(
                f"{path}: metadata_props say {name}={model.metadata[name]}, the graph has {value}"
            )
    return fcn


def _chain(path: str, graph: tuple[Node, ...]) -> tuple[tuple[int, ...], list[tuple[Node, bool]]]:
    """The plan, and each Conv with whether a Relu follows, from a chain of nodes `nodes` makes.

    Raises:
        FormatError: an op other than Conv, Relu and MaxPool, or a node off the chain.
        ArchitectureError: pools that do not make a VGG plan, or no head.
    """
    convs: list[tuple[Node, bool]] = []
    blocks: list[int] = []
    value, previous = INPUT, ""
    for node in graph:
        if node.domain or node.inputs[:1] != (value,) or len(node.outputs) != 1:
            raise FormatError(
                f"{path}: node {node.name!r} reads {list(node.inputs[:1])} and makes "
                f"{list(node.outputs)}; expected a chain continuing from {value!r} with one output"
            )
        value = node.outputs[0]
        if node.op == "Conv" and len(node.inputs) == 3:
            convs.append((node, False))
        elif node.op == "Relu" and previous == "Conv" and len(node.inputs) == 1:
            convs[-1] = (convs[-1][0], True)
        elif node.op == "MaxPool" and previous in ("Conv", "Relu") and len(node.inputs) == 1:
            blocks.append(len(convs) - sum(blocks))
        else:
            raise FormatError(
                f"{path}: node {node.name!r}: {node.op} with {len(node.inputs)} input(s) after "
                f"{previous or 'the input'}; a vggfcn ONNX graph has only Conv, its Relu and "
                "MaxPool after a block"
            )
        previous = node.op
    if value != OUTPUT:
        raise FormatError(f"{path}: the chain of nodes ends in {value!r}, expected {OUTPUT!r}")
    plan = tuple(blocks)
    if name_of(plan) is None or len(convs) == sum(plan):
        raise ArchitectureError(
            f"{path}: blocks of {list(plan)} convs and {len(convs) - sum(plan)} head "
            "convs; expected a VGG plan and a head"
        )
    return plan, convs


def _weights(path: str, node: Node, tensors: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """A Conv's OIHW weight and its bias, both initializers of matching shapes."""
    weight, bias = (tensors.get(n) for n in node.inputs[1:])
    if weight is None or bias is None or len(weight.shape) != 4:
        raise FormatError(
            f"{path}: Conv {node.name!r} reads {list(node.inputs)}; expected the previous "
            "output, an OIHW weight and a bias, both initializers"
        )
    if bias.shape != weight.shape[:1]:
        raise FormatError(
            f"{path}: Conv {node.name!r} has weight {weight.shape} and bias {bias.shape}; "
            f"expected bias ({weight.shape[0]},)"
        )
    return weight, bias


def _first(node: Node, name: str) -> int:
    """The value of a node's `strides` or `dilations` as `nodes` writes it, [n, n]: n, or 1 when
    the attribute is absent or n is not a positive int. The node is then rebuilt from it and
    compared with the file's (`read`): anything `nodes` would not write is refused there."""
    attribute = node.attributes.get(name)
    if attribute is None or attribute.type != onnx_proto.ATTR_INTS or not attribute.value:
        return 1
    return max(int(attribute.value[0]), 1)


def _shown(node: Node) -> str:
    return str({name: a.value for name, a in node.attributes.items()})
