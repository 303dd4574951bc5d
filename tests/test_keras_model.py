"""Keras models as source graphs (`formats/keras_model.py`): fine-tuned heads as real Keras 3
writes them (Flatten or GlobalAveragePooling2D, Dropout, BatchNormalization, nested bases, `.keras`
and `.h5`) convert, verify, and rebuilt as a Keras FCN equal Keras' own logits — at the size the
model was built for, and cell by cell on the windows of a larger input. Files without a model
config leave the rest to the VGG family, and the user is told what was assumed.

The config as data (what is refused before any layer is built) is tested in test_keras_config.py;
the FC -> conv reshape of a GAP head in test_convert.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

from fixtures.finetuned import (
    KERAS_HEADS,
    keras_base,
    keras_finetuned,
    keras_head_on,
    keras_logits,
    keras_pool5,
)
from tests.helpers import (
    assert_logits_close,
    assert_refused,
    edit_config,
    edited_h5,
    head_layers,
    refuse_everywhere,
    replace_dataset,
    run,
    safetensors_metadata,
    verified_conversion,
)
from vggfcn.api import inspect_file
from vggfcn.cli import main
from vggfcn.verify import sample_images

logging.getLogger("absl").setLevel(logging.ERROR)  # Keras 3 warns that .h5 is legacy


# ------------------------------------------------------------ with a config: fine-tuned heads


def keras_fcn(path: Path) -> Any:
    """The converted file as a real Keras model: Conv2D trunk and head, weights set from it."""
    tensors = safetensors.numpy.load_file(str(path))
    meta = safetensors_metadata(path)
    activations = meta["head_activations"].split(",")
    inputs = keras.Input((None, None, 3))
    x = inputs
    block = 1
    while f"block{block}_conv1.kernel" in tensors:
        index = 1
        while (name := f"block{block}_conv{index}") + ".kernel" in tensors:
            layer = keras.layers.Conv2D(
                tensors[f"{name}.kernel"].shape[-1], 3, padding="same", activation="relu"
            )
            x = layer(x)
            layer.set_weights([tensors[f"{name}.kernel"], tensors[f"{name}.bias"]])
            index += 1
        x = keras.layers.MaxPooling2D(2)(x)
        block += 1
    for i, activation in enumerate(activations):
        kernel, bias = tensors[f"fc{6 + i}.kernel"], tensors[f"fc{6 + i}.bias"]
        layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], activation=activation)
        x = layer(x)
        layer.set_weights([kernel, bias])
    return keras.Model(inputs, x)


def check_against_keras(model: Any, out: Path, size: int) -> None:
    """Native size: the FCN's one cell is Keras' own logits. Two pool5 blocks larger: each cell
    of the 3x3 map is Keras' own head on that pool5 window."""
    fcn = keras_fcn(out)
    x = sample_images(2, seed=7, size=size)
    native = fcn.predict(x, verbose=0)
    assert native.shape[1:3] == (1, 1)
    assert_logits_close(native[:, 0, 0], keras_logits(model, x))
    big = sample_images(1, seed=8, size=size + 64)
    cells = fcn.predict(big, verbose=0)[0]
    pool5 = keras_pool5(model, big)
    p = pool5.shape[1] - cells.shape[0] + 1
    assert cells.shape[:2] == (3, 3)
    for i in range(3):
        for j in range(3):
            assert_logits_close(
                cells[i, j], keras_head_on(model, pool5[:, i : i + p, j : j + p])[0]
            )


KERAS_CASES = [
    ("flatten", 150, False, ".keras"),
    ("flatten", 150, True, ".h5"),
    ("gap", 224, True, ".keras"),
    ("gap", 224, False, ".h5"),
    ("bn-before-relu", 224, False, ".keras"),
    ("bn-after-relu", 224, True, ".keras"),
    ("bn-after-relu", 224, False, ".h5"),
]


@pytest.mark.parametrize(("head", "size", "functional", "suffix"), KERAS_CASES)
def test_keras_finetuned_model_converts_verifies_and_equals_keras(
    tmp_path: Path, head: str, size: int, functional: bool, suffix: str
) -> None:
    model = keras_finetuned(head, size, functional=functional)
    source = tmp_path / f"model{suffix}"
    model.save(str(source))
    out = verified_conversion(source)
    meta = safetensors_metadata(out)
    assert meta["input_size"] == f"{size},{size}"
    dense = [kwargs for kind, kwargs in KERAS_HEADS[head] if kind == "Dense"]
    assert meta["source_output_activation"] == dense[-1]["activation"]
    assert meta["head_activations"].split(",")[-1] == "linear"
    check_against_keras(model, out, size)


def test_keras_applications_vgg16_base_nested_in_a_sequential(tmp_path: Path) -> None:
    """The real keras.applications VGG16 (full widths, weights=None) as the nested base."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    model = keras_finetuned("flatten", 64, base=base)
    for suffix in (".keras", ".h5"):
        source = tmp_path / f"vgg16-finetuned{suffix}"
        model.save(str(source))
        out = verified_conversion(source)
        assert safetensors.numpy.load_file(str(out))["fc6.kernel"].shape == (2, 2, 512, 24)
    check_against_keras(model, out, 64)


def test_inspect_shows_the_source_graph(tmp_path: Path) -> None:
    model = keras_finetuned("bn-before-relu", 224, functional=True)
    source = tmp_path / "m.keras"
    model.save(str(source))
    info = inspect_file(str(source)).as_dict()
    assert (info["format"], info["generation"]) == ("keras-archive", "keras3")
    classes = [row["class"] for row in info["layers"]]  # type: ignore[attr-defined]
    assert classes[-5:] == ["Flatten", "Dense", "BatchNorm", "Activation", "Dense"]
    assert info["output_activation"] == "sigmoid"
    text = CliRunner().invoke(main, ["inspect", str(source)]).stdout
    assert "BatchNorm" in text and "eps 0.001" in text and "input 224x224 (file)" in text


def test_a_config_that_disagrees_with_the_weights(archive: Path, tmp_path: Path) -> None:
    def shrink(config: dict[str, Any]) -> None:
        dense = next(layer for layer in head_layers(config) if layer["class_name"] == "Dense")
        dense["config"]["units"] = 23

    source = edit_config(archive, tmp_path / "lies.keras", shrink)
    refuse_everywhere(source, "dense", r"\(256, 24\)", "23 units")


def test_an_activation_we_do_not_convert_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(keras_base(32)(inputs))
    x = keras.layers.Dense(8, activation="tanh", name="hidden")(x)
    source = tmp_path / "tanh.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(str(source))
    refuse_everywhere(source, "hidden.activation is 'tanh'", "relu and linear")


# ------------------------------------------------------------ without a config


def test_weights_only_files_of_finetuned_models(tmp_path: Path) -> None:
    """`.weights.h5` holds no config: the head's kind comes from its group names, the input
    size from the first dense layer's inputs; batch norms cannot be placed and are refused."""
    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.weights.h5"
    model.save_weights(str(source))
    out = verified_conversion(source)
    assert safetensors_metadata(out)["input_size"] == "128,128"  # 4x4 pool5: any 128..159 input
    assert safetensors_metadata(out)["source_output_activation"] == "unknown"
    gap = keras_finetuned("gap", 224)
    gap.save_weights(str(tmp_path / "gap.weights.h5"))
    assert safetensors.numpy.load_file(str(verified_conversion(tmp_path / "gap.weights.h5")))[
        "fc6.kernel"
    ].shape == (7, 7, 16, 10)
    bn = keras_finetuned("bn-after-relu", 224)
    bn.save_weights(str(tmp_path / "bn.weights.h5"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "bn.weights.h5")])
    assert result.exit_code == 2 and "no model config" in result.stderr


def _without_bias(f: h5py.File) -> None:
    """block3_conv2 as a Keras 1 file would hold it with its bias gone: the dataset and its
    entry in `weight_names`."""
    group = f["block3_conv2"]
    names = [n for n in group.attrs["weight_names"] if b"_b_" not in n]
    del group["block3_conv2_b_1:0"]
    group.attrs["weight_names"] = np.array(names)


def test_a_config_less_layer_without_its_bias_is_refused(keras1: Path, tmp_path: Path) -> None:
    source = edited_h5(keras1, tmp_path / "biasless.h5", _without_bias)
    out = tmp_path / "out.safetensors"
    assert_refused(
        run("convert", source, out), source, "block3_conv2: a kernel and no bias", out=out
    )
    assert_refused(run("inspect", source), source, "block3_conv2", "no bias")


def test_a_stock_config_less_file_converts_without_a_note(keras1: Path, tmp_path: Path) -> None:
    result = run("convert", keras1, tmp_path / "out.safetensors")
    assert result.exit_code == 0 and result.stderr == ""


def _fc1_for_192(f: h5py.File) -> None:
    """fc1 of a model trained at 192x192: it reads a 6x6 pool5 (6*6*16 rows)."""
    kernel = f["fc1/fc1_W_1:0"][...]
    replace_dataset(f, "fc1/fc1_W_1:0", kernel[: 6 * 6 * 16])


NOTE_192 = (
    "note: small_head.h5 has no model config; assuming a 192x192 input (fc1 reads 6x6x16), "
    "ReLU between dense layers and logits from the last (10 outputs); --input-size overrides"
)


def test_a_config_less_head_of_another_size_converts_with_a_note(
    keras1: Path, tmp_path: Path
) -> None:
    source = edited_h5(keras1, tmp_path / "small_head.h5", _fc1_for_192)
    out = tmp_path / "out.safetensors"
    result = run("convert", source, out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [NOTE_192]
    assert result.stdout.startswith(f"wrote {out}")
    quiet = run("convert", "--quiet", "--force", source, out)  # a warning, not progress
    assert (quiet.exit_code, quiet.stdout, quiet.stderr.splitlines()) == (0, "", [NOTE_192])
    as_json = run("convert", "--json", "--force", source, out)
    assert json.loads(as_json.stdout)["assumptions"] == [NOTE_192.removeprefix("note: ")]
    checked = run("verify", source, out)  # the proof runs on the same assumptions: it says so
    assert checked.exit_code == 0 and checked.stderr.splitlines() == [NOTE_192]
    given = run("convert", "--force", "--input-size", "192", source, out)
    assert given.exit_code == 0 and "192x192 input" not in given.stderr  # nothing left to guess
    listed = run("inspect", source)
    assert NOTE_192 in listed.stdout.splitlines() and listed.stderr == ""


def test_a_config_less_two_layer_head_converts_with_a_note(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    def drop_predictions(f: h5py.File) -> None:
        group = next(k for k in f["layers"] if f[f"layers/{k}/vars"].attrs["name"] == "predictions")
        del f[f"layers/{group}"]

    name = "two_layers.weights.h5"
    source = edited_h5(tiny_files["keras3-weights"], tmp_path / name, drop_predictions)
    result = run("convert", source, tmp_path / "out.safetensors")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"note: {name} has no model config; assuming a 224x224 input (fc1 reads 7x7x16), "
        "ReLU between dense layers and logits from the last (32 outputs); --input-size overrides"
    ]
