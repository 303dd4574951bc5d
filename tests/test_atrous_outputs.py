"""Output stride 16 and 8 in every output file: what each writer makes of `atrous`'s network, run
by the format's own runtime, and what each reader makes of the file.

The reference is torch: the same dilated network built from the FCN's weights with `nn.Conv2d`
(dilation, padding) and `nn.MaxPool2d(2, stride, dilation=d)`, sharing nothing with the writers.
onnxruntime runs the written `.onnx`, real Keras (`safe_mode=True`) the written `.keras`; both
must give torch's logits, at the map size `FCN.output_size` says. Read back through the outputs
registry, every file gives `atrous`'s attributes and its recorded stride; a stride-32 file is
the bytes it always was; an edited dilation is read as edited (it is `verify`'s to catch).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.helpers import (
    assert_logits_close,
    assert_reader_refuses,
    edit_config,
    fcn_metadata,
    nchw,
    run,
    safetensors_metadata,
    tensors,
    tiny_fcn,
    write_output,
)
from vggfcn.atrous import atrous
from vggfcn.errors import FormatError, OutputError
from vggfcn.fcn import FCN, PLAIN, ConvLayer, Pool, Storage
from vggfcn.formats import fcn_metadata as fcn_metadata_module
from vggfcn.formats import keras_fcn, load
from vggfcn.formats.outputs import BY_NAME

STRIDES = (16, 8)
#: (H, W) inputs: square and not.
SIZES = [(256, 256), (256, 320)]
KINDS = ("safetensors", "onnx", "keras")
EXTENSION = {"safetensors": ".safetensors", "onnx": ".onnx", "keras": ".keras"}


@pytest.fixture(scope="module")
def fcn() -> FCN:
    """A tiny random VGG16 classifier as an FCN at output stride 32."""
    return tiny_fcn()


@pytest.fixture(scope="module")
def written(fcn: FCN, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """(output kind, stride) -> `atrous(fcn, stride)` written by that kind's writer, 32 too."""
    folder = tmp_path_factory.mktemp("atrous")
    return {
        (kind, stride): write_output(
            kind, folder / f"s{stride}{EXTENSION[kind]}", atrous(fcn, stride)
        )
        for kind in KINDS
        for stride in (32, *STRIDES)
    }


def images(h: int, w: int) -> np.ndarray:
    """Two random NHWC images."""
    return np.random.default_rng(h * w).standard_normal((2, h, w, 3), dtype=np.float32)


# ------------------------------------------------------------ the reference


def torch_twin(fcn: FCN) -> nn.Sequential:
    """`fcn` as torch modules, NCHW: "same" trunk convs padded by their dilation (3x3), "valid"
    head convs, a ReLU where the layer has one, each block's pool as its `Pool` says."""
    modules: list[nn.Module] = []
    layers = iter(fcn.layers)
    for count, pool in zip(fcn.plan, fcn.block_pools, strict=True):
        for layer in islice(layers, count):
            modules += _torch_conv(layer, padding=layer.dilation)
        modules.append(nn.MaxPool2d(2, stride=pool.stride, dilation=pool.dilation))
    for layer in layers:
        modules += _torch_conv(layer, padding=0)
    return nn.Sequential(*modules).eval()


def _torch_conv(layer: ConvLayer, padding: int) -> list[nn.Module]:
    kernel = layer.kernel.read()  # HWIO
    h, w, c, k = kernel.shape
    conv = nn.Conv2d(c, k, (h, w), padding=padding, dilation=layer.dilation)
    weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # OIHW
    conv.load_state_dict({"weight": weight, "bias": torch.from_numpy(layer.bias.read().copy())})
    return [conv, nn.ReLU()] if layer.relu else [conv]


def torch_logits(fcn: FCN, x: np.ndarray) -> np.ndarray:
    """NHWC images through `torch_twin(fcn)`: the NHWC logits map."""
    with torch.no_grad():
        out = torch_twin(fcn)(nchw(x))
    return np.asarray(out.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("stride", STRIDES)
def test_the_reference_is_the_stride_32_map_at_every_stride_th_cell(fcn: FCN, stride: int) -> None:
    """The phase (0, 0) of the finer map is the classifier's own map (`atrous`): the network
    the writers are held to is the right one."""
    x = images(*SIZES[1])
    fine, coarse = torch_logits(atrous(fcn, stride), x), torch_logits(fcn, x)
    step = 32 // stride
    assert_logits_close(fine[:, ::step, ::step], coarse)


# ------------------------------------------------------------ what the runtimes compute


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", STRIDES)
def test_onnxruntime_runs_the_onnx_as_torch_runs_the_network(
    fcn: FCN, written: dict[tuple[str, int], Path], stride: int, size: tuple[int, int]
) -> None:
    dilated = atrous(fcn, stride)
    session = ort.InferenceSession(str(written["onnx", stride]), providers=["CPUExecutionProvider"])
    x = images(*size)
    (got,) = session.run(["logits"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
    assert got.shape == (2, fcn.classes, *dilated.output_size(*size))
    assert_logits_close(got.transpose(0, 2, 3, 1), torch_logits(dilated, x))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stride", STRIDES)
def test_keras_loads_the_keras_safely_and_runs_it_as_torch_does(
    fcn: FCN, written: dict[tuple[str, int], Path], stride: int, size: tuple[int, int]
) -> None:
    dilated = atrous(fcn, stride)
    model = keras.saving.load_model(written["keras", stride], safe_mode=True)
    x = images(*size)
    got = model.predict(x, verbose=0)
    assert got.shape == (2, *dilated.output_size(*size), fcn.classes)
    assert_logits_close(got, torch_logits(dilated, x))


def keras_twin(fcn: FCN) -> keras.Model:
    """The dilated network built with the Keras API, for Keras to save its own way: Conv2D
    with `dilation_rate`, MaxPooling2D(2, stride), a dilated pool as the Maximum of four
    Cropping2D views."""
    names = keras_fcn.layer_names(fcn)
    layers = iter(zip(fcn.layers, names, strict=True))
    x = inputs = keras.Input(batch_shape=(None, None, None, 3), name="input")
    for block, (count, pool) in enumerate(zip(fcn.plan, fcn.block_pools, strict=True), 1):
        for layer, name in islice(layers, count):
            x = keras.layers.Conv2D(
                layer.out_channels,
                3,
                padding="same",
                dilation_rate=layer.dilation,
                activation="relu",
                name=name,
            )(x)
        if pool.dilation == 1:
            x = keras.layers.MaxPooling2D(2, pool.stride, name=f"block{block}_pool")(x)
            continue
        d = pool.dilation
        crops = [((a, d - a), (b, d - b)) for a in (0, d) for b in (0, d)]
        views = [
            keras.layers.Cropping2D(crop, name=f"block{block}_pool_{crop[0][0]}_{crop[1][0]}")(x)
            for crop in crops
        ]
        x = keras.layers.Maximum(name=f"block{block}_pool")(views)
    for layer, name in layers:
        activation = "relu" if layer.relu else "linear"
        x = keras.layers.Conv2D(
            layer.out_channels,
            layer.kernel.shape[:2],
            dilation_rate=layer.dilation,
            activation=activation,
            name=name,
        )(x)
    model = keras.Model(inputs, x, name=f"{fcn.name}_fcn")
    model.set_weights([t.read() for layer in fcn.layers for t in (layer.kernel, layer.bias)])
    return model


@pytest.mark.parametrize("stride", STRIDES)
def test_the_keras_model_is_the_one_keras_builds_and_saves_itself(
    fcn: FCN, written: dict[tuple[str, int], Path], stride: int, tmp_path: Path
) -> None:
    """Same layers, connections and config as the Keras API gives; the same weights file as
    Keras writes (every group, attribute and byte)."""
    twin = keras_twin(atrous(fcn, stride))
    model = keras.saving.load_model(written["keras", stride], safe_mode=True)
    as_json = [json.loads(json.dumps(m.get_config())) for m in (model, twin)]
    assert as_json[0] == as_json[1]
    twin.save(tmp_path / "twin.keras")
    assert _weights(written["keras", stride]) == _weights(tmp_path / "twin.keras")


def _weights(path: Path) -> dict[str, Any]:
    """model.weights.h5 of an archive: every object's path, attributes, and data."""
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        tree: dict[str, Any] = {"/": dict(f.attrs)}

        def visit(name: str, obj: Any) -> None:
            data = obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None
            tree[name] = (dict(obj.attrs), data)

        f.visititems(visit)
        return tree


# ------------------------------------------------------------ what the readers give


def attributes(fcn: FCN) -> tuple[Any, ...]:
    """What a reader must recover: the plan, each block's pool, each layer's dilation and
    ReLU, the stride recorded and the stride computed."""
    layers = tuple((layer.dilation, layer.relu) for layer in fcn.layers)
    return fcn.plan, fcn.block_pools, layers, fcn.info.output_stride, fcn.output_stride


@pytest.mark.parametrize("stride", (32, *STRIDES))
@pytest.mark.parametrize("kind", KINDS)
def test_each_file_reads_back_as_atrous_made_it(
    fcn: FCN, written: dict[tuple[str, int], Path], kind: str, stride: int
) -> None:
    dilated = atrous(fcn, stride)
    with BY_NAME[kind].read(str(written[kind, stride])) as back:
        assert attributes(back) == attributes(dilated)
        for ours, theirs in zip(back.layers, dilated.layers, strict=True):
            np.testing.assert_array_equal(ours.kernel.read(), theirs.kernel.read())
            np.testing.assert_array_equal(ours.bias.read(), theirs.bias.read())


@pytest.mark.parametrize("stride", STRIDES)
def test_safetensors_holds_the_weights_once_and_records_the_stride(
    fcn: FCN, written: dict[tuple[str, int], Path], stride: int
) -> None:
    """The same tensors as at 32; the reader dilates them as `output_stride` says."""
    path, plain = written["safetensors", stride], written["safetensors", 32]
    assert safetensors_metadata(path)["output_stride"] == str(stride)
    with load(str(path)) as back, load(str(plain)) as undilated:
        assert isinstance(back, FCN) and isinstance(undilated, FCN)
        assert attributes(back) == attributes(atrous(undilated, stride))
    at_32 = tensors(plain)
    assert {name: t.tobytes() for name, t in tensors(path).items()} == {
        name: t.tobytes() for name, t in at_32.items()
    }


def test_stride_32_files_are_the_bytes_they_always_were(
    fcn: FCN, written: dict[tuple[str, int], Path], tmp_path: Path
) -> None:
    """No `output_stride` in the metadata, no `dilations` in the graph, no view or merge in the
    Keras model: `atrous(fcn, 32)` and every pool spelled out PLAIN write what `fcn` writes."""
    spelled = replace(fcn, pools=(PLAIN,) * len(fcn.plan))
    for kind in KINDS:
        ours = [
            write_output(kind, tmp_path / f"{i}{EXTENSION[kind]}", f)
            for i, f in enumerate((fcn, spelled))
        ]
        assert {p.read_bytes() for p in (*ours, written[kind, 32])} == {ours[0].read_bytes()}
        assert "output_stride" not in fcn_metadata(fcn, kind)
    graph = onnx.load(str(written["onnx", 32])).graph
    assert not [a.name for node in graph.node for a in node.attribute if a.name == "dilations"]
    with zipfile.ZipFile(written["keras", 32]) as z:
        config = json.loads(z.read("config.json"))
    classes = {layer["class_name"] for layer in config["config"]["layers"]}
    assert classes == {"InputLayer", "Conv2D", "MaxPooling2D"}


# ------------------------------------------------------------ edited files


def edited_onnx(
    source: Path, target: Path, node: str, attribute: str, values: list[int] | None
) -> Path:
    """`source` with one attribute of one node set to `values` (None: removed), by the `onnx`
    package."""
    model = onnx.load(str(source))
    found = next(n for n in model.graph.node if n.name == node)
    kept = [a for a in found.attribute if a.name != attribute]
    del found.attribute[:]
    found.attribute.extend(kept)
    if values is not None:
        found.attribute.append(onnx.helper.make_attribute(attribute, values))
    onnx.save(model, str(target))
    return target


def _set(layer: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        entry = next(x for x in config["config"]["layers"] if x["name"] == layer)
        entry["config"][key] = value

    return edit


def _set_entry(layer: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        entry = next(x for x in config["config"]["layers"] if x["name"] == layer)
        entry[key] = value

    return edit


def _rewire(config: dict[str, Any]) -> None:
    """The dilated pool's Maximum called on one view four times."""
    pool = next(x for x in config["config"]["layers"] if x["name"] == "block5_pool")
    views = pool["inbound_nodes"][0]["args"][0]
    views[3] = views[0]


@pytest.mark.parametrize(
    ("node", "attribute", "values", "fc6", "pool5", "computed"),
    [
        ("fc6", "dilations", [3, 3], 3, Pool(1, 1), 16),
        ("fc6", "dilations", None, 1, Pool(1, 1), 16),
        ("pool5", "strides", [2, 2], 2, Pool(2, 1), 32),
    ],
)
def test_an_edited_onnx_is_read_as_it_is_edited(
    written: dict[tuple[str, int], Path],
    tmp_path: Path,
    node: str,
    attribute: str,
    values: list[int] | None,
    fc6: int,
    pool5: Pool,
    computed: int,
) -> None:
    """The network the graph computes, whatever `output_stride` the file records (16): `verify`
    is what holds the two together."""
    path = edited_onnx(written["onnx", 16], tmp_path / "e.onnx", node, attribute, values)
    with BY_NAME["onnx"].read(str(path)) as back:
        found = back.head[0].dilation, back.block_pools[-1], back.output_stride
        assert found == (fc6, pool5, computed)
        assert back.info.output_stride == 16


@pytest.mark.parametrize(
    ("node", "attribute", "values"),
    [
        ("block5_conv1", "pads", [1, 1, 1, 1]),  # dilation 2 pads 2
        ("block5_conv1", "dilations", None),  # pads 2 without a dilation
        ("block5_conv1", "strides", [2, 2]),
        ("fc6", "dilations", [4, 2]),
        ("fc7", "dilations", [1, 1]),  # ONNX's default, which vggfcn never writes
        ("fc6", "dilations", [0, 0]),
        ("pool5", "dilations", [2, 1]),
        ("pool5", "kernel_shape", [3, 3]),
        ("pool4", "strides", None),
    ],
)
def test_an_onnx_attribute_vggfcn_never_writes_is_refused_by_node(
    written: dict[tuple[str, int], Path],
    tmp_path: Path,
    node: str,
    attribute: str,
    values: list[int] | None,
) -> None:
    path = edited_onnx(written["onnx", 8], tmp_path / "e.onnx", node, attribute, values)
    assert_reader_refuses(load, path, f"node {node!r}", "vggfcn writes", error=FormatError)


@pytest.mark.parametrize(
    ("layer", "dilation"),
    [("fc6", 3), ("block5_conv1", 1)],  # "same" pads as it dilates
)
def test_an_edited_keras_dilation_is_read_as_it_is_edited(
    written: dict[tuple[str, int], Path], tmp_path: Path, layer: str, dilation: int
) -> None:
    path = edit_config(
        written["keras", 8], tmp_path / "edited.keras", _set(layer, "dilation_rate", [dilation] * 2)
    )
    with BY_NAME["keras"].read(str(path)) as back:
        found = next(x for x in back.layers if x.source_name == layer)
        assert (found.dilation, back.info.output_stride) == (dilation, 8)
    model = keras.saving.load_model(path, safe_mode=True)
    assert model.get_layer(layer).dilation_rate == (dilation, dilation)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_set("block5_conv1", "dilation_rate", [2, 1]), "'block5_conv1' differs at config.dil"),
        (_set("block5_conv1", "padding", "valid"), "'block5_pool' .Maximum. is not in a vggfcn"),
        (_set_entry("block5_pool", "class_name", "Minimum"), "'block5_pool' .Minimum. is not"),
        (_set_entry("block5_pool", "registered_name", "evil>Maximum"), "evil>Max.*never imported"),
        (_set("block5_pool_0_2", "cropping", [[0, 2], [1, 1]]), "'block5_pool_0_2' differs"),
        (_set("block4_pool", "strides", [1, 2]), "'block4_pool' differs at config.strides"),
        (_rewire, "'block5_pool' differs at inbound_nodes"),
        (_set("fc6", "dilation_rate", [0, 0]), "'fc6' differs at config.dilation_rate"),
    ],
)
def test_a_keras_config_vggfcn_never_writes_is_refused_by_layer(
    written: dict[tuple[str, int], Path],
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], None],
    pattern: str,
) -> None:
    path = edit_config(written["keras", 8], tmp_path / "edited.keras", edit)
    assert_reader_refuses(load, path, pattern, error=FormatError)


# ------------------------------------------------------------ what a format cannot carry


def test_safetensors_refuses_pools_and_dilations_of_no_stride(fcn: FCN, tmp_path: Path) -> None:
    """Its reader rebuilds the ops from the stride: any others would be lost."""
    dilated = atrous(fcn, 16)
    odd = replace(dilated, head=(replace(dilated.head[0], dilation=3), *dilated.head[1:]))
    with pytest.raises(OutputError, match="not those of output stride 16"):
        write_output("safetensors", tmp_path / "odd.safetensors", odd)


def test_keras_refuses_a_dilated_pool_with_a_stride(fcn: FCN, tmp_path: Path) -> None:
    odd = replace(fcn, pools=(*(PLAIN,) * (len(fcn.plan) - 1), Pool(2, 2)))
    with pytest.raises(OutputError, match="block5_pool has stride 2 and dilation 2"):
        write_output("keras", tmp_path / "odd.keras", odd)


# ------------------------------------------------------------ the metadata


@pytest.mark.parametrize("stride", STRIDES)
def test_the_metadata_records_a_finer_stride_and_reads_it_back(fcn: FCN, stride: int) -> None:
    meta = fcn_metadata(atrous(fcn, stride))
    assert meta["output_stride"] == str(stride)
    info = fcn_metadata_module.info("m", meta, Storage())
    assert info.output_stride == stride


@pytest.mark.parametrize(
    ("value", "head"),
    [("4", "classifier"), ("016", "classifier"), ("16 ", "classifier"), ("16", "reduced")],
)
def test_a_stride_that_atrous_does_not_make_is_refused(fcn: FCN, value: str, head: str) -> None:
    meta = fcn_metadata(fcn) | {"output_stride": value, "head": head}
    with pytest.raises(FormatError, match=rf"^m: output_stride '{value}'; a {head} head runs at"):
        fcn_metadata_module.info("m", meta, Storage())


def test_verify_exits_1_on_a_file_whose_dilation_was_edited(keras1: Path, tmp_path: Path) -> None:
    """The command a pipeline runs: a stride-8 ONNX file verifies (exit 0); the same file with
    fc6's dilation 4 edited to 2 (stride 16's) still runs, and fails the proof (exit 1)."""
    out = tmp_path / "s8.onnx"
    assert run("convert", "-q", keras1, out, "--output-stride", "8").exit_code == 0
    passed = run("verify", keras1, out)
    assert passed.exit_code == 0 and "stride 8 map" in passed.stdout
    edited = edited_onnx(out, tmp_path / "edited.onnx", "fc1", "dilations", [2, 2])
    failed = run("verify", keras1, edited)
    assert failed.exit_code == 1 and "FAIL" in failed.stdout
