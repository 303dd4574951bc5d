"""Shapes (`shapes.py`): a source graph checked before anything runs it, every problem reported
at once, and the input size the model was built for (from the file, else the first dense
layer's inputs, else 224x224); a file without a classifier ("notop") is told so.

The notes a config-less file's guessed size gives are in test_keras_model.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.numpy
import torch
from click.testing import CliRunner

from fixtures.finetuned import keras_finetuned
from fixtures.generate import TINY, write_checkpoint
from tests.helpers import (
    FC1,
    FC2,
    converts_and_verifies,
    edited_h5,
    read_all,
    refuse_everywhere,
    replace_dataset,
    tensors,
    verified_conversion,
)
from vggfcn.api import inspect_file
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError

# ------------------------------------------------------------ no classifier


@pytest.mark.parametrize("generation", ["keras1", "keras3-weights"])
def test_notop_file_says_the_classifier_is_missing(tmp_path: Path, generation: str) -> None:
    source = tmp_path / ("notop.weights.h5" if generation == "keras3-weights" else "notop.h5")
    write_checkpoint(source, generation, TINY, top=False)
    refuse_everywhere(source, "include_top=False", "classifier")


def test_notop_file_says_there_is_no_head(make_file: Callable[..., Path]) -> None:
    with pytest.raises(ArchitectureError, match="notop"):
        read_all(make_file("keras1", top=False))


# ------------------------------------------------------------ shapes that do not chain


def test_wrong_shapes_are_all_reported_at_once(keras1: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        w = f["fc1/fc1_W_1:0"][()]
        del f["fc1/fc1_W_1:0"]
        f["fc1"].create_dataset("fc1_W_1:0", data=w.T)  # transposed
        b = f["block3_conv2/block3_conv2_b_1:0"][()]
        del f["block3_conv2/block3_conv2_b_1:0"]
        f["block3_conv2"].create_dataset("block3_conv2_b_1:0", data=b[:-1])
    with pytest.raises(ArchitectureError) as err:
        read_all(path)
    message = str(err.value)
    assert str(path) in message
    assert "fc1 kernel has shape (32, 784), expected (784, 32)" in message
    assert "block3_conv2 bias" in message


def test_transposed_fc_kernel(keras1: Path, tmp_path: Path) -> None:
    def transpose(f: h5py.File) -> None:
        replace_dataset(f, FC2, f[FC2][()].T.copy())
        replace_dataset(f, FC1, f[FC1][()].T.copy())

    source = edited_h5(keras1, tmp_path / "transposed.h5", transpose)
    refuse_everywhere(source, r"fc1 kernel has shape \(32, 784\), expected \(784, 32\)")


def test_transposed_torch_classifier_weight(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    bad = dict(state)
    bad["classifier.0.weight"] = state["classifier.0.weight"].T.contiguous()
    source = tmp_path / "transposed.pth"
    torch.save(bad, source)
    refuse_everywhere(source, "classifier.0", "784")


def test_mismatched_channel_chain(keras1: Path, tmp_path: Path) -> None:
    """block3_conv2 reads 6 channels where block3_conv1 writes 8."""
    name = "block3_conv2/block3_conv2_W_1:0"
    source = edited_h5(
        keras1,
        tmp_path / "chain.h5",
        lambda f: replace_dataset(f, name, np.ones((3, 3, 6, 8), np.float32)),
    )
    refuse_everywhere(source, "block3_conv2", r"\(3, 3, 6, 8\)", r"expected \(3, 3, 8, 8\)")


def test_fc6_input_that_is_no_square_pool5(keras1: Path, tmp_path: Path) -> None:
    """480 rows = 30 * 16: no square pool5 of 16 channels gives them, and the file holds no
    config to say which size the model was built for; against 224x224 (7x7x16 = 784) it is
    refused, saying what fc6 must read."""
    source = edited_h5(
        keras1,
        tmp_path / "fc6.h5",
        lambda f: replace_dataset(f, FC1, np.ones((5 * 6 * 16, 32), np.float32)),
    )
    refuse_everywhere(source, r"\(480, 32\)", "7x7x16", "784")


# ------------------------------------------------------------ the input size


def test_fc6_of_a_smaller_square_pool5_converts(keras1: Path, tmp_path: Path) -> None:
    """576 rows = 6 * 6 * 16: a model built for a 6x6 pool5 (192x192 inputs). Without a config
    the fan-in says so, and the first dense layer becomes a 6x6 convolution."""
    source = edited_h5(
        keras1,
        tmp_path / "fc6.h5",
        lambda f: replace_dataset(f, FC1, np.ones((6 * 6 * 16, 32), np.float32)),
    )
    out = converts_and_verifies(source, tmp_path, notes=1)  # the 192x192 input is a guess
    assert tensors(out)["fc6.kernel"].shape == (6, 6, 16, 32)


def test_150_pixel_model_has_a_4x4_first_head_kernel(tmp_path: Path) -> None:
    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.keras"
    model.save(str(source))
    out = verified_conversion(source)
    tensors = safetensors.numpy.load_file(str(out))
    assert tensors["fc6.kernel"].shape == (4, 4, 16, 24)  # reads the 8192 (here 256) values
    assert tensors["fc7.kernel"].shape == (1, 1, 24, 5)
    info = inspect_file(str(source)).as_dict()
    assert info["input_size"] == [150, 150] and info["input_size_from"] == "file"
    report = json.loads(
        CliRunner().invoke(main, ["verify", "--json", str(source), str(out)]).stdout
    )
    assert report["input_size"] == [150, 150]
    assert [c["map_shape"] for c in report["spatial"]] == [[3, 3]]  # (4 + 2) * 32 = 192
