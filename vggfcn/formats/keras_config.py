"""Keras model configs, read as data: the layers a `model.save` file or a `.keras` archive says
its model has, in order, nested models expanded.

A config is JSON that Keras would turn into objects by importing the classes it names. We never
do: it is parsed size- and depth-bounded, every layer must be a plain Keras class we know, and a
`Lambda` layer, a custom (registered) class or a module path outside Keras is refused by name.
A functional model must be a plain chain (no branches, merges or shared layers). What the
layers compute is `keras_model`'s business; where their weights live is the containers'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError

#: A model config is a few hundred kilobytes even for deep nets; a bigger one is not a config.
CONFIG_MAX_BYTES = 64 << 20
#: Models nest a base model or two (Sequential([VGG16(...), ...])); deeper is not a classifier.
MAX_NESTING = 8
#: Layers that are the identity at inference.
IDENTITY = {"Dropout", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout"}
_MODELS = {"Functional", "Sequential", "Model"}
_KNOWN = {
    "InputLayer",
    "Conv2D",
    "MaxPooling2D",
    "Flatten",
    "GlobalAveragePooling2D",
    "Dense",
    "BatchNormalization",
    "Activation",
    "ReLU",
    *IDENTITY,
    *_MODELS,
}


@dataclass(frozen=True)
class ConfigLayer:
    """One layer of a model config, nested models flattened: its name, class and config.

    `path` is the chain of nested model names above it (empty at the top level), which is how
    the weight files address a nested model's layers.
    """

    name: str
    class_name: str
    config: Mapping[str, Any]
    path: tuple[str, ...] = ()


def parse_config(text: str | bytes, where: str) -> dict[str, Any]:
    """A model config's JSON as data, size- and depth-bounded.

    Raises:
        FormatError: too large, not JSON, too deeply nested, or not a JSON object.
    """
    if len(text) > CONFIG_MAX_BYTES:
        raise FormatError(f"{where}: model config of {len(text)} bytes exceeds {CONFIG_MAX_BYTES}")
    try:
        config = json.loads(text)
    except RecursionError:
        raise FormatError(f"{where}: model config is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{where}: model config is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}: model config is not a JSON object")
    return config


def config_layers(config: Mapping[str, Any], where: str) -> list[ConfigLayer]:
    """Every layer of a (possibly nested) model config in model order, nested models expanded.

    Nested models stay in the list too (before their own layers), so a weight file that stores
    a whole base model under its name can be matched.

    Raises:
        FormatError: not a model config, a layer that is not a plain chain, a layer class we do
            not know (a Lambda, a custom class), a layer from outside Keras.
    """
    return list(_walk(config, where, (), 0))


def _walk(
    model: Mapping[str, Any], where: str, path: tuple[str, ...], depth: int
) -> Iterator[ConfigLayer]:
    if depth > MAX_NESTING:
        raise FormatError(f"{where}: models nested more than {MAX_NESTING} deep")
    class_name = model.get("class_name")
    if class_name not in _MODELS:
        raise FormatError(f"{where}: model config of class {show(class_name)}; expected a model")
    inner = model.get("config")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers")  # Keras 2.0-2.2
    if not isinstance(layers, list):
        raise FormatError(f"{where}: model config has no list of layers")
    previous: str | None = None
    for entry in layers:
        layer = _layer(entry, where)
        _check_chain(entry, layer, previous, where)
        yield layer if not path else ConfigLayer(layer.name, layer.class_name, layer.config, path)
        if layer.class_name in _MODELS:
            yield from _walk(entry, where, (*path, layer.name), depth + 1)
        if layer.class_name != "InputLayer":
            previous = layer.name


def _layer(entry: Any, where: str) -> ConfigLayer:
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict | list):
        raise FormatError(f"{where}: model config holds a layer entry that is not an object")
    class_name = entry.get("class_name")
    config = entry["config"] if isinstance(entry["config"], dict) else {}
    name = entry.get("name", config.get("name"))
    if not isinstance(name, str) or not isinstance(class_name, str):
        raise FormatError(f"{where}: model config holds a layer without a name or class")
    module, registered = entry.get("module"), entry.get("registered_name")
    if class_name == "Lambda":
        raise FormatError(
            f"{where}: layer {show(name)} is a Lambda layer (it carries code); refused, nothing "
            "was run"
        )
    custom = registered not in (None, class_name) or (
        isinstance(module, str) and not module.startswith("keras")
    )
    if custom or class_name not in _KNOWN:
        origin = f" from {show(module)}" if isinstance(module, str) else ""
        raise FormatError(
            f"{where}: layer {show(name)} is of class {show(registered or class_name)}{origin}, "
            "which vggfcn does not convert (custom classes are never imported)"
        )
    return ConfigLayer(name, class_name, config)


def _check_chain(
    entry: Mapping[str, Any], layer: ConfigLayer, previous: str | None, where: str
) -> None:
    """Refuse a functional model that is not a plain chain (branches, merges, shared layers)."""
    nodes = entry.get("inbound_nodes")
    if not nodes or previous is None:
        return
    inbound = _inbound_names(nodes)
    if inbound is not None and inbound != [previous]:
        raise FormatError(
            f"{where}: layer {show(layer.name)} takes {', '.join(map(show, inbound))} as "
            f"input, not the layer before it ({show(previous)}); only plain chains convert"
        )


def _inbound_names(nodes: Any) -> list[str] | None:
    """The layers feeding a layer's first call, in Keras 3 or Keras 2 form; None if unreadable."""
    if not isinstance(nodes, list) or len(nodes) != 1:
        return None if not isinstance(nodes, list) else ["<shared layer>"]
    node = nodes[0]
    names: list[str] = []
    if isinstance(node, dict):  # Keras 3: {"args": [{"config": {"keras_history": [name, ..]}}]}
        for arg in node.get("args", []):
            args = arg if isinstance(arg, list) else [arg]
            for a in args:
                history = a.get("config", {}).get("keras_history") if isinstance(a, dict) else None
                if isinstance(history, list) and history and isinstance(history[0], str):
                    names.append(history[0])
    elif isinstance(node, list):  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        names = [n[0] for n in node if isinstance(n, list) and n and isinstance(n[0], str)]
    return names or None


def input_size(layers: Sequence[ConfigLayer], where: str) -> tuple[int, int] | None:
    """(H, W) of the first input shape recorded in the config, None when unknown."""
    for layer in layers:
        shape = layer.config.get("batch_shape", layer.config.get("batch_input_shape"))
        if isinstance(shape, list) and len(shape) == 4:
            if layer.config.get("data_format") == "channels_first":
                raise FormatError(f"{where}: channels_first models are not supported")
            h, w = shape[1], shape[2]
            if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
                return h, w
            return None
    return None


def snake_case(class_name: str) -> str:
    """Keras' name for a layer class's weight group: Conv2D -> conv2d, MaxPooling2D ->
    max_pooling2d, ReLU -> re_lu (keras `naming.to_snake_case`)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def show(value: Any) -> str:
    """A config value in a message: short strings as they are, anything else by type."""
    if isinstance(value, str):
        return repr(value[:60])
    return repr(value) if isinstance(value, int | float | type(None)) else type(value).__name__
