"""KerasHub's `VGGImageClassifier`, as a `.keras` archive or a preset directory, read as data.

KerasHub (keras-hub 0.32, `keras_hub/src/models/vgg/`) keeps Keras 3's pretrained VGGs. Its
files record constructor arguments, not a layer list: the task's config (`config.json` of a
`.keras`, `task.json` of a preset) is `keras_hub>VGGImageClassifier` with the backbone nested
(`keras_hub>VGGBackbone`: `stackwise_num_repeats`, `stackwise_num_filters`, `image_shape`) and
the head's arguments (`pooling`, `pooling_hidden_dim`, `num_classes`, `activation`, `dropout`).
The layers those arguments build are KerasHub's own, fixed (FORMATS.md: KerasHub VGG):

- the trunk: `block{b}_conv{i}`, 3x3 "same" ReLU convolutions; `block{b}_pool`, 2x2/2;
- `pooling="avg"|"max"`: `fc1` a 7x7 "valid" ReLU Conv2D over pool5, `output_dropout`, `fc2` a
  1x1 ReLU Conv2D, `pooler` the global pool, `predictions` a Dense — convolutional up to fc2,
  so the FCN drops the pool (at the size the head was built for it pools one cell) and makes
  `predictions` a 1x1 convolution;
- `pooling="flatten"`: `flatten`, `fc1` and `fc2` ReLU Denses with `output_dropout` between,
  `predictions`.

The weights are found by the layers' own names (each `vars` group's `name`), wherever Keras put
their groups. A preset splits them: the backbone in `model.weights.h5`, the head in
`task.weights.h5`. Nothing is imported: KerasHub is never needed to read its files.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from ..arch import family_counts, name_of
from ..errors import ArchitectureError, FormatError
from ..graph import (
    Activation,
    ChannelOrder,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    InputSpec,
    MaxPool,
    Op,
    OutputActivation,
    Preprocessing,
    Provenance,
    SourceGraph,
)
from ..tensor import Tensor
from .keras_config import CONFIG_MAX_BYTES, parse_config, show
from .keras_h5 import Maps, named_weights, open_file

TASK, BACKBONE = "keras_hub>VGGImageClassifier", "keras_hub>VGGBackbone"
#: The files of a preset directory (`save_to_preset`).
TASK_CONFIG, BACKBONE_CONFIG, METADATA = "task.json", "config.json", "metadata.json"
TASK_WEIGHTS, BACKBONE_WEIGHTS = "task.weights.h5", "model.weights.h5"
CONVERTER = "image_converter.json"
#: The ImageNet statistics of torchvision's VGGs, which KerasHub's presets were converted from
#: (timm's `vgg*.tv_in1k`): an image converter holding them as scale/offset takes RGB images
#: preprocessed as torch's (`images.TORCH_RGB_MEAN`/`STD`, /255 then mean/std).
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def is_task(config: Mapping[str, Any]) -> bool:
    """Whether a `.keras` config is a KerasHub object's (a registered `keras_hub>` name)."""
    registered = config.get("registered_name")
    return isinstance(registered, str) and registered.startswith("keras_hub>")


def is_preset(path: str) -> bool:
    """Whether a directory is a KerasHub preset (its metadata says which keras-hub wrote it)."""
    meta = os.path.join(path, METADATA)
    if not os.path.isfile(meta) or not os.path.isfile(os.path.join(path, BACKBONE_CONFIG)):
        return False
    try:
        return "keras_hub_version" in _json(meta)
    except FormatError:
        return False


def graph(
    config: Mapping[str, Any],
    weights: Mapping[str, list[Tensor]],
    path: str,
    format: str,
    preprocessing: tuple[ChannelOrder, Preprocessing] = ("rgb", "unknown"),
) -> SourceGraph:
    """The source graph of a `VGGImageClassifier` config and its layers' weights by name.

    Raises:
        FormatError: another KerasHub class, or arguments KerasHub's VGG does not take.
        ArchitectureError: a backbone other than a VGG's, or weights missing or of the wrong
            rank (the shapes are checked as every graph's are, by `shapes.checked`).
    """
    task = _task_config(config, path)
    backbone = _arguments(task.get("backbone"), BACKBONE, path)
    repeats, filters = backbone.get("stackwise_num_repeats"), backbone.get("stackwise_num_filters")
    plan = tuple(repeats) if isinstance(repeats, list) else ()
    if name_of(plan) is None or not isinstance(filters, list) or len(filters) != len(plan):
        raise ArchitectureError(
            f"{path}: a KerasHub backbone of {show(repeats)} convolutions per block, widths "
            f"{show(filters)}; a VGG has {family_counts()}"
        )
    ops: list[Op] = []
    for block, count in enumerate(plan, 1):
        for i in range(1, count + 1):
            ops += [
                _conv(weights, f"block{block}_conv{i}", "same", path),
                Activation(f"block{block}_conv{i}.relu", "relu", fused=True),
            ]
        ops.append(MaxPool(f"block{block}_pool"))
    ops += _head(task, weights, path)
    _check_widths(ops, filters, task, path)
    activation = task.get("activation")
    if activation not in (None, "linear", "softmax", "sigmoid"):
        raise FormatError(f"{path}: predictions activation {show(activation)}")
    output: OutputActivation = "linear" if activation in (None, "linear") else activation
    order, preprocess = preprocessing
    return SourceGraph(
        ops=tuple(ops),
        input=InputSpec(
            size=_image_size(backbone.get("image_shape"), path),
            channel_order=order,
            preprocessing=preprocess,
        ),
        output_activation=output,
        provenance=Provenance(path=path, format=format, generation="keras-hub"),
    )


@contextlib.contextmanager
def open_preset(path: str) -> Iterator[SourceGraph]:
    """The classifier in a KerasHub preset directory (`save_to_preset`), its weights mapped
    from the two HDF5 files.

    Raises:
        ArchitectureError: a backbone-only preset (no task.json: no head to convert).
        FormatError: a missing or unreadable file, or a config as `graph` refuses it.
    """
    task = os.path.join(path, TASK_CONFIG)
    if not os.path.isfile(task):
        raise ArchitectureError(
            f"{path}: a KerasHub backbone preset ({TASK_CONFIG} missing): there is no "
            "classifier head to convert; save the task (classifier.save_to_preset)"
        )
    config = parse_config(_read(task, CONFIG_MAX_BYTES), task)
    weights: dict[str, list[Tensor]] = {}
    with contextlib.ExitStack() as stack:
        for name in (BACKBONE_WEIGHTS, TASK_WEIGHTS):
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise FormatError(f"{path}: KerasHub preset without {name}")
            h5 = stack.enter_context(open_file(file))
            for layer, tensors in named_weights(h5, file, Maps(file)).items():
                if tensors and layer in weights:
                    raise FormatError(f"{path}: two layers named {layer!r} hold weights")
                if tensors:
                    weights[layer] = tensors
        yield graph(config, weights, path, "keras-hub-preset", _converter(path))


def _task_config(config: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    return _arguments(config, TASK, path)


def _arguments(config: Any, registered: str, path: str) -> Mapping[str, Any]:
    """The constructor arguments of a serialised KerasHub object of class `registered`."""
    found = config.get("registered_name") if isinstance(config, Mapping) else None
    arguments = config.get("config") if isinstance(config, Mapping) else None
    if found != registered or not isinstance(arguments, Mapping):
        raise FormatError(
            f"{path}: KerasHub object {show(found)}; vggfcn converts {registered} (never "
            "importing it)"
        )
    return arguments


def _head(task: Mapping[str, Any], weights: Mapping[str, list[Tensor]], path: str) -> list[Op]:
    pooling = task.get("pooling")
    relu: list[Op] = [Activation("fc1.relu", "relu", fused=True), Dropout("output_dropout")]
    if pooling in ("avg", "max"):
        pool: Op = GlobalAvgPool("pooler") if pooling == "avg" else GlobalMaxPool("pooler")
        return [
            _conv(weights, "fc1", "valid", path),
            *relu,
            _conv(weights, "fc2", "same", path),
            Activation("fc2.relu", "relu", fused=True),
            pool,
            _dense(weights, "predictions", path),
        ]
    if pooling == "flatten":
        return [
            Flatten("flatten", "HWC"),
            _dense(weights, "fc1", path),
            *relu,
            _dense(weights, "fc2", path),
            Activation("fc2.relu", "relu", fused=True),
            _dense(weights, "predictions", path),
        ]
    raise FormatError(f"{path}: pooling {show(pooling)}; KerasHub's VGG pools avg, max or flatten")


def _check_widths(ops: list[Op], filters: list[Any], task: Mapping[str, Any], path: str) -> None:
    """What the config says each layer holds against what its weights hold, all at once: a
    task.json saved with one model and weights with another must not convert.

    Raises:
        FormatError: naming every layer whose weights disagree.
    """
    wanted = {"fc1": task.get("pooling_hidden_dim"), "fc2": task.get("pooling_hidden_dim")}
    wanted["predictions"] = task.get("num_classes")
    for op in ops:
        if isinstance(op, Conv) and op.name.startswith("block"):
            wanted[op.name] = filters[int(op.name[5]) - 1]
    wrong = [
        f"{op.name} holds {op.kernel.shape[-1]}"
        for op in ops
        if isinstance(op, Conv | Dense) and op.kernel.shape[-1:] != (wanted.get(op.name),)
    ]
    if wrong:
        raise FormatError(
            f"{path}: the config and the weights disagree: {', '.join(wrong)} outputs, not what "
            "the config says (stackwise_num_filters, pooling_hidden_dim, num_classes)"
        )


def _weights(weights: Mapping[str, list[Tensor]], name: str, path: str) -> list[Tensor]:
    found = weights.get(name)
    if found is None or len(found) != 2:
        held = "no weights" if found is None else f"{len(found)} weight(s)"
        raise ArchitectureError(f"{path}: {name} has {held}; expected a kernel and a bias")
    return found


def _conv(weights: Mapping[str, list[Tensor]], name: str, padding: str, path: str) -> Conv:
    kernel, bias = _weights(weights, name, path)
    return Conv(name, kernel, bias, "HWIO", "same" if padding == "same" else "valid")


def _dense(weights: Mapping[str, list[Tensor]], name: str, path: str) -> Dense:
    kernel, bias = _weights(weights, name, path)
    return Dense(name, kernel, bias, "IO")


def _image_size(shape: Any, path: str) -> tuple[int, int] | None:
    """(H, W) from the backbone's `image_shape`; None when it is free ([null, null, 3])."""
    if not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3:
        raise FormatError(f"{path}: image_shape {show(shape)}; expected [H, W, 3]")
    h, w = shape[0], shape[1]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    return None


def converter(task: Mapping[str, Any]) -> tuple[ChannelOrder, Preprocessing]:
    """What the image converter of a `.keras` task's preprocessor says of its inputs (see
    `_preprocessing`)."""
    preprocessor = (task.get("config") or {}).get("preprocessor")
    found = preprocessor.get("config", {}) if isinstance(preprocessor, Mapping) else {}
    image = found.get("image_converter") if isinstance(found, Mapping) else None
    arguments = image.get("config") if isinstance(image, Mapping) else None
    return _preprocessing(arguments if isinstance(arguments, Mapping) else None)


def _converter(path: str) -> tuple[ChannelOrder, Preprocessing]:
    """What a preset's image converter says of its inputs (see `_preprocessing`)."""
    file = os.path.join(path, CONVERTER)
    arguments = _json(file).get("config") if os.path.isfile(file) else None
    return _preprocessing(arguments if isinstance(arguments, Mapping) else None)


def _preprocessing(converter: Mapping[str, Any] | None) -> tuple[ChannelOrder, Preprocessing]:
    """RGB always (KerasHub's image converters take RGB images); torch's preprocessing when the
    converter's scale and offset are the ImageNet statistics KerasHub's VGG presets use, else
    unknown."""
    if converter is None:
        return "rgb", "unknown"
    scale, offset = converter.get("scale"), converter.get("offset")
    torch_scale = [1 / 255 / s for s in _STD]
    torch_offset = [-m / s for m, s in zip(_MEAN, _STD, strict=True)]
    if _close(scale, torch_scale) and _close(offset, torch_offset):
        return "rgb", "torch"
    return "rgb", "unknown"


def _close(values: Any, want: list[float]) -> bool:
    return (
        isinstance(values, list)
        and len(values) == len(want)
        and all(
            isinstance(v, int | float) and abs(v - w) < 1e-6
            for v, w in zip(values, want, strict=True)
        )
    )


def _read(path: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise FormatError(f"{path}: more than {limit} bytes; not a config")
    return data


def _json(path: str) -> dict[str, Any]:
    try:
        found = json.loads(_read(path, CONFIG_MAX_BYTES))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(found, dict):
        raise FormatError(f"{path}: not a JSON object")
    return found
