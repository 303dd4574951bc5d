"""Dense prediction from the CLI and the API: map shapes, inputs, outputs, heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vggfcn import forward
from vggfcn.api import convert_file, heatmap_file, predict_file
from vggfcn.cli import main
from vggfcn.formats import load
from vggfcn.images import preprocess_image
from vggfcn.predict import class_probabilities, top_cells


@pytest.fixture
def fcn_file(keras1: Path, tmp_path: Path) -> Path:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(keras1), str(out))
    return out


def _image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize(("h", "w"), [(224, 224), (256, 300), (480, 320), (255, 263)])
def test_map_shape_rule(fcn_file: Path, tmp_path: Path, h: int, w: int) -> None:
    x = np.random.default_rng(1).uniform(-100, 100, (2, h, w, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = predict_file(str(fcn_file), str(tmp_path / "x.npy"))
    assert result.scores.shape == (2, h // 32 - 6, w // 32 - 6, 10)
    assert result.preprocess == "none"


def test_original_checkpoint_predicts_like_its_conversion(
    keras1: Path, fcn_file: Path, tmp_path: Path
) -> None:
    np.save(
        tmp_path / "x.npy",
        np.random.default_rng(2).uniform(-100, 100, (288, 320, 3)).astype(np.float32),
    )
    from_original = predict_file(str(keras1), str(tmp_path / "x.npy")).scores
    from_converted = predict_file(str(fcn_file), str(tmp_path / "x.npy")).scores
    np.testing.assert_array_equal(from_original, from_converted)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_predict_on_real_image_files(fcn_file: Path, tmp_path: Path, suffix: str) -> None:
    image = _image(tmp_path / f"in{suffix}", 256, 320)
    out = tmp_path / "scores.npy"
    result = CliRunner().invoke(
        main, ["predict", "--json", "--top", "2", "-o", str(out), str(fcn_file), str(image)]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shape"] == [1, 2, 4, 10] and report["preprocess"] == "caffe"
    assert len(report["cells"]) == 8 and all(len(c["top"]) == 2 for c in report["cells"])
    assert report["cells"][5]["window"] == [32, 32, 256, 256]  # cell (1, 1)
    saved = np.load(out)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    with load(str(fcn_file)) as w:
        expected = forward.logits(w, preprocess_image(rgb, "caffe")[np.newaxis])
    np.testing.assert_allclose(saved, expected, rtol=1e-6, atol=1e-5)
    best = int(np.argmax(saved[0, 1, 1]))
    assert report["cells"][5]["top"][0]["index"] == best


def test_predict_text_output_names_windows(fcn_file: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "in.png", 224, 256)
    result = CliRunner().invoke(main, ["predict", str(fcn_file), str(image)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "-> 1x2 map of 10 classes" in lines[0]
    assert lines[2].startswith("  [0] cell (0,1) window y 0-224 x 32-256: ")
    assert lines[2].count("class ") == 3


def test_top_cells_use_imagenet_names_for_1000_classes() -> None:
    scores = np.zeros((1, 1, 2, 1000), np.float32)
    scores[0, 0, 1, 281] = 5.0
    cells = top_cells(scores, 1, (224, 224))
    assert cells[1].top[0].name == "tabby" and cells[1].top[0].probability > 0.1
    np.testing.assert_allclose(
        class_probabilities(scores, 281).sum(), 1 / 1000 + cells[1].top[0].probability, rtol=1e-5
    )


def test_predict_errors_are_one_line(fcn_file: Path, tmp_path: Path) -> None:
    small = _image(tmp_path / "small.png", 100, 300)
    runner = CliRunner()
    result = runner.invoke(main, ["predict", str(fcn_file), str(small)])
    assert result.exit_code == 2 and "224" in result.stderr and str(small) in result.stderr
    np.save(tmp_path / "x.npy", np.zeros((224, 224, 3), np.float32))
    result = runner.invoke(
        main, ["predict", "--preprocess", "caffe", str(fcn_file), str(tmp_path / "x.npy")]
    )
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    out = tmp_path / "exists.npy"
    out.write_bytes(b"keep")
    result = runner.invoke(
        main, ["predict", "-o", str(out), str(fcn_file), str(tmp_path / "x.npy")]
    )
    assert (
        result.exit_code == 2 and "already exists" in result.stderr and out.read_bytes() == b"keep"
    )


def test_heatmap_png_has_input_size_and_marks_the_strongest_cell(
    fcn_file: Path, tmp_path: Path
) -> None:
    image = _image(tmp_path / "in.png", 300, 352, seed=3)
    scores = predict_file(str(fcn_file), str(image)).scores
    target = int(np.argmax(scores.max(axis=(0, 1, 2))))
    probabilities = class_probabilities(scores, target)[0]
    strongest = np.unravel_index(int(np.argmax(probabilities)), probabilities.shape)
    out = tmp_path / "map.png"
    result = CliRunner().invoke(
        main,
        ["heatmap", "--json", "--class", str(target), "-o", str(out), str(fcn_file), str(image)],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert tuple(report["hottest_cell"]) == tuple(int(v) for v in strongest)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (352, 300)
    assert heatmap_file  # the API entry point behind the command


def test_heatmap_refuses_arrays_and_unknown_names(fcn_file: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((224, 224, 3), np.float32))
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "heatmap",
            "-c",
            "0",
            "-o",
            str(tmp_path / "m.png"),
            str(fcn_file),
            str(tmp_path / "x.npy"),
        ],
    )
    assert result.exit_code == 2 and "needs an image file" in result.stderr
    image = _image(tmp_path / "in.png", 224, 224)
    result = runner.invoke(
        main, ["heatmap", "-c", "tabby", "-o", str(tmp_path / "m.png"), str(fcn_file), str(image)]
    )
    assert (
        result.exit_code == 2
        and "names are known only for the 1000 ImageNet classes" in result.stderr
    )
    assert not (tmp_path / "m.png").exists()
