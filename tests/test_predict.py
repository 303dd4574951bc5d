"""Dense prediction (`predict.py`, `vggfcn predict`) from the CLI and the API: softmax, map
shapes, inputs, the scores and the text and JSON reports.

Heatmaps are tested in test_heatmap.py, class names in test_class_names.py, image and array
inputs in test_images.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.helpers import write_image
from vggfcn import forward
from vggfcn.cli import main
from vggfcn.dense import predict_file
from vggfcn.formats import load
from vggfcn.images import preprocess_image
from vggfcn.predict import class_probabilities, softmax, top_cells


def test_softmax_sums_to_one_and_survives_huge_logits() -> None:
    logits = np.array([[1000.0, 1000.0, 998.0], [-5.0, 0.0, 5.0]])
    probs = softmax(logits)
    assert probs.dtype == np.float32
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=-1), [1.0, 1.0], rtol=1e-6)
    e = np.exp([0.0, 0.0, -2.0])
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-6)


def test_softmax_along_another_axis() -> None:
    logits = np.zeros((4, 2, 2))  # classes along axis 0, like (classes, h, w)
    np.testing.assert_allclose(softmax(logits, axis=0), np.full((4, 2, 2), 0.25), rtol=1e-6)


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
    image = write_image(tmp_path / f"in{suffix}", 256, 320)
    out = tmp_path / "scores.npy"
    result = CliRunner().invoke(
        main,
        ["predict", "--json", "--cells", "--top", "2", "-o", str(out), str(fcn_file), str(image)],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["shape"] == [1, 2, 4, 10] and report["preprocess"] == "caffe"
    assert len(report["cells"]) == 8 and all(len(c["top"]) == 2 for c in report["cells"])
    assert report["cells"][5]["window"] == {"top": 32, "left": 32, "bottom": 256, "right": 256}
    saved = np.load(out)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    with load(str(fcn_file)) as w:
        expected = forward.logits(w, preprocess_image(rgb, "caffe")[np.newaxis])
    np.testing.assert_allclose(saved, expected, rtol=1e-6, atol=1e-5)
    best = int(np.argmax(saved[0, 1, 1]))
    assert report["cells"][5]["top"][0]["index"] == best


def test_predict_text_output_names_windows(fcn_file: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / "in.png", 224, 256)
    result = CliRunner().invoke(main, ["predict", "--cells", str(fcn_file), str(image)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "-> 1x2 map of 10 classes" in lines[0]
    assert lines[5].startswith("  [0] cell (0,1) window y 0-224 x 32-256: ")
    assert lines[5].count("class ") == 3


def test_top_cells_use_imagenet_names_for_1000_classes() -> None:
    scores = np.zeros((1, 1, 2, 1000), np.float32)
    scores[0, 0, 1, 281] = 5.0
    cells = top_cells(scores, 1, (224, 224))
    assert cells[1].top[0].name == "tabby" and cells[1].top[0].probability > 0.1
    np.testing.assert_allclose(
        class_probabilities(scores, 281).sum(), 1 / 1000 + cells[1].top[0].probability, rtol=1e-5
    )


def test_predict_errors_are_one_line(fcn_file: Path, tmp_path: Path) -> None:
    small = write_image(tmp_path / "small.png", 100, 300)
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
