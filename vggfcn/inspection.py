"""`vggfcn inspect`: what a file holds, as its file defines it.

For a classifier, the source graph op by op — layer, class, shapes in the file's own layout —
with what the file says (or does not say) about its input and output. For a converted network,
its convolutions as the file stores them (layout, names, dtype). A `Report` either way; the
command line prints it, or its `as_dict()` as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .arch import name_of
from .fcn import FCN, PLAIN
from .graph import SOFTMAX_APPLIED, Affine, BatchNorm, Conv, Dense, Flatten, Op, SourceGraph
from .layouts import out_axis, shape_in, sizes_of
from .shapes import block_plan
from .tensor import Tensor


@dataclass(frozen=True)
class Report:
    """What a file holds.

    Attributes:
        file: the file inspected.
        format, generation: its container and writer ("keras-h5", "keras1"); for a converted
            file, the output format ("onnx") and the source's "format/generation".
        layout, names, dtype: how a converted file stores its network ("" for a classifier,
            whose layouts are per layer).
        head: "dense" or "convolutional".
        input_size: (H, W) the classifier was built for, and `input_size_from` how that is
            known ("file", "fan-in", "option", "default").
        input_layout: how the input array is laid out: NHWC, or NCHW (an ONNX file's); a
            converted network takes NHWC arrays from `predict` (its ONNX output: NCHW).
        window: the pool5 window each output cell sees (converted files; None otherwise).
        notes: what the reader assumed because the file does not record it.
        layers: one JSON-ready row per op (or per convolution of a converted network).
    """

    file: str
    format: str
    generation: str
    layout: str
    names: str
    dtype: str
    arch: str
    head: str
    classes: int
    parameters: int
    input_size: tuple[int, int] | None
    input_size_from: str
    input_layout: str
    window: tuple[int, int] | None
    channel_order: str
    preprocessing: str
    flatten_order: str
    output_activation: str
    softmax: str
    batch_norm: str
    notes: tuple[str, ...]
    layers: tuple[dict[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists."""
        return _lists(asdict(self))  # type: ignore[no-any-return]


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def describe(network: SourceGraph | FCN) -> Report:
    """The `inspect` report of a source graph or a converted network."""
    if isinstance(network, FCN):
        return _describe_fcn(network)
    return _describe_graph(network)


def _dtype(tensor: Tensor) -> str:
    return str(getattr(tensor.source, "storage", tensor.source.dtype))


def _describe_graph(graph: SourceGraph) -> Report:
    layers: list[dict[str, Any]] = []
    total = 0
    for op in graph.ops:
        row: dict[str, Any] = {"name": op.name, "class": type(op).__name__}
        if isinstance(op, Conv | Dense):
            count = op.kernel.size + (op.bias.size if op.bias is not None else 0)
            row |= {
                "kernel_shape": list(op.kernel.shape),
                "bias_shape": list(op.bias.shape) if op.bias is not None else None,
                "layout": op.layout,
                "dtype": _dtype(op.kernel),
            }
            if isinstance(op, Conv):
                row["padding"] = op.padding
        elif isinstance(op, BatchNorm):
            count = sum(t.size for t in (op.gamma, op.beta) if t is not None)  # stats: buffers
            row |= {"features": op.mean.shape[0], "eps": op.eps}
        elif isinstance(op, Affine):
            count = sum(t.size for t in op.tensors())
            row |= {"axis": op.axis, "scale": op.scale is not None, "shift": op.shift is not None}
        else:
            count = 0
            row |= {k: v for k, v in vars(op).items() if k != "name"}
        row["parameters"] = count
        total += count
        layers.append(row)
    trunk, _ = graph.split()
    plan = block_plan(trunk)
    flatten = next((op.order for op in graph.ops if isinstance(op, Flatten)), "none")
    if flatten == "array":  # the order the array as laid out reads the volume in: compile's
        resolved = next((op.order for op in _channels_last(graph) if isinstance(op, Flatten)), "")
        flatten = f"{resolved} (the array as laid out)" if resolved else flatten
    return Report(
        file=graph.path,
        format=graph.provenance.format,
        generation=graph.provenance.generation,
        layout="",
        names="",
        dtype="",
        arch=name_of(plan) or "vgg",
        head="dense" if any(isinstance(op, Dense) for op in graph.ops) else "convolutional",
        classes=_classes(graph),
        parameters=total,
        input_size=graph.input.size,
        input_size_from=graph.input.size_from,
        input_layout=graph.input.layout,
        window=None,
        channel_order=graph.input.channel_order,
        preprocessing=graph.input.preprocessing,
        flatten_order=flatten,
        output_activation=graph.output_activation,
        softmax=SOFTMAX_APPLIED[graph.output_activation],
        batch_norm="yes" if any(isinstance(op, BatchNorm) for op in graph.ops) else "none",
        notes=graph.provenance.notes,
        layers=tuple(layers),
    )


def _channels_last(graph: SourceGraph) -> tuple[Op, ...]:
    """Compile's reading of the graph's layouts; the ops as they are if it refuses them (the
    report describes the file either way)."""
    from .convert import channels_last
    from .errors import VggfcnError

    try:
        return channels_last(graph)
    except VggfcnError:
        return graph.ops


def _classes(graph: SourceGraph) -> int:
    last = [op for op in graph.ops if isinstance(op, Conv | Dense)][-1]
    shape = last.kernel.shape
    return int(shape[out_axis(last.layout)])


def _describe_fcn(fcn: FCN) -> Report:
    storage = fcn.info.storage
    layers = []
    for layer in fcn.layers:
        shape = layer.kernel.shape
        layers.append(
            {
                "name": layer.source_name,
                "class": f"conv{shape[0]}x{shape[1]}",
                "kernel_shape": list(shape_in(storage.layout, sizes_of("HWIO", shape))),
                "layout": storage.layout,
                "bias_shape": list(layer.bias.shape),
                "activation": "relu" if layer.relu else "linear",
                "dilation": layer.dilation,
                "dtype": _dtype(layer.kernel),
                "parameters": layer.kernel.size + layer.bias.size,
            }
        )
    info = fcn.info
    return Report(
        file=fcn.path,
        format=storage.format,
        generation=info.source_format,
        layout=storage.layout,
        names=storage.names,
        dtype=storage.dtype,
        arch=fcn.name,
        head="convolutional",
        classes=fcn.classes,
        parameters=fcn.parameter_count(),
        input_size=info.input_size,
        input_size_from="file",
        input_layout="NHWC",
        window=fcn.window,
        channel_order=info.channel_order,
        preprocessing=info.preprocessing,
        flatten_order="resolved (convolutional head)",
        output_activation=info.output_activation,
        softmax=SOFTMAX_APPLIED[info.output_activation],
        batch_norm=info.batch_norm,
        notes=_stride_notes(fcn),
        layers=tuple(layers),
    )


def _stride_notes(fcn: FCN) -> tuple[str, ...]:
    """What a network that is not at output stride 32 does differently, pool by pool (its
    convolutions' dilations are in the layer rows)."""
    if fcn.plain:
        return ()
    pools = [
        f"pool{block} 2x2/{pool.stride}"
        + (f" dilation {pool.dilation}" if pool.dilation > 1 else "")
        for block, pool in enumerate(fcn.block_pools, 1)
        if pool != PLAIN
    ]
    return (
        f"output stride {fcn.output_stride} (à trous; recorded: {fcn.info.output_stride}): "
        + ", ".join(pools),
    )
