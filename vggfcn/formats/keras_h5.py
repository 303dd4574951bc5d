"""Reader for Keras HDF5 weight files, all four generations (see shared/FORMATS.md).

Layers are placed by the file's own attributes (`layer_names`, `weight_names`, the `name` of
Keras 3 `vars` groups), never by h5py's alphabetical listing, where conv2d_10 precedes conv2d_2.
Every path is walked one part at a time through hard links only: a checkpoint that points at
another file is refused without that file being opened.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
from typing import Any

import h5py
import numpy as np

from ..errors import ArchitectureError, FormatError
from ..precision import BFloat16Source
from ..weights import RawLayer, SourceInfo, Tensor, VGGWeights, assemble
from .region import FileRegion

#: What h5py raises on a corrupt file, depending on where the damage is: all become ours.
_H5PY_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


def read(f: h5py.File, path: str) -> VGGWeights:
    """Canonical weights of the VGG classifier in an open Keras HDF5 file (tensors stay lazy).

    Raises:
        FormatError: the file is HDF5 but not a Keras weights layout we know, is unsafe, or is
            corrupt.
        ArchitectureError: the layers do not form a VGG classifier.
    """
    try:
        return _read(f, path)
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: corrupt HDF5 file ({_first_line(e)})") from None


def _preflight(path: str) -> None:
    child = multiprocessing.get_context("fork").Process(target=_walk, args=(path,), daemon=True)
    child.start()
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


def _walk(path: str) -> None:
    """The preflight child: walk everything `read` walks. Errors are the parent's to report;
    only a hang or a crash matters here."""
    with contextlib.suppress(Exception), h5py.File(path, "r") as f:
        _read(f, path)
    os._exit(0)  # skip interpreter teardown: nothing of the parent's to flush or close


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _read(f: h5py.File, path: str) -> VGGWeights:
    if _has_layer_names(f):
        root, model_file = f, False
    elif "model_weights" in f and _has_layer_names(_group(f, "model_weights", path)):
        root, model_file = _group(f, "model_weights", path), True
    elif "layers" in f:
        return _read_keras3_weights(f, path)
    else:
        raise FormatError(
            f"{path}: HDF5 file without Keras weights (no 'layer_names' attribute, no "
            "'model_weights' or 'layers' group)"
        )
    layers: list[tuple[str, list[h5py.Dataset]]] = []
    generation = "keras1"
    missing: list[str] = []  # every absent dataset, reported together
    for name in _string_list(root, "layer_names", path):
        group = _group(root, name, path)
        names = _string_list(group, "weight_names", path) if "weight_names" in group.attrs else []
        if not names:
            continue
        if "/" in names[0]:
            generation = "keras2" if names[0].endswith(":0") else "keras3-h5"
        found = {}
        for w in names:
            try:
                found[w] = _dataset(group, w, path)
            except _Missing as e:
                missing.append(e.where + _expected_shape(w, found, names))
        layers.append((name, list(found.values())))
    if missing:
        raise ArchitectureError(f"{path}: missing {', '.join(missing)}")
    if model_file and generation == "keras2":
        generation = "keras2-model"
    softmax = _softmax_from_config(f, layers[-1][0] if layers else "")
    return _assemble(layers, SourceInfo(path, "keras-h5", generation, softmax, "HWC"), path)


def _read_keras3_weights(f: h5py.File, path: str) -> VGGWeights:
    """Keras 3 `.weights.h5`: `layers/<class-based name>/vars/{0,1}`, ordered by the suffix."""
    top = _group(f, "layers", path)
    found: list[tuple[tuple[str, int], str, list[h5py.Dataset]]] = []
    for key in top:
        vars_group = _group(_group(top, key, path), "vars", path)
        count = len(vars_group)
        if count == 0:
            continue
        match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
        order = (match.group(1), int(match.group(2) or 0)) if match else (key, 0)
        name = _decode(vars_group.attrs.get("name", key))
        found.append((order, name, [_dataset(vars_group, str(i), path) for i in range(count)]))
    found.sort(key=lambda item: item[0])
    layers = [(name, datasets) for _, name, datasets in found]
    return _assemble(layers, SourceInfo(path, "keras-h5", "keras3-weights", None, "HWC"), path)


def _assemble(
    layers: list[tuple[str, list[h5py.Dataset]]], source: SourceInfo, path: str
) -> VGGWeights:
    """Split weighted layers into trunk convs and head denses by kernel rank, keeping file order."""
    trunk: list[RawLayer] = []
    head: list[RawLayer] = []
    for name, datasets in layers:
        if len(datasets) != 2:
            raise FormatError(
                f"{path}: layer {name} has {len(datasets)} weights, expected a kernel and a bias"
            )
        kernel, bias = sorted(datasets, key=lambda d: -len(d.shape))
        raw = RawLayer(name, _tensor(kernel, path), _tensor(bias, path))
        if len(kernel.shape) == 4:
            if head:
                raise FormatError(f"{path}: convolution {name} comes after a dense layer")
            trunk.append(raw)
        elif len(kernel.shape) == 2:
            head.append(raw)
        else:
            raise FormatError(
                f"{path}: layer {name} has a kernel of shape {kernel.shape}, expected a conv "
                "(4-D) or dense (2-D) kernel"
            )
    return assemble(trunk, head, source)


#: A chunked dataset may decompress to more than it stores, but weights barely compress: one
#: declaring 100x its stored bytes (and more than 64 MiB) is a shape bomb, not a checkpoint.
_BOMB_RATIO = 100
_BOMB_FLOOR = 64 << 20


def _tensor(ds: h5py.Dataset, path: str) -> Tensor:
    """A lazy tensor over a dataset: its bytes mapped directly when they lie plainly in the file.

    Anything else (chunked, compressed, unallocated) is read through h5py, which decodes it.
    """
    where = f"{path}:{ds.name}"
    offset = ds.id.get_offset()
    plain = ds.chunks is None and ds.compression is None and offset is not None
    if _decode(ds.attrs.get("dtype", "")) == "bfloat16" and ds.dtype.itemsize == 2:
        # Keras 3 stores bfloat16 as opaque 2-byte values tagged with a `dtype` attribute.
        bits = FileRegion(path, offset, tuple(ds.shape), np.dtype("<u2")) if plain else ds
        return Tensor.wrap(BFloat16Source(bits), where)
    if plain and ds.dtype.kind == "f":
        return Tensor.wrap(FileRegion(path, offset, tuple(ds.shape), ds.dtype), where)
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


def _softmax_from_config(f: h5py.File, last_layer: str) -> bool | None:
    """Whether the model config says the last layer ends in a softmax; None when unsaid."""
    raw = f.attrs.get("model_config")
    if raw is None or not last_layer:
        return None
    try:
        config = json.loads(_decode(raw))
    except ValueError:
        return None
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if (
                isinstance(inner, dict)
                and inner.get("name") == last_layer
                and "activation" in inner
            ):
                return bool(inner["activation"] == "softmax")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


#: Seconds the HDF5 library may take to walk a file's structure in the preflight child. A
#: real checkpoint needs milliseconds; some corrupt files send the C library into an endless
#: loop (found by fuzzing; a bare `h5py` walk hangs the same way).
PARSE_TIMEOUT = 5.0


def open_file(path: str) -> h5py.File:
    """Open read-only, after a preflight that proves the HDF5 library can walk the file.

    The preflight runs the whole structure walk in a forked child with a time limit, so a file
    that hangs or crashes the C library costs a pipeline one clear error, not a stuck job.

    Raises:
        FormatError: unreadable, or the library hung or crashed on the file's structure.
    """
    _preflight(path)
    try:
        return h5py.File(os.fspath(path), "r")
    except _H5PY_ERRORS as e:
        raise FormatError(f"{path}: not a readable HDF5 file ({_first_line(e)})") from None
