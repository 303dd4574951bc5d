"""Our Keras output: the FCN as a Keras 3 `.keras` model, written without Keras.

`keras.saving.load_model(path)` gives a Functional model that takes (N, H, W, 3) images of any
size and returns the logits map (N, h, w, classes). Keras is a test client here, never a
run-time dependency: the archive is simple enough to write ourselves, streaming the weights.

At output stride 16 and 8 (`atrous`) the layers carry the ops' attributes: a Conv2D its
`dilation_rate`, a pool without its stride is `MaxPooling2D(2, strides=1)`. A dilated 2x2 pool
is no Keras layer, so it is made of standard ones (`safe_mode` loads them): four `Cropping2D`
views of its input, shifted by 0 and d rows and columns, and their `Maximum` — at (i, j) the
maximum of v[i, j], v[i + d, j], v[i, j + d], v[i + d, j + d]. The model is then a graph, no
longer a chain; at stride 32 it is the chain, the same bytes as before the attributes existed.

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
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from typing import Any, BinaryIO, NamedTuple

import h5py
from h5py import h5d, h5p

from ..arch import conv_names, name_of
from ..errors import FormatError, OutputError
from ..fcn import FCN, ConvLayer, Pool, Storage, check_shapes, head_name
from ..precision import F32
from ..tensor import Tensor
from . import fcn_metadata
from .blocks import checked_blocks
from .hdf5_fileobj import HDF5Image
from .job import Job
from .keras_config import show, snake_case
from .names import unique_names
from .zip_io import ZipWriter

CONFIG, WEIGHTS, METADATA = "config.json", "model.weights.h5", "metadata.json"
#: Where metadata.json keeps our metadata (`fcn_metadata.metadata`).
VGGFCN_KEY = "vggfcn"
KERAS_VERSION = "3.15.1"
DATE_SAVED = "1980-01-01@00:00:00"
INPUT = "input"
_ZIP32_LIMIT = 0xFFFFFFFF - (1 << 20)  # member sizes and offsets, leaving room for the JSON
#: The classes whose layers Keras saves with a `build_config` (MaxPooling2D has none).
_BUILT = ("Conv2D", "Cropping2D", "Maximum")


def _pool_name(block: int) -> str:
    """Name of the max-pool closing `block` (1-based), as in Keras' own VGG16."""
    return f"block{block}_pool"


def _view_name(block: int, rows: int, columns: int) -> str:
    """Name of the `Cropping2D` view of a dilated pool's input shifted by (rows, columns)."""
    return f"{_pool_name(block)}_{rows}_{columns}"


def _shifts(pool: Pool) -> list[tuple[int, int]]:
    """The (rows, columns) each tap of a dilated 2x2 pool is shifted by, in the views' order."""
    return [(a, b) for a in (0, pool.dilation) for b in (0, pool.dilation)]


def layer_names(fcn: FCN) -> list[str]:
    """Each convolution's Keras layer name: its source's name (`block1_conv1`, `fc1`,
    `features.0`) with anything but ASCII letters, digits and `_` made `_` and leading `_`s
    dropped (the layer's own name if nothing is left), numbered `_2`, `_3`... where that repeats
    a name in use (`input`, the pools and a dilated pool's views, earlier layers).

    Why: Keras refuses `/` in a name, its torch backend `.` (torch parameter names), TensorFlow
    name scopes a leading `_`; and a Functional model's names must be unique.
    """
    bases = [
        re.sub(r"[^A-Za-z0-9_]", "_", layer.source_name).lstrip("_") or layer.name
        for layer in fcn.layers
    ]
    taken = {INPUT}
    for block, pool in enumerate(fcn.block_pools, 1):
        taken.add(_pool_name(block))
        if pool.dilation > 1:
            taken |= {_view_name(block, a, b) for a, b in _shifts(pool)}
    return unique_names(bases, taken)


class _Layer(NamedTuple):
    """One of `model.layers`: its class, name, the layers it is called on, and its convolution
    (None for the others, whose own arguments are `arguments`)."""

    class_name: str
    name: str
    inputs: tuple[str, ...]
    conv: ConvLayer | None = None
    padding: str = "valid"
    arguments: Mapping[str, Any] | None = None


def _layers(fcn: FCN, names: list[str]) -> list[_Layer]:
    """The model's layers in order, as Keras lists them: input, each block's convs and pool,
    the head; each called on the layer before it, but a dilated pool's `Maximum` (its views).

    Raises:
        OutputError: a dilated pool with a stride (`atrous` makes none).
    """
    layers = [_Layer("InputLayer", INPUT, ())]
    convs = iter(zip(fcn.layers, names, strict=True))
    for block, (count, pool) in enumerate(zip(fcn.plan, fcn.block_pools, strict=True), 1):
        for conv, name in islice(convs, count):
            layers.append(_Layer("Conv2D", name, (layers[-1].name,), conv, "same"))
        layers += _pool(fcn, block, pool, layers[-1].name)
    for conv, name in convs:
        layers.append(_Layer("Conv2D", name, (layers[-1].name,), conv))
    return layers


def _pool(fcn: FCN, block: int, pool: Pool, previous: str) -> list[_Layer]:
    """The layers of `block`'s pool: a MaxPooling2D, or a dilated pool's views and Maximum."""
    name = _pool_name(block)
    if pool.dilation == 1:
        arguments = {"pool_size": [2, 2], "padding": "valid", "strides": [pool.stride] * 2}
        return [_Layer("MaxPooling2D", name, (previous,), arguments=arguments)]
    if pool.stride != 1:
        raise OutputError(
            f"{fcn.path}: {name} has stride {pool.stride} and dilation {pool.dilation}; a "
            ".keras model holds a dilated pool only without a stride (as `atrous` makes it)"
        )
    d = pool.dilation
    views = [
        _Layer(
            "Cropping2D",
            _view_name(block, a, b),
            (previous,),
            arguments={"cropping": [[a, d - a], [b, d - b]]},
        )
        for a, b in _shifts(pool)
    ]
    return [*views, _Layer("Maximum", name, tuple(view.name for view in views))]


def model_config(fcn: FCN, names: list[str]) -> dict[str, Any]:
    """config.json: the Functional model input -> trunk (conv+ReLU..., pool per block) -> head
    ("valid" convs, ReLU where the layer has one) -> logits, its convs called `names`.

    Raises:
        OutputError: a pool a .keras model cannot hold (`_layers`).
    """
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
        if layer.inputs:
            tensors = [_tensor(name, channels) for name in layer.inputs]
            args = [tensors] if layer.class_name == "Maximum" else tensors  # a merge: one list
            entry["inbound_nodes"] = [{"args": args, "kwargs": {}}]
        if layer.class_name in _BUILT:  # the layers Keras saves built, with their input shape
            shapes = [_shape(channels)] * len(layer.inputs)
            entry["build_config"] = {"input_shape": shapes if len(shapes) > 1 else shapes[0]}
        if layer.conv is not None:
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


def _tensor(layer: str, channels: int) -> dict[str, Any]:
    """The output of `layer` as a config names it where another layer is called on it."""
    spec = {"shape": _shape(channels), "dtype": "float32", "keras_history": [layer, 0, 0]}
    return {"class_name": "__keras_tensor__", "config": spec}


def _config(layer: _Layer, channels: int) -> dict[str, Any]:
    """A layer's own config (its constructor's arguments). dtype and data_format are explicit:
    their defaults come from the loading user's Keras settings (a merge has no data_format)."""
    if layer.class_name == "InputLayer":
        return {"batch_shape": _shape(channels), "dtype": "float32", "name": layer.name}
    config: dict[str, Any] = {"name": layer.name, "trainable": True, "dtype": "float32"}
    if layer.class_name == "Maximum":
        return config
    config["data_format"] = "channels_last"
    if layer.conv is None:
        return config | dict(layer.arguments or {})
    return config | {
        "filters": layer.conv.out_channels,
        "kernel_size": list(layer.conv.kernel.shape[:2]),
        "strides": [1, 1],
        "padding": layer.padding,
        "dilation_rate": [layer.conv.dilation] * 2,
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
    """`job.Writer.write`: the network as a `.keras` archive, float32 HWIO, one weight block
    at a time (the member is checksummed in order, so blocks come in order); metadata.json last,
    once `metadata.final()` is known.

    Raises:
        OutputError: the weights would not fit a zip without zip64 (4 GiB), or a pool that a
            .keras model cannot hold (`_layers`).
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


def read(
    config: Mapping[str, Any],
    weights: Callable[[], Mapping[str, Sequence[Tensor]]],
    meta: Mapping[str, str],
    path: str,
) -> FCN:
    """Our own `.keras` read back as the network it holds, at any output stride: the layers and
    their attributes (dilations, pools) from config.json, the weights from model.weights.h5,
    the rest from the metadata we stored beside them. The config must be the very one
    `model_config` writes for the network read, so nothing in it goes unread.

    Args:
        config: config.json, parsed as data (`keras_config.parse_config`).
        weights: each layer's variables by layer name, placed as Keras places them; asked for
            once the config has the layers `write` makes.
        meta: our metadata, from metadata.json.

    Raises:
        FormatError: a layer, attribute or connection `write` never makes, or weights other
            than each convolution's kernel and bias.
        ArchitectureError: the layers do not form a VGG FCN.
    """
    fcn_metadata.check_version(path, meta)
    plan, convs, pools = _structure(_entries(config, path), path)
    placed = weights()
    extra = sorted(name for name, tensors in placed.items() if tensors and name not in convs)
    if extra:
        raise FormatError(f"{path}: weights for {', '.join(extra)}, which hold none in our .keras")
    names = conv_names(plan)
    layers = []
    for i, (name, (dilation, relu)) in enumerate(convs.items()):
        found = placed.get(name, ())
        if len(found) != 2:
            raise FormatError(f"{path}: layer {name!r} holds {len(found)} weights, not 2")
        own = names[i] if i < len(names) else head_name(i - len(names))
        layers.append(ConvLayer(own, found[0], found[1], relu, name, dilation))
    info = fcn_metadata.info(path, meta, Storage("keras", "HWIO", "source", "float32"))
    fcn = FCN(plan, tuple(layers[: len(names)]), tuple(layers[len(names) :]), info, pools)
    check_shapes(fcn)
    _check_config(config, model_config(fcn, list(convs)), path)
    return fcn


def _entries(config: Mapping[str, Any], path: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(class, name, own config) of each layer a config.json lists, each checked to be there;
    a class from outside Keras is refused by name before anything else, as in any config."""
    model = config.get("config")
    layers = model.get("layers") if isinstance(model, dict) else None
    if not isinstance(layers, list):
        raise FormatError(f"{path}: {CONFIG} has no list of layers")
    entries = []
    for entry in layers:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("class_name"), str)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("config"), dict)
        ):
            raise FormatError(f"{path}: {CONFIG} lists a layer without a class, name or config")
        module, registered = entry.get("module"), entry.get("registered_name")
        if module != "keras.layers" or registered is not None:  # as `keras_config` says it
            raise FormatError(
                f"{path}: layer {show(entry['name'])} is of class "
                f"{show(registered or entry['class_name'])} from {show(module)}, which vggfcn "
                "does not convert (custom classes are never imported)"
            )
        entries.append((entry["class_name"], entry["name"], entry["config"]))
    return entries


def _structure(
    entries: list[tuple[str, str, Mapping[str, Any]]], path: str
) -> tuple[tuple[int, ...], dict[str, tuple[int, bool]], tuple[Pool, ...]]:
    """The plan, each convolution's (dilation, ReLU) by layer name, and each block's pool, from
    the layers `_layers` makes; a dilated pool's dilation is its last view's shift."""
    plan: list[int] = []
    pools: list[Pool] = []
    convs: dict[str, tuple[int, bool]] = {}
    count, head, shift = 0, False, 1
    for kind, name, arguments in entries:
        if kind == "Conv2D":
            head = head or arguments.get("padding") != "same"
            convs[name] = (
                _first(arguments.get("dilation_rate")),
                arguments.get("activation") == "relu",
            )
            count += not head
        elif kind in ("MaxPooling2D", "Maximum") and count and not head:
            stride = _first(arguments.get("strides")) if kind == "MaxPooling2D" else 1
            pools.append(Pool(stride, 1 if kind == "MaxPooling2D" else shift))
            plan.append(count)
            count = 0
        elif kind == "Cropping2D":
            shift = _first(arguments.get("cropping"))
        elif kind != "InputLayer":
            raise FormatError(f"{path}: layer {name!r} ({kind}) is not in a vggfcn .keras")
    if name_of(tuple(plan)) is None or count or not head:
        raise FormatError(f"{path}: not the VGG trunk and convolutional head vggfcn writes")
    return tuple(plan), convs, tuple(pools)


def _first(value: Any) -> int:
    """The first number of an attribute as `_config` writes it ([d, d]; a view's cropping
    [[d, 0], [d, 0]]), or 1 where it is no positive int: the layer is rebuilt from it and
    compared with the file's (`_check_config`), which refuses what `write` would not write."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if type(value) is int and value > 0 else 1


def _check_config(found: Mapping[str, Any], written: dict[str, Any], path: str) -> None:
    """Refuse a config other than the one `write` makes, naming the first layer and key that
    differ.

    Raises:
        FormatError: the config differs.
    """
    want = json.loads(json.dumps(written))  # as it reads back: lists, str keys
    if found == want:
        return
    for ours, theirs in zip(want["config"]["layers"], found["config"]["layers"], strict=False):
        key = _difference(ours, theirs)
        if key is not None:
            raise FormatError(
                f"{path}: {CONFIG}: layer {theirs['name']!r} differs at {key} from the layer "
                "vggfcn writes there"
            )
    raise FormatError(f"{path}: {CONFIG} is not the model vggfcn writes for its layers")


def _difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> str | None:
    """The first key at which two layer entries differ (`config.<key>` within their own
    configs), None where they do not."""
    for key in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(key), theirs.get(key)
        if a != b:
            if key == "config" and isinstance(a, dict) and isinstance(b, dict):
                return f"config.{_difference(a, b)}"
            return key
    return None
