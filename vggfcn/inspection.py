"""`vggfcn inspect`: what a file holds, as its file defines it.

For a classifier, the source graph op by op — layer, class, shapes in the file's own layout —
with what the file says (or does not say) about its input and output. For a converted network,
its convolutions. A JSON-ready dict either way; the CLI prints it.
"""

from __future__ import annotations

from typing import Any

from .arch import PLANS
from .fcn import FCN
from .graph import BatchNorm, Conv, Dense, Flatten, SourceGraph
from .shapes import block_plan
from .tensor import Tensor

_SOFTMAX = {"softmax": "yes", "linear": "no", "sigmoid": "no", "unknown": "unknown"}


def describe(network: SourceGraph | FCN) -> dict[str, object]:
    """The `inspect` report of a source graph or a converted network."""
    if isinstance(network, FCN):
        return _describe_fcn(network)
    return _describe_graph(network)


def _dtype(tensor: Tensor) -> str:
    return str(getattr(tensor.source, "storage", tensor.source.dtype))


def _describe_graph(graph: SourceGraph) -> dict[str, object]:
    layers: list[dict[str, object]] = []
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
        else:
            count = 0
            row |= {k: v for k, v in vars(op).items() if k != "name"}
        row["parameters"] = count
        total += count
        layers.append(row)
    trunk, _ = graph.split()
    plan = block_plan(trunk)
    flatten = next((op.order for op in graph.ops if isinstance(op, Flatten)), "none")
    size = graph.input.size
    return {
        "file": graph.path,
        "format": graph.provenance.format,
        "generation": graph.provenance.generation,
        "arch": next((n for n, p in PLANS.items() if p == plan), "vgg"),
        "head": "dense" if any(isinstance(op, Dense) for op in graph.ops) else "convolutional",
        "classes": _classes(graph),
        "input_size": list(size) if size else None,
        "input_size_from": graph.input.size_from,
        "channel_order": graph.input.channel_order,
        "preprocessing": graph.input.preprocessing,
        "flatten_order": flatten,
        "output_activation": graph.output_activation,
        "softmax": _SOFTMAX[graph.output_activation],
        "batch_norm": "yes" if any(isinstance(op, BatchNorm) for op in graph.ops) else "none",
        "shapes": "as stored in the file (layout per layer)",
        "notes": list(graph.provenance.notes),
        "parameters": total,
        "layers": layers,
    }


def _classes(graph: SourceGraph) -> int:
    last = [op for op in graph.ops if isinstance(op, Conv | Dense)][-1]
    shape = last.kernel.shape
    return int(shape[-1] if last.layout in ("HWIO", "IO") else shape[0])


def _describe_fcn(fcn: FCN) -> dict[str, object]:
    layers = []
    for layer in fcn.layers:
        shape = layer.kernel.shape
        layers.append(
            {
                "name": layer.name,
                "class": f"conv{shape[0]}x{shape[1]}",
                "kernel_shape": list(shape),
                "bias_shape": list(layer.bias.shape),
                "activation": "relu" if layer.relu else "linear",
                "dtype": _dtype(layer.kernel),
                "parameters": layer.kernel.size + layer.bias.size,
                "source_name": layer.source_name,
            }
        )
    info = fcn.info
    return {
        "file": fcn.path,
        "format": info.stored_as,
        "generation": info.source_format,
        "arch": fcn.name,
        "head": "convolutional",
        "classes": fcn.classes,
        "input_size": list(info.input_size),
        "window": list(fcn.window),
        "channel_order": info.channel_order,
        "preprocessing": info.preprocessing,
        "flatten_order": "resolved (convolutional head)",
        "output_activation": info.output_activation,
        "softmax": _SOFTMAX[info.output_activation],
        "batch_norm": info.batch_norm,
        "shapes": "HWIO",
        "notes": [],
        "parameters": fcn.parameter_count(),
        "layers": layers,
    }
