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
  The archive is written by `zip_io.ZipWriter`: member dates 1980-01-01 (Keras' own for its
  JSON members), attributes 0o600 as Python's zipfile gives `open(name, "w")`, no extra fields,
  no data descriptors.
- metadata.json: `keras_version` and `date_saved` (`_serialize_model_as_json`). The loader never
  reads it; `KerasFileEditor` shows both. We store `KERAS_VERSION` (the version this layout was
  checked against), a fixed `DATE_SAVED`, and our metadata (`fcn_metadata`) as a flat str -> str
  object under `VGGFCN_KEY`, which Keras ignores.
- config.json: `serialize_keras_object(model)` of a Functional model (`model_config`). Ours
  leaves out what Keras would fill in with its defaults anyway and what changes between Keras
  versions — initializers, regularizers, constraints, InputLayer's `sparse`/`ragged`/`optional`
  — and Keras' run-time `shared_object_id`s; dtypes are the string "float32".
- model.weights.h5 (`H5IOStore`, `_save_state`): a root `vars` group named after the model, then
  per layer of `model.layers`, in order, `layers/<snake_case class name>[_N]/vars` with a `name`
  attribute (the layer's name) and the variables as datasets `0` (kernel, HWIO: Keras' own
  layout) and `1` (bias); N counts that class's earlier layers (`_save_container_state`).

The HDF5 file is laid out by h5py in memory, data-less (`hdf5_fileobj`): each dataset is allocated
at creation and never filled, so its space is a known range that h5py does not write. The
member is then written front to back, h5py's metadata between the weights streamed into their
ranges, the CRC-32 computed on the way and patched into the local header at the end: one pass
over the weights, nothing read back from `f`. Datasets are contiguous, uncompressed, without
timestamps (HDF5's groups in the default format have none): the same network and metadata give
the same bytes. Layer names: `layer_names`. Which layer each op becomes, with which config, is
`model_config` (and `_config`) and nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

import h5py
from h5py import h5d, h5p

from ..arch import conv_names, name_of
from ..errors import FormatError, OutputError
from ..fcn import FCN, ConvLayer, Storage, check_shapes, head_name
from ..graph import Activation, Conv, MaxPool, SourceGraph
from ..precision import F32
from ..tensor import Tensor
from . import fcn_metadata
from .blocks import checked_blocks
from .hdf5_fileobj import HDF5Image
from .keras_config import snake_case
from .names import unique_names
from .outputs import Job
from .zip_io import ZipWriter

CONFIG, WEIGHTS, METADATA = "config.json", "model.weights.h5", "metadata.json"
#: Where metadata.json keeps our metadata (`fcn_metadata.metadata`).
VGGFCN_KEY = "vggfcn"
KERAS_VERSION = "3.15.1"
DATE_SAVED = "1980-01-01@00:00:00"
INPUT = "input"
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
    bases = [
        re.sub(r"[^A-Za-z0-9_]", "_", layer.source_name).lstrip("_") or layer.name
        for layer in fcn.layers
    ]
    return unique_names(bases, {INPUT, *(_pool_name(b) for b in range(1, len(fcn.plan) + 1))})


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


def write(f: BinaryIO, job: Job) -> None:
    """`outputs.Writer.write`: the network as a `.keras` archive, float32 HWIO, one weight block
    at a time (the member is checksummed in order, so blocks come in order); metadata.json last,
    once `metadata.final()` is known.

    Raises:
        OutputError: the weights would not fit a zip without zip64 (4 GiB).
    """
    fcn = job.fcn
    names = layer_names(fcn)
    archive = ZipWriter(f)
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
        for block in checked_blocks(tensor, job.allow_nonfinite):
            archive.stream(block.data)
            job.progress(block.nbytes)
        at = offset + tensor.size * F32.itemsize
    archive.stream(image.read_at(at, image.size))
    archive.end()
    meta = {
        "keras_version": KERAS_VERSION,
        "date_saved": DATE_SAVED,
        VGGFCN_KEY: job.metadata.final(),
    }
    archive.add(METADATA, json.dumps(meta, sort_keys=True).encode())
    archive.finish()


def _hdf5(fcn: FCN, names: list[str]) -> tuple[HDF5Image, list[tuple[int, Tensor]]]:
    """model.weights.h5 without its weights: the file's image, and (offset, tensor) of each
    dataset's range in it, in file order."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5d.ALLOC_TIME_EARLY)  # the range is known before any data is
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)  # and h5py writes nothing into it
    image = HDF5Image()
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
    names = conv_names(tuple(plan)) if name_of(tuple(plan)) else []
    if not names or count or not head:
        raise FormatError(f"{path}: not the VGG trunk and convolutional head vggfcn writes")
    fcn_metadata.check_version(path, meta)
    fcn = FCN(
        tuple(plan),
        tuple(replace(layer, name=n) for layer, n in zip(trunk, names, strict=True)),
        tuple(head),
        fcn_metadata.info(path, meta, Storage("keras", "HWIO", "source", "float32")),
    )
    check_shapes(fcn)
    return fcn
