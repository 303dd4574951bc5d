"""Keras models as source graphs (`formats/keras_model.py`): what files without a model config
may and may not leave to the VGG family, and what the user is told about it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from tests.helpers import assert_refused, edited_h5, replace_dataset, run


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
