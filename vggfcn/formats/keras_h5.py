"""Keras HDF5 files, all four generations, as source graphs (the README's format table).

Layers are placed by the file's own attributes (`layer_names`, `weight_names`, the `name` of
Keras 3 `vars` groups, the model config), never by h5py's alphabetical listing, where conv2d_10
precedes conv2d_2. Every path is walked one part at a time through hard links only: a checkpoint
that points at another file is refused without that file being opened. Raw weights are mapped
straight from the file (`region`).

The generations: `keras1` (release files: `block1_conv1_W_1:0` in the layer's group), `keras2`
(`save_weights`: `<layer>/<layer>/kernel:0`), `keras2-model` (the same under `model_weights/`,
with a `model_config`), `keras3-h5` (Keras 3 legacy `model.save('x.h5')`, names without `:0`),
`keras3-weights` (`.weights.h5`: `layers/<class-based name>/vars/<i>`, nested models as nested
`layers` groups). A `.keras` archive holds the last layout plus its config (`keras_archive`).
What the layers are is `keras_model`'s business.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import h5py
import numpy as np

from ..errors import ArchitectureError, FormatError, first_line
from ..graph import Provenance, SourceGraph
from ..precision import BFloat16Source
from ..tensor import Tensor
from .keras_config import ConfigLayer, config_layers, input_size, parse_config, snake_case
from .keras_model import KerasLayer, KerasModel, ops_from_config, ops_from_weights
from .region import FileRegion

#: What h5py raises on a corrupt file, depending on where the damage is: all become ours.
_H5PY_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


@dataclass(frozen=True)
class Maps:
    """Where raw dataset bytes can be mapped from: the file holding the HDF5 bytes, and where
    in it they begin (non-zero for the weights inside a `.keras` archive)."""

    path: str
    base: int = 0


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph]:  # noqa: A001 (the reader contract's name)
    """The classifier in a Keras HDF5 file, open for the `with` block (tensors stream from it)."""
    with open_file(path) as f:
        yield read(f, path)


def read(f: h5py.File, path: str) -> SourceGraph:
    """The source graph of the Keras model in an open HDF5 file (tensors stay lazy).

    Raises:
        FormatError: the file is HDF5 but not a Keras weights layout we know, is unsafe, or is
            corrupt; its model config is broken or names layers we do not convert.
        ArchitectureError: the layers do not form a VGG classifier.
    """
    try:
        return _read(f, path)
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: corrupt HDF5 file ({first_line(e)})") from None


def read_keras3(
    f: h5py.File, path: str, maps: Maps, config: dict[str, Any] | None, format: str
) -> SourceGraph:
    """The model in a Keras 3 weights file (`layers/...`), by its config when there is one.

    Raises:
        FormatError, ArchitectureError: as `read`.
    """
    try:
        if config is None:
            return _keras3_weights_only(f, path, maps, format)
        return _keras3_with_config(f, path, maps, config, format)
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: corrupt HDF5 file ({first_line(e)})") from None


def _preflight(path: str, fileobj: Callable[[], BinaryIO] | None) -> None:
    child = multiprocessing.get_context("fork").Process(
        target=_walk, args=(path, fileobj), daemon=True
    )
    # The child must not finalise the parent's objects: a garbage collection there once ran
    # the destructor of an onnxruntime session left for collection, which waited forever on
    # a condition variable of threads that do not exist after a fork. Frozen objects are out
    # of the collector's reach, and the child collects nothing at all.
    gc.freeze()
    try:
        child.start()
    finally:
        gc.unfreeze()
    child.join(PARSE_TIMEOUT)
    if child.is_alive():
        child.kill()
        child.join()
        raise FormatError(
            f"{path}: the HDF5 library did not finish reading the file's structure within "
            f"{PARSE_TIMEOUT:g} s; the file is corrupt"
        )
    if child.exitcode is not None and child.exitcode < 0:
        raise FormatError(
            f"{path}: the HDF5 library crashed (signal {-child.exitcode}) reading the file; "
            "the file is corrupt"
        )


def _walk(path: str, fileobj: Callable[[], BinaryIO] | None) -> None:
    """The preflight child: walk every group and dataset header the readers walk. Errors are
    the parent's to report; only a hang or a crash matters here. A crash is reported by the
    parent in one line, so the child prints no Python traceback dump of its own."""
    gc.disable()
    faulthandler.disable()
    with contextlib.suppress(Exception), h5py.File(fileobj() if fileobj else path, "r") as f:
        f.visititems(lambda _name, obj: _touch(obj))
    os._exit(0)  # skip interpreter teardown: nothing of the parent's to flush or close


def _touch(obj: Any) -> None:
    """Everything a reader may ask of an object: its attributes, and a dataset's layout."""
    with contextlib.suppress(Exception):
        for key in obj.attrs:
            with contextlib.suppress(Exception):
                obj.attrs[key]
    if isinstance(obj, h5py.Dataset):
        for probe in (
            obj.id.get_offset,
            obj.id.get_storage_size,
            lambda: (obj.chunks, obj.compression, obj.dtype, obj.shape),
            lambda: (obj.external, obj.is_virtual),
        ):
            with contextlib.suppress(Exception):
                probe()


def _read(f: h5py.File, path: str) -> SourceGraph:
    if _has_layer_names(f):
        root, model_file = f, False
    elif "model_weights" in f and _has_layer_names(_group(f, "model_weights", path)):
        root, model_file = _group(f, "model_weights", path), True
    elif "layers" in f:
        return _keras3_weights_only(f, path, Maps(path), "keras-h5")
    else:
        raise FormatError(
            f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, no "
            "'model_weights' or 'layers' group)"
        )
    owners, generation = _layer_weights(root, path)
    if model_file and generation == "keras2":
        generation = "keras2-model"
    tensors = {name: [_tensor(d, path, Maps(path)) for d in ds] for name, ds in owners.items()}
    raw = f.attrs.get("model_config")
    if raw is None:
        layers = [KerasLayer(name, None, {}, tuple(ts)) for name, ts in tensors.items() if ts]
        return _graph(ops_from_weights(layers, None, path), path, "keras-h5", generation)
    configured = config_layers(parse_config(_decode(raw), f"{path}: model_config"), path)
    layers = _attach(configured, tensors, path)
    model = ops_from_config(layers, input_size(configured, path), path)
    return _graph(model, path, "keras-h5", generation)


def _graph(model: KerasModel, path: str, format: str, generation: str) -> SourceGraph:
    return SourceGraph(
        ops=model.ops,
        input=model.input,
        output_activation=model.output_activation,
        provenance=Provenance(
            path=path,
            format=format,
            generation=generation,
            recorded=model.recorded,
            assumed=model.assumed,
        ),
    )


def _layer_weights(root: h5py.Group, path: str) -> tuple[dict[str, list[h5py.Dataset]], str]:
    """Each weighted layer's datasets, in model order (the `layer_names` attribute), and the
    generation the weight names show.

    A nested model (a base model saved as one layer) lists its layers' weights as
    `<layer>/<var>`: they are split out by that owner; a plain layer owns all of its own (Keras
    3 names them `<model>/<layer>/<var>`). Every missing dataset is reported at once.
    """
    owners: dict[str, list[h5py.Dataset]] = {}
    generation = "keras1"
    missing: list[str] = []
    for name in _string_list(root, "layer_names", path):
        group = _group(root, name, path)
        names = _string_list(group, "weight_names", path) if "weight_names" in group.attrs else []
        if names and "/" in names[0]:
            generation = "keras2" if names[0].endswith(":0") else "keras3-h5"
        parts = [n.split("/") for n in names]
        inner = list(dict.fromkeys(p[-2] for p in parts if len(p) >= 2))
        nested = len(inner) > 1 and all(len(p) >= 2 for p in parts)
        found: dict[str, h5py.Dataset] = {}
        for w, split in zip(names, parts, strict=True):
            try:
                found[w] = _dataset(group, w, path)
            except _Missing as e:
                missing.append(e.where + _expected_shape(w, found, names))
                continue
            owners.setdefault(split[-2] if nested else name, []).append(found[w])
    if missing:
        raise ArchitectureError(f"{path}: missing {', '.join(missing)}")
    return owners, generation


def _attach(
    configured: list[ConfigLayer], tensors: dict[str, list[Tensor]], path: str
) -> list[KerasLayer]:
    """The config's layers with their weights; weights the config does not name are an error."""
    layers = []
    for layer in configured:
        layers.append(
            KerasLayer(
                layer.name, layer.class_name, layer.config, tuple(tensors.pop(layer.name, []))
            )
        )
    unnamed = [name for name, ts in tensors.items() if ts]
    if unnamed:
        raise FormatError(
            f"{path}: weights for {', '.join(unnamed)}, which the model config does not name"
        )
    return layers


def _keras3_weights_only(f: h5py.File, path: str, maps: Maps, format: str) -> SourceGraph:
    """`.weights.h5` without a config: `layers/<class-based name>[_N]/vars/<i>`, nested models
    as `layers/<model>/layers/...`. Within a class, the suffix gives the order; the head's kind
    comes from the group names (`flatten`, `global_average_pooling2d`)."""
    groups = list(_keras3_groups(_group(f, "layers", path), path, ()))
    bases = {_base(key) for key, _ in groups}
    if "global_max_pooling2d" in bases:
        raise ArchitectureError(
            f"{path}: the head has a GlobalMaxPooling2D layer, which vggfcn does not convert"
        )
    head = (
        "gap" if "global_average_pooling2d" in bases else "flatten" if "flatten" in bases else None
    )
    ordered = sorted(
        (g for g in groups if _base(g[0]) in ("conv2d", "dense", "batch_normalization")),
        key=lambda g: (_base(g[0]) != "conv2d", _base(g[0]), g[0][:-1], _suffix(g[0])),
    )
    layers = []
    for key, vars_group in ordered:
        name = _decode(vars_group.attrs.get("name", key[-1]))
        datasets = [_dataset(vars_group, str(i), path) for i in range(len(vars_group))]
        layers.append(KerasLayer(name, None, {}, tuple(_tensor(d, path, maps) for d in datasets)))
    return _graph(ops_from_weights(layers, head, path), path, format, "keras3-weights")


def named_weights(f: h5py.File, path: str, maps: Maps) -> dict[str, list[Tensor]]:
    """Every layer's variables in a Keras 3 weights file, under the layer's own name (each
    `vars` group's `name` attribute), nested models walked: what a reader that knows its
    layers by name (KerasHub's task) looks its weights up in.

    Raises:
        FormatError: two layers of one name, or a corrupt file.
    """
    found: dict[str, list[Tensor]] = {}
    try:
        for key, vars_group in _keras3_groups(_group(f, "layers", path), path, ()):
            name = _decode(vars_group.attrs.get("name", key[-1]))
            if name in found:
                raise FormatError(f"{path}: two layers named {name!r} hold weights")
            datasets = [_dataset(vars_group, str(i), path) for i in range(len(vars_group))]
            found[name] = [_tensor(d, path, maps) for d in datasets]
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: corrupt HDF5 file ({first_line(e)})") from None
    return found


def _keras3_groups(
    top: h5py.Group, path: str, at: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], h5py.Group]]:
    """(key path, vars group) of every layer under a `layers` group, nested models walked."""
    for key in top:
        group = _group(top, key, path)
        if "layers" in group and len(at) < 8:
            yield from _keras3_groups(_group(group, "layers", path), path, (*at, key))
        elif "vars" in group:
            yield (*at, key), _group(group, "vars", path)


def _keras3_with_config(
    f: h5py.File, path: str, maps: Maps, config: dict[str, Any], format: str
) -> SourceGraph:
    """Keras 3 weights placed by their config (`placed_weights`), its layers checked first."""
    configured = config_layers(config, path)
    layers = _attach(configured, placed_weights(f, path, maps, config), path)
    model = ops_from_config(layers, input_size(configured, path), path)
    return _graph(model, path, format, "keras3")


def placed_weights(
    f: h5py.File, path: str, maps: Maps, config: dict[str, Any]
) -> dict[str, list[Tensor]]:
    """Every layer's variables from where Keras 3 loads them: each model names its layers'
    groups by class (`conv2d`, `conv2d_1`, ...) in the order of its layer list, as Keras'
    saving does. The config's layers must be objects with a class and a name (its reader
    checks them first).

    Raises:
        FormatError: a group that records another layer's name, or a corrupt file.
    """
    tensors: dict[str, list[Tensor]] = {}
    try:
        for layer, group_path in _keras3_paths(config, path):
            vars_group = _group(f, f"{group_path}/vars", path)
            recorded = vars_group.attrs.get("name")
            if recorded is not None and _decode(recorded) != layer:
                raise FormatError(
                    f"{path}: /{group_path} holds the weights of {_decode(recorded)!r}, but "
                    f"the config puts {layer!r} there (config and weights disagree)"
                )
            datasets = [_dataset(vars_group, str(i), path) for i in range(len(vars_group))]
            tensors[layer] = [_tensor(d, path, maps) for d in datasets]
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: corrupt HDF5 file ({first_line(e)})") from None
    return tensors


def _keras3_paths(model: dict[str, Any], path: str, at: str = "") -> Iterator[tuple[str, str]]:
    """(layer name, HDF5 group path) of every non-model layer, as Keras 3 names the groups."""
    inner = model.get("config") or {}
    entries = inner.get("layers", []) if isinstance(inner, dict) else []
    sequential = model.get("class_name") == "Sequential"
    used: dict[str, int] = {}
    for entry in entries:
        class_name, config = entry.get("class_name"), entry.get("config") or {}
        if sequential and class_name == "InputLayer":
            continue  # a Sequential model's layers do not include its input
        key = snake_case(class_name)
        used[key] = used.get(key, -1) + 1
        group = f"{at}layers/{key}" + (f"_{used[key]}" if used[key] else "")
        name = entry.get("name", config.get("name"))
        if class_name in ("Functional", "Sequential", "Model"):
            yield from _keras3_paths(entry, path, f"{group}/")
        else:
            yield name, group


def _base(key: tuple[str, ...]) -> str:
    match = re.fullmatch(r"(.*?)(?:_\d+)?", key[-1])
    return match.group(1) if match else key[-1]


def _suffix(key: tuple[str, ...]) -> int:
    match = re.fullmatch(r".*?_(\d+)", key[-1])
    return int(match.group(1)) if match else 0


#: A chunked dataset may decompress to more than it stores, but weights barely compress: one
#: declaring 100x its stored bytes (and more than 64 MiB) is a shape bomb, not a checkpoint.
_BOMB_RATIO = 100
_BOMB_FLOOR = 64 << 20


def _tensor(ds: h5py.Dataset, path: str, maps: Maps) -> Tensor:
    """A lazy tensor over a dataset: its bytes mapped directly when they lie plainly in the file.

    Anything else (chunked, compressed, unallocated) is read through h5py, which decodes it.
    """
    where = f"{path}:{ds.name}"
    offset = ds.id.get_offset()
    plain = ds.chunks is None and ds.compression is None and offset is not None
    if plain:
        offset += maps.base
    if _decode(ds.attrs.get("dtype", "")) == "bfloat16" and ds.dtype.itemsize == 2:
        # Keras 3 stores bfloat16 as opaque 2-byte values tagged with a `dtype` attribute.
        bits = FileRegion(maps.path, offset, tuple(ds.shape), np.dtype("<u2")) if plain else ds
        return Tensor.wrap(BFloat16Source(bits), where)
    if plain and ds.dtype.kind == "f":
        return Tensor.wrap(FileRegion(maps.path, offset, tuple(ds.shape), ds.dtype), where)
    stored = ds.id.get_storage_size()
    if ds.nbytes and (stored == 0 or ds.nbytes > max(_BOMB_FLOOR, _BOMB_RATIO * stored)):
        raise FormatError(
            f"{where}: declares {ds.nbytes} bytes of data but stores {stored}; refused before "
            "reading (a shape that does not match its data)"
        )
    return Tensor.wrap(ds, where)


def _has_layer_names(group: h5py.Group) -> bool:
    return "layer_names" in group.attrs or "layer_names0" in group.attrs


def _string_list(obj: h5py.HLObject, attr: str, path: str) -> list[str]:
    """A list-of-strings attribute, joining Keras 2's `attr0, attr1, ...` chunks (>64 KB)."""
    if attr in obj.attrs:
        values = [obj.attrs[attr]]
    else:
        values, i = [], 0
        while f"{attr}{i}" in obj.attrs:
            values.append(obj.attrs[f"{attr}{i}"])
            i += 1
    out: list[str] = []
    for value in values:
        arr = np.asarray(value)
        if arr.size and arr.dtype.kind not in "SUO":
            raise FormatError(f"{path}:{obj.name} attribute {attr} is not a list of names")
        out.extend(_decode(v) for v in arr.reshape(-1))
    return out


def _decode(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes | np.bytes_) else str(value)


class _Missing(FormatError):
    """A path that is not in the file (collected, so all of them are reported at once)."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def _expected_shape(name: str, found: dict[str, h5py.Dataset], names: list[str]) -> str:
    """ " (expected (C,))" for a missing bias whose kernel is present; else nothing."""
    kernels = [d for w, d in found.items() if w != name and len(d.shape) > 1]
    if kernels and names.index(name) > 0:
        return f" (expected ({kernels[0].shape[-1]},))"
    return ""


def _child(group: h5py.Group, name: str, path: str) -> Any:
    """`group[name]` walked one part at a time, refusing anything but hard links."""
    obj: Any = group
    for part in [p for p in name.split("/") if p]:
        link = obj.get(part, getlink=True)
        if link is None:
            where = f"{obj.name.rstrip('/')}/{part}"
            raise _Missing(f"{path}: {where} is missing", where)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise FormatError(f"{path}: {obj.name.rstrip('/')}/{part} is {kind}; refused")
        obj = obj[part]
    return obj


def _group(group: h5py.Group, name: str, path: str) -> h5py.Group:
    obj = _child(group, name, path)
    if not isinstance(obj, h5py.Group):
        raise FormatError(f"{path}: {obj.name} is not a group")
    return obj


def _dataset(group: h5py.Group, name: str, path: str) -> h5py.Dataset:
    ds = _child(group, name, path)
    if not isinstance(ds, h5py.Dataset):
        raise FormatError(f"{path}: {ds.name} is not a dataset")
    if ds.external or ds.is_virtual:
        raise FormatError(f"{path}: {ds.name} stores its data outside this file; refused")
    return ds


#: Seconds the HDF5 library may take to walk a file's structure in the preflight child. A
#: real checkpoint needs milliseconds; some corrupt files send the C library into an endless
#: loop (found by fuzzing; a bare `h5py` walk hangs the same way).
PARSE_TIMEOUT = 5.0


def open_file(path: str, fileobj: Callable[[], BinaryIO] | None = None) -> h5py.File:
    """Open read-only, after a preflight that proves the HDF5 library can walk the file.

    The preflight runs the whole structure walk in a forked child with a time limit, so a file
    that hangs or crashes the C library costs a pipeline one clear error, not a stuck job.

    Args:
        fileobj: opens the HDF5 bytes as a file object, when they are not a file of their own
            (the weights inside a `.keras` archive).
    Raises:
        FormatError: unreadable, or the library hung or crashed on the file's structure.
    """
    _preflight(path, fileobj)
    try:
        return h5py.File(fileobj() if fileobj else os.fspath(path), "r")
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: not a readable HDF5 file ({first_line(e)})") from None
