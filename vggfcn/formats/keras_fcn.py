"""Our Keras output: the FCN as a Keras 3 `.keras` model, written without Keras.

`keras.saving.load_model(path)` gives a Functional model that takes (N, H, W, 3) images of any
size and returns the logits map (N, h, w, classes). Keras is a test client here, never a
run-time dependency: the archive is simple enough to write ourselves, streaming the weights.

The layout, as Keras 3.15 writes it (`keras/src/saving/saving_lib.py`) and what its loader needs:

- A zip of three members, all stored uncompressed (`_save_model_to_fileobj`); a fourth member
  would make the loader look for assets (`len(all_filenames) > 3`). Keras writes
  metadata.json, config.json, model.weights.h5; the loader finds them by name, so we write
  config.json, model.weights.h5 and, last, metadata.json, which carries `metadata()`: that is
  known only once the weights are out (the source's digest is computed alongside).
  Member dates are 1980-01-01 (Keras' own for its JSON members), attributes 0o600 as Python's
  zipfile gives `open(name, "w")`, no extra fields, no data descriptors.
- metadata.json: `keras_version` and `date_saved` (`_serialize_model_as_json`). The loader never
  reads it; `KerasFileEditor` shows both. We store `KERAS_VERSION` (the version this layout was
  checked against), a fixed `DATE_SAVED`, and our metadata as a flat str -> str object under
  `VGGFCN_KEY`, which Keras ignores.
- config.json: `serialize_keras_object(model)` of a Functional model (`model_config`). Ours
  leaves out what Keras would fill in with its defaults anyway and what changes between Keras
  versions — initializers, regularizers, constraints, InputLayer's `sparse`/`ragged`/`optional`
  — and Keras' run-time `shared_object_id`s; dtypes are the string "float32".
- model.weights.h5 (`H5IOStore`, `_save_state`): a root `vars` group named after the model, then
  per layer of `model.layers`, in order, `layers/<snake_case class name>[_N]/vars` with a `name`
  attribute (the layer's name) and the variables as datasets `0` (kernel, HWIO: Keras' own
  layout) and `1` (bias); N counts that class's earlier layers (`_save_container_state`).

The HDF5 file is laid out by h5py in memory, data-less: each dataset is allocated at creation
and never filled, so its space is a known range that h5py does not write (`_Image`). The
member is then written front to back, h5py's metadata between the weights streamed into their
ranges, the CRC-32 computed on the way and patched into the local header at the end: one pass
over the weights, nothing read back from `f`. Datasets are contiguous, uncompressed, without
timestamps (HDF5's groups in the default format have none): the same network and metadata give
the same bytes. Layer names: `layer_names`.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

import h5py
from h5py import h5d, h5p

from ..arch import PLANS, conv_names
from ..errors import FormatError, OutputError
from ..fcn import FCN, ConvLayer, head_name
from ..graph import Activation, Conv, MaxPool, SourceGraph
from ..tensor import F32, Tensor
from . import fcn_file
from .blocks import checked_blocks
from .keras_model import snake_case

CONFIG, WEIGHTS, METADATA = "config.json", "model.weights.h5", "metadata.json"
#: Where metadata.json keeps our metadata (`fcn_file.metadata` plus `STORAGE`).
VGGFCN_KEY = "vggfcn"
KERAS_VERSION = "3.15.1"
DATE_SAVED = "1980-01-01@00:00:00"
INPUT = "input"
#: Metadata the writer sets whatever `metadata()` says: the facts of this file's storage.
STORAGE = {
    "format": fcn_file.FORMAT,
    "format_version": fcn_file.FORMAT_VERSION,
    "layout": "HWIO",
    "names": "source",
    "dtype": "float32",
}
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # zip local file header (as zipfile.structFileHeader)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory entry
_END = struct.Struct("<4s4H2LH")  # end of central directory
_CRC_AT = 14  # offset of CRC-32, compressed and uncompressed size in a local header
_VERSION, _UNIX = 20, 3  # zip 2.0, made on Unix: what zipfile writes for stored members
_DATE = 1 << 5 | 1  # 1980-01-01 in MS-DOS form (time 00:00 is 0)
_ATTRIBUTES = 0o600 << 16
_ZIP32_LIMIT = 0xFFFFFFFF - (1 << 20)  # member sizes and offsets, leaving room for the JSON


def _pool_name(block: int) -> str:
    """Name of the max-pool closing `block` (1-based), as in Keras' own VGG16."""
    return f"block{block}_pool"


def layer_names(fcn: FCN) -> list[str]:
    """Each convolution's Keras layer name: its source's name (`block1_conv1`, `fc1`,
    `features.0`) with anything but ASCII letters, digits and `_` made `_` and leading `_`s
    dropped (the layer's own name if nothing is left), numbered `_2`, `_3`... where that repeats
    a name in use (`input`, the pools, earlier layers).

    Why: Keras refuses `/` in a name, its torch backend `.` (torch parameter names), TensorFlow
    name scopes a leading `_`; and a Functional model's names must be unique.
    """
    used = {INPUT, *(_pool_name(b) for b in range(1, len(fcn.plan) + 1))}
    names = []
    for layer in fcn.layers:
        base = re.sub(r"[^A-Za-z0-9_]", "_", layer.source_name).lstrip("_") or layer.name
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        names.append(name)
    return names


class _Layer(NamedTuple):
    """One of `model.layers`: its class, name, and convolution (None for input and pools)."""

    class_name: str
    name: str
    conv: ConvLayer | None = None
    padding: str = "valid"


def _layers(fcn: FCN, names: list[str]) -> list[_Layer]:
    """The model's layers in order: input, each block's convs and pool, the head."""
    layers = [_Layer("InputLayer", INPUT)]
    convs = iter(zip(fcn.layers, names, strict=True))
    for block, count in enumerate(fcn.plan, 1):
        layers += [_Layer("Conv2D", name, conv, "same") for conv, name in islice(convs, count)]
        layers.append(_Layer("MaxPooling2D", _pool_name(block)))
    layers += [_Layer("Conv2D", name, conv) for conv, name in convs]
    return layers


def model_config(fcn: FCN, names: list[str]) -> dict[str, Any]:
    """config.json: the Functional model input -> trunk (conv+ReLU..., pool per block) -> head
    ("valid" convs, ReLU where the layer has one) -> logits, its convs called `names`."""
    channels = fcn.trunk[0].kernel.shape[2]
    entries: list[dict[str, Any]] = []
    for layer in _layers(fcn, names):
        entry: dict[str, Any] = {
            "module": "keras.layers",
            "class_name": layer.class_name,
            "config": _config(layer, channels),
            "registered_name": None,
            "name": layer.name,
            "inbound_nodes": [],
        }
        if entries:  # called on the previous layer's output
            history = [entries[-1]["name"], 0, 0]
            spec = {"shape": _shape(channels), "dtype": "float32", "keras_history": history}
            tensor = {"class_name": "__keras_tensor__", "config": spec}
            entry["inbound_nodes"] = [{"args": [tensor], "kwargs": {}}]
        if layer.conv is not None:
            entry["build_config"] = {"input_shape": _shape(channels)}
            channels = layer.conv.out_channels
        entries.append(entry)
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": _model_name(fcn),
            "trainable": True,
            "layers": entries,
            "input_layers": [INPUT, 0, 0],
            "output_layers": [entries[-1]["name"], 0, 0],
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
        "compile_config": {},
    }


def _config(layer: _Layer, channels: int) -> dict[str, Any]:
    """A layer's own config (its constructor's arguments). dtype and data_format are explicit:
    their defaults come from the loading user's Keras settings."""
    if layer.class_name == "InputLayer":
        return {"batch_shape": _shape(channels), "dtype": "float32", "name": layer.name}
    config = {
        "name": layer.name,
        "trainable": True,
        "dtype": "float32",
        "data_format": "channels_last",
    }
    if layer.conv is None:
        return config | {"pool_size": [2, 2], "padding": "valid", "strides": [2, 2]}
    return config | {
        "filters": layer.conv.out_channels,
        "kernel_size": list(layer.conv.kernel.shape[:2]),
        "strides": [1, 1],
        "padding": layer.padding,
        "dilation_rate": [1, 1],
        "groups": 1,
        "activation": "relu" if layer.conv.relu else "linear",
        "use_bias": True,
    }


def _model_name(fcn: FCN) -> str:
    """The model's name: `vgg16_fcn`."""
    return f"{fcn.name}_fcn"


def _shape(channels: int) -> list[int | None]:
    return [None, None, None, channels]


def write(
    f: BinaryIO,
    fcn: FCN,
    metadata: Callable[[], Mapping[str, str]],
    progress: Callable[[int], object] = lambda _n: None,
    allow_nonfinite: bool = False,
) -> None:
    """Stream `fcn` into `f` as a `.keras` archive, float32, holding one weight block at a time.

    Args:
        f: a seekable binary file open for writing, positioned at 0 (it is only written).
        metadata: called once, after the weights are written: the flat str -> str map stored
            under `VGGFCN_KEY` in metadata.json, with `STORAGE` over it.
        progress: called with the number of weight bytes after each block.
        allow_nonfinite: write NaN/Inf values instead of refusing them.

    Raises:
        FormatError: a tensor holds NaN or Inf (unless allowed), naming it and the count.
        OutputError: the weights would not fit a zip without zip64 (4 GiB).
    """
    names = layer_names(fcn)
    archive = _Zip(f)
    archive.add(CONFIG, json.dumps(model_config(fcn, names), sort_keys=True).encode())
    image, regions = _hdf5(fcn, names)
    if f.tell() + image.size > _ZIP32_LIMIT:
        raise OutputError(
            f"{fcn.path}: {image.size} bytes of weights do not fit a .keras archive "
            "without zip64 (4 GiB)"
        )
    archive.begin(WEIGHTS)
    at = 0
    for offset, tensor in regions:
        archive.stream(image.read_at(at, offset))
        for block in checked_blocks(tensor, allow_nonfinite):
            archive.stream(block.data)
            progress(block.nbytes)
        at = offset + tensor.size * F32.itemsize
    archive.stream(image.read_at(at, image.size))
    archive.end()
    ours = {**metadata(), **STORAGE}
    meta = {"keras_version": KERAS_VERSION, "date_saved": DATE_SAVED, VGGFCN_KEY: ours}
    archive.add(METADATA, json.dumps(meta, sort_keys=True).encode())
    archive.finish()


def _hdf5(fcn: FCN, names: list[str]) -> tuple[_Image, list[tuple[int, Tensor]]]:
    """model.weights.h5 without its weights: the file's image, and (offset, tensor) of each
    dataset's range in it, in file order."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)  # the range is known before any data is
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)  # and h5py writes nothing into it
    image = _Image()
    regions = []
    used: dict[str, int] = {}
    with h5py.File(image, "w") as h5:
        h5.create_group("vars").attrs["name"] = _model_name(fcn)
        top = h5.create_group("layers")
        for layer in _layers(fcn, names):
            key = snake_case(layer.class_name)
            used[key] = used.get(key, -1) + 1
            group = top.create_group(f"{key}_{used[key]}" if used[key] else key)
            variables = group.create_group("vars")
            variables.attrs["name"] = layer.name
            tensors = (layer.conv.kernel, layer.conv.bias) if layer.conv else ()
            for i, tensor in enumerate(tensors):
                ds = variables.create_dataset(
                    str(i), tensor.shape, F32, dcpl=dcpl, track_times=False
                )
                regions.append((int(ds.id.get_offset()), tensor))
    return image, sorted(regions, key=lambda r: r[0])


class _Image(io.RawIOBase):
    """The HDF5 file h5py writes, kept in memory as the writes it made: its metadata, some
    kilobytes. The datasets' ranges are never written (allocated early, never filled), so they
    read as zeros here and cost nothing until `write` streams the weights into them."""

    def __init__(self) -> None:
        super().__init__()
        self._writes: list[tuple[int, bytes]] = []
        self._pos = self.size = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = (0, self._pos, self.size)[whence] + offset
        return self._pos

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._writes.append((self._pos, chunk))
        self._pos += len(chunk)
        self.size = max(self.size, self._pos)
        return len(chunk)

    def readinto(self, buffer: Any) -> int:
        """HDF5 may read back metadata it wrote (h5py's file-object contract asks for it)."""
        data = self.read_at(self._pos, min(self._pos + len(buffer), self.size))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        self.size = self._pos if size is None else size
        self._writes = [(at, data[: self.size - at]) for at, data in self._writes if at < self.size]
        return self.size

    def read_at(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file: the latest write to each byte, else zero."""
        out = bytearray(max(0, end - start))
        for at, data in self._writes:
            lo, hi = max(start, at), min(end, at + len(data))
            if lo < hi:
                out[lo - start : hi - start] = data[lo - at : hi - at]
        return bytes(out)


class _Zip:
    """A zip archive written front to back: stored members, fixed dates, one member streamed
    at a time (its local header patched when it ends: the CRC is known only then)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._members: list[tuple[bytes, int, int, int]] = []  # name, CRC-32, size, offset
        self._name, self._offset, self._crc, self._size = b"", 0, 0, 0

    def add(self, name: str, data: bytes) -> None:
        self.begin(name)
        self.stream(data)
        self.end()

    def begin(self, name: str) -> None:
        self._name, self._offset, self._crc, self._size = name.encode(), self._f.tell(), 0, 0
        self._f.write(_local(self._name, 0, 0))

    def stream(self, data: Any) -> None:
        self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._size += memoryview(data).nbytes

    def end(self) -> None:
        here = self._f.tell()
        self._f.seek(self._offset + _CRC_AT)
        self._f.write(struct.pack("<3L", self._crc, self._size, self._size))
        self._f.seek(here)
        self._members.append((self._name, self._crc, self._size, self._offset))

    def finish(self) -> None:
        """The central directory and its end record."""
        start = self._f.tell()
        for name, crc, size, offset in self._members:
            self._f.write(_central(name, crc, size, offset))
        count, length = len(self._members), self._f.tell() - start
        self._f.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, length, start, 0))


def _local(name: bytes, crc: int, size: int) -> bytes:
    """A stored member's local header: zip 2.0, no flags, no extra field, dated 1980-01-01."""
    return (
        _LOCAL.pack(b"PK\x03\x04", _VERSION, 0, 0, 0, 0, _DATE, crc, size, size, len(name), 0)
        + name
    )


def _central(name: bytes, crc: int, size: int, offset: int) -> bytes:
    """Its central directory entry, made on Unix with mode 0o600, as zipfile writes it."""
    fields = (_VERSION, _UNIX, _VERSION, 0, 0, 0, 0, _DATE, crc, size, size, len(name), 0, 0, 0, 0)
    return _CENTRAL.pack(b"PK\x01\x02", *fields, _ATTRIBUTES, offset) + name


def read_back(graph: SourceGraph, meta: Mapping[str, str], path: str) -> FCN:
    """Our own `.keras` read back as the network it holds: the Conv2D/MaxPooling2D chain the
    Keras reader found (HWIO kernels, as written), with the metadata we stored beside it.

    Raises:
        FormatError: a layer or order `write` never makes.
    """
    trunk: list[ConvLayer] = []
    head: list[ConvLayer] = []
    plan: list[int] = []
    count = 0
    for op in graph.ops:
        if isinstance(op, Conv) and op.layout == "HWIO" and op.bias is not None:
            layers = trunk if op.padding == "same" and not head else head
            name = head_name(len(head)) if layers is head else ""
            layers.append(ConvLayer(name, op.kernel, op.bias, False, op.name))
            count += layers is trunk
        elif isinstance(op, Activation) and (trunk or head):
            last = (head or trunk)[-1]
            (head or trunk)[-1] = replace(last, relu=op.kind == "relu")
        elif isinstance(op, MaxPool) and not head and count:
            plan.append(count)
            count = 0
        else:
            raise FormatError(f"{path}: {op.name} ({type(op).__name__}) is not in a vggfcn .keras")
    names = conv_names(tuple(plan)) if tuple(plan) in PLANS.values() else []
    if not names or count or not head:
        raise FormatError(f"{path}: not the VGG trunk and convolutional head vggfcn writes")
    stored = f"vggfcn-keras {meta.get('dtype', 'float32')} (Keras {KERAS_VERSION} layout)"
    fcn = FCN(
        tuple(plan),
        tuple(replace(layer, name=n) for layer, n in zip(trunk, names, strict=True)),
        tuple(head),
        fcn_file.info_from_metadata(path, meta, stored),
    )
    fcn_file.check_shapes(fcn)
    return fcn
