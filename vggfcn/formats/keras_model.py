"""A Keras model as a source graph, from its layers' weights and, when the file has one, its config.

Every Keras container (`.h5` of any generation, `.weights.h5`, the `.keras` archive) comes down to
the same thing: the model's layers in order, each with its variables in Keras' order (kernel, bias;
gamma, beta, moving mean, moving variance). The container readers find those; this module turns
them into ops.

With a model config (a `model.save` file or a `.keras` archive, read as data by `keras_config`),
the layers are what the config says, nested models included, checked against the weights.
Without one (weights-only files) the classes come from the weights
(a 4-D kernel is a convolution, a 2-D one a dense layer) and the rest from the VGG family: a
max-pool closes each block, ReLUs follow every layer but the last; which head the file has is
whatever the container can tell (`.weights.h5` group names say `flatten` or
`global_average_pooling2d`; older files only the first dense layer's inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..arch import family_counts, plan_with
from ..errors import ArchitectureError, FormatError
from ..graph import (
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InputSpec,
    MaxPool,
    Op,
    OutputActivation,
    vgg_trunk,
)
from ..tensor import Tensor
from .keras_config import IDENTITY, show

#: Keras' BatchNormalization default epsilon (torch's is 1e-5).
KERAS_BN_EPS = 1e-3
_OUTPUT_ACTIVATIONS: dict[str, OutputActivation] = {
    "softmax": "softmax",
    "sigmoid": "sigmoid",
    "linear": "linear",
}


@dataclass(frozen=True)
class KerasLayer:
    """A layer as a container found it: name, class (None without a config), config, weights."""

    name: str
    class_name: str | None
    config: Mapping[str, Any]
    weights: tuple[Tensor, ...]


@dataclass(frozen=True)
class KerasModel:
    """What the ops builders return: the ops, and what they say about input and output."""

    ops: tuple[Op, ...]
    input: InputSpec
    output_activation: OutputActivation
    recorded: bool = True  # the structure is the config's, not assumed (`Provenance.recorded`)
    assumed: tuple[str, ...] = ()


def ops_from_config(
    layers: Sequence[KerasLayer], size: tuple[int, int] | None, where: str
) -> KerasModel:
    """The ops a model config defines, its weights checked against it.

    Raises:
        FormatError: the config disagrees with the weights, or asks for something a VGG
            classifier conversion cannot carry (strides, dilations, other activations).
    """
    built: list[Op | _Output] = []
    for layer in layers:
        built.extend(_config_ops(layer, where))
    ops, output = _output_activation(built, where)
    return KerasModel(
        ops=tuple(ops),
        input=InputSpec(size=size, channel_order="bgr", preprocessing="caffe"),
        output_activation=output,
    )


def _config_ops(layer: KerasLayer, where: str) -> list[Op | _Output]:
    c, name, kind = layer.config, layer.name, layer.class_name
    if kind in ("Conv2D", "Dense"):
        return _weighted_ops(layer, where)
    if layer.weights and kind != "BatchNormalization":
        raise FormatError(f"{where}: layer {name} ({kind}) holds weights, expected none")
    if kind == "BatchNormalization":
        return [_batch_norm(layer, where)]
    if kind == "MaxPooling2D":
        if _pair(c.get("pool_size", 2)) != (2, 2) or _pair(c.get("strides") or 2) != (2, 2):
            raise FormatError(f"{where}: layer {name} is not a 2x2 stride-2 max-pool")
        return [MaxPool(name, ceil=False)]
    if kind == "Flatten":
        _channels_last(layer, where)
        return [Flatten(name, "HWC")]
    if kind == "GlobalAveragePooling2D":
        _channels_last(layer, where)
        return [GlobalAvgPool(name)]
    if kind == "Activation":
        return [_activation(name, c.get("activation"), where)]
    if kind == "ReLU":
        if any(
            c.get(k) not in (None, 0, 0.0) for k in ("max_value", "negative_slope", "threshold")
        ):
            raise FormatError(f"{where}: layer {name} is a ReLU with a cap, slope or threshold")
        return [Activation(name, "relu")]
    if kind in IDENTITY:
        return [Dropout(name)]
    return []  # InputLayer, and nested models (their layers follow them)


def _weighted_ops(layer: KerasLayer, where: str) -> list[Op | _Output]:
    c, name = layer.config, layer.name
    use_bias = c.get("use_bias", True)
    expected = 2 if use_bias else 1
    if len(layer.weights) != expected:
        raise FormatError(
            f"{where}: layer {name} has {len(layer.weights)} weights; its config says "
            f"{'a kernel and a bias' if use_bias else 'a kernel'}"
        )
    kernel, bias = layer.weights[0], (layer.weights[1] if use_bias else None)
    op: Conv | Dense
    if layer.class_name == "Conv2D":
        _channels_last(layer, where)
        if _pair(c.get("strides", 1)) != (1, 1) or _pair(c.get("dilation_rate", 1)) != (1, 1):
            raise FormatError(f"{where}: layer {name} has strides or dilation; expected 1")
        if c.get("groups", 1) != 1:
            raise FormatError(f"{where}: layer {name} is a grouped convolution")
        size, filters = _pair(c.get("kernel_size")), c.get("filters")
        if len(kernel.shape) != 4 or kernel.shape[:2] != size or kernel.shape[3] != filters:
            raise FormatError(
                f"{where}: layer {name} holds a kernel of shape {kernel.shape}, but its config "
                f"says {filters} filters of {size}"
            )
        padding = c.get("padding", "valid")
        if padding not in ("same", "valid"):
            raise FormatError(f"{where}: layer {name} has padding {show(padding)}")
        op = Conv(name, kernel, bias, "HWIO", padding)
    else:
        units = c.get("units")
        if len(kernel.shape) != 2 or kernel.shape[1] != units:
            raise FormatError(
                f"{where}: layer {name} holds a kernel of shape {kernel.shape}, but its config "
                f"says {units} units"
            )
        op = Dense(name, kernel, bias, "IO")
    activation = _activation(f"{name}.activation", c.get("activation", "linear"), where, True)
    # A layer's own linear activation is no op of the file's; only the others are kept.
    return (
        [op]
        if isinstance(activation, Activation) and activation.kind == "linear"
        else [
            op,
            activation,
        ]
    )


def _batch_norm(layer: KerasLayer, where: str) -> BatchNorm:
    c, name = layer.config, layer.name
    scale, center = c.get("scale", True), c.get("center", True)
    expected = 2 + int(bool(scale)) + int(bool(center))
    if len(layer.weights) != expected:
        raise FormatError(
            f"{where}: layer {name} has {len(layer.weights)} weights; its config says {expected}"
        )
    axis = c.get("axis", -1)
    if axis not in (-1, 3, [3], [-1], 1, [1]):
        raise FormatError(f"{where}: layer {name} normalises axis {show(axis)}, not channels")
    weights = list(layer.weights)
    gamma = weights.pop(0) if scale else None
    beta = weights.pop(0) if center else None
    eps = c.get("epsilon", KERAS_BN_EPS)
    if not isinstance(eps, int | float) or eps < 0:
        raise FormatError(f"{where}: layer {name} has epsilon {show(eps)}")
    return BatchNorm(name, gamma, beta, weights[0], weights[1], float(eps))


def _activation(name: str, value: Any, where: str, fused: bool = False) -> Activation | _Output:
    if value in ("relu", "linear", None):
        return Activation(name, "relu" if value == "relu" else "linear", fused)
    if value in _OUTPUT_ACTIVATIONS:
        return _Output(name, _OUTPUT_ACTIVATIONS[value])
    raise FormatError(
        f"{where}: {name} is {show(value)}; between layers vggfcn converts relu and linear"
    )


@dataclass(frozen=True)
class _Output:
    """An output activation (softmax, sigmoid) met while building; it must end the model."""

    name: str
    kind: OutputActivation


def _output_activation(ops: list[Op | _Output], where: str) -> tuple[list[Op], OutputActivation]:
    """Strip the trailing output activation (and linear no-ops after the last layer)."""
    kind: OutputActivation = "linear"
    while ops and (
        isinstance(ops[-1], _Output | Dropout)
        or (isinstance(ops[-1], Activation) and ops[-1].kind == "linear")
    ):
        last = ops.pop()
        if isinstance(last, _Output):
            kind = last.kind
    clean: list[Op] = []
    for op in ops:
        if isinstance(op, _Output):
            raise FormatError(
                f"{where}: {op.name} is {op.kind} before the last layer; between layers vggfcn "
                "converts relu and linear"
            )
        clean.append(op)
    return clean, kind


def ops_from_weights(layers: Sequence[KerasLayer], head: str | None, where: str) -> KerasModel:
    """The ops of a weights-only file: the VGG family fills in what the file does not record.

    Args:
        layers: weighted layers in model order (classes None: told apart by their weights).
        head: "flatten" or "gap" when the container knows which, None when it cannot tell.
    Raises:
        ArchitectureError: layers a weights-only file cannot place (batch norms), a layer
            without its bias (such a file describes the stock architecture, whose every conv
            and dense layer has one: Keras itself would refuse it), or a head that cannot be
            told apart.
    """
    convs: list[Conv] = []
    denses: list[Dense] = []
    biasless = [
        layer.name for layer in layers if [len(w.shape) for w in layer.weights] in ([4], [2])
    ]
    if biasless:
        raise ArchitectureError(
            f"{where}: {', '.join(biasless)}: a kernel and no bias; a file without a model "
            "config holds the stock VGG layers, each with a kernel and a bias (Keras would "
            "refuse to load it too)"
        )
    for layer in layers:
        shapes = [len(w.shape) for w in layer.weights]
        if shapes == [4, 1]:
            if denses:
                raise FormatError(f"{where}: convolution {layer.name} comes after a dense layer")
            convs.append(Conv(layer.name, layer.weights[0], layer.weights[1], "HWIO"))
        elif shapes == [2, 1]:
            denses.append(Dense(layer.name, layer.weights[0], layer.weights[1], "IO"))
        elif shapes and all(s == 1 for s in shapes) and len(shapes) in (2, 3, 4):
            raise ArchitectureError(
                f"{where}: {layer.name} is a batch norm, and this file holds no model config to "
                "say where it sits; convert the model saved whole (model.save: .keras or .h5)"
            )
        else:
            raise FormatError(
                f"{where}: layer {layer.name} has {len(layer.weights)} weights of ranks "
                f"{shapes}; expected a kernel and a bias"
            )
    plan = _plan(len(convs), where)
    ops: list[Op] = vgg_trunk(convs, plan)
    if denses and head is None:
        head = _head_from_fan_in(denses[0], convs, where)
    if denses:
        ops.append(
            GlobalAvgPool("global_average_pooling2d")
            if head == "gap"
            else Flatten("flatten", "HWC")
        )
    for i, dense in enumerate(denses):
        ops.append(dense)
        if i + 1 < len(denses):
            ops.append(Activation(f"{dense.name}.activation", "relu", fused=True))
    assumed = ("ReLU between dense layers",)
    return KerasModel(
        ops=tuple(ops),
        input=InputSpec(channel_order="bgr", preprocessing="caffe"),
        output_activation="unknown",
        recorded=False,
        assumed=assumed if len(denses) > 1 else (),
    )


def _plan(count: int, where: str) -> tuple[int, ...]:
    plan = plan_with(count)
    if plan is not None:
        return plan
    if count == 0:
        raise ArchitectureError(f"{where}: no convolution layers found; is this a VGG checkpoint?")
    raise ArchitectureError(
        f"{where}: found {count} convolution layers; a VGG has {family_counts()}"
    )


def _head_from_fan_in(first: Dense, convs: Sequence[Conv], where: str) -> str:
    """Flatten, unless the first dense layer reads exactly pool5's channels, which a weights-only
    file cannot tell apart from a global average or max pool."""
    if convs and len(first.kernel.shape) == 2:
        channels = convs[-1].kernel.shape[-1]
        if first.kernel.shape[0] == channels:
            raise ArchitectureError(
                f"{where}: {first.name} reads {channels} values, pool5's channel count: a global "
                "pooling (average or max?) that this file holds no model config to name; "
                "convert the model saved whole (model.save: .keras or .h5)"
            )
    return "flatten"


def _pair(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _channels_last(layer: KerasLayer, where: str) -> None:
    if layer.config.get("data_format") == "channels_first":
        raise FormatError(f"{where}: layer {layer.name} is channels_first, which is not supported")
