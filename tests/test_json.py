"""One JSON vocabulary for every command (docs/json.md): the keys each command prints are the
ones the page lists, an error is a JSON object too, and the values say what they mean."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fixtures.generate import TINY, write_checkpoint
from tests.helpers import run
from vggfcn.verify import sample_images

DOC = Path(__file__).parent.parent / "docs" / "json.md"


def documented() -> dict[str, list[str]]:
    """command -> its keys, from the table of docs/json.md."""
    rows = re.findall(r"^\| `?([a-z ]+?)`? \| (.+) \|$", DOC.read_text(), re.MULTILINE)
    return {name: re.findall(r"`(\w+)`", keys) for name, keys in rows if name != "command"}


def as_json(*args: object, code: int = 0) -> dict[str, Any]:
    result = run(*args, "--json")
    assert result.exit_code == code, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


@pytest.fixture
def files(keras1: Path, tmp_path: Path) -> dict[str, Path]:
    fcn = tmp_path / "fcn.safetensors"
    assert run("convert", keras1, fcn).exit_code == 0
    array = tmp_path / "x.npy"
    np.save(array, sample_images(1, seed=1, size=256)[0])
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(image)
    return {"original": keras1, "fcn": fcn, "npy": array, "png": image}


def test_every_command_prints_the_documented_keys(files: dict[str, Path], tmp_path: Path) -> None:
    keys = documented()
    assert set(keys) == {"convert", "verify", "predict", "heatmap", "inspect", "an error"}
    printed = {
        "convert": as_json("convert", files["original"], tmp_path / "o.onnx"),
        "verify": as_json("verify", files["original"], files["fcn"]),
        "predict": as_json("predict", files["fcn"], files["npy"], "--cells"),
        "heatmap": as_json(
            "heatmap", files["fcn"], files["png"], "-c", "3", "-o", tmp_path / "h.png"
        ),
        "inspect": as_json("inspect", files["fcn"]),
        "an error": as_json("inspect", tmp_path / "missing.h5", code=2),
    }
    for command, found in printed.items():
        assert list(found) == keys[command], command
        assert found["command"] == (command if command != "an error" else "inspect")


def test_paths_are_named_by_their_argument(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    converted = as_json("convert", files["original"], out)
    assert (converted["source"], converted["output"]) == (str(files["original"]), str(out))
    predicted = as_json("predict", files["fcn"], files["npy"])
    assert (predicted["weights"], predicted["input"], predicted["output"]) == (
        str(files["fcn"]),
        str(files["npy"]),
        None,
    )
    checked = as_json("verify", files["original"], files["fcn"])
    assert (checked["original"], checked["converted"]) == (
        str(files["original"]),
        str(files["fcn"]),
    )


def test_a_window_says_its_order(files: dict[str, Path]) -> None:
    predicted = as_json("predict", files["fcn"], files["npy"], "--cells")
    assert (
        predicted["top"][0][0]["window"]["bottom"] - predicted["top"][0][0]["window"]["top"] == 224
    )
    cells = predicted["cells"]
    assert cells[0]["window"] == {"top": 0, "left": 0, "bottom": 224, "right": 224}
    assert cells[1]["window"] == {"top": 0, "left": 32, "bottom": 224, "right": 256}


def test_convert_and_inspect_say_the_same_of_a_file(files: dict[str, Path], tmp_path: Path) -> None:
    """inspect reports what the file holds: an ONNX output's OIHW kernels, as convert said."""
    out = tmp_path / "o.onnx"
    converted = as_json("convert", files["original"], out)
    inspected = as_json("inspect", out)
    stored = ("format", "layout", "names", "dtype")
    assert [converted[k] for k in stored] == [inspected[k] for k in stored]
    assert [converted[k] for k in stored] == ["onnx", "OIHW", "source", "float32"]
    assert inspected["layers"][13]["kernel_shape"] == list(converted["fc6_shape"])


def test_an_error_is_one_json_object_and_one_stderr_line(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.onx"
    result = run("convert", "--json", keras1, out)
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error == {"command": "convert", "error": error["error"], "exit": 2}
    assert result.stderr == f"vggfcn: error: {error['error']}\n" and str(out) in error["error"]


def test_top5_is_null_where_it_says_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    """The tiny VGG has 10 classes: top-5 is measured. A 5-class one: every top-5 set is
    every class, so there is no top-5 figure (and no 'top-5 agreement 9/9' line)."""
    assert as_json("verify", files["original"], files["fcn"])["top5_agreement"] == 1.0
    five = tmp_path / "five.h5"
    write_checkpoint(five, "keras1", replace(TINY, classes=5), seed=0)
    out = tmp_path / "five.safetensors"
    assert run("convert", five, out).exit_code == 0
    assert as_json("verify", five, out)["top5_agreement"] is None
    text = run("verify", five, out)
    assert "top-1 agreement   9/9" in text.stdout and "top-5" not in text.stdout
