"""Heatmaps (`heatmap.py`, `vggfcn heatmap`): per-pixel scores and the PNG overlay, checked
against hand-derived window geometry; the command's PNG and its refusals.

Class names (`--class tabby`, `--labels`) are tested in test_class_names.py.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.helpers import write_image
from vggfcn.cli import main
from vggfcn.dense import heatmap_file, predict_file
from vggfcn.errors import VggfcnError
from vggfcn.heatmap import encode_png, overlay, pixel_scores
from vggfcn.predict import class_probabilities

# A 270x300 image: 8x9 blocks of 32 (+14 and +12 uncovered pixels) -> a (2, 3) score map.
H, W = 270, 300
PROBS = np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.9]], dtype=np.float32)


def test_pixel_scores_average_the_windows_covering_each_pixel() -> None:
    # One row of two cells on a 224x256 image: cols 0..32 seen by cell 0 only, 32..224 by both,
    # 224..256 by cell 1 only.
    values, covered = pixel_scores(np.array([[0.2, 0.6]]), 224, 256)
    assert values.shape == (224, 256)
    assert covered.all()
    np.testing.assert_allclose(values[100, [0, 31]], [0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(values[100, [32, 223]], [0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(values[100, [224, 255]], [0.6, 0.6], rtol=1e-6)


def test_pixel_scores_leave_the_remainder_uncovered_and_zero() -> None:
    values, covered = pixel_scores(PROBS, H, W)
    assert covered[:256, :288].all()
    assert not covered[256:, :].any()
    assert not covered[:, 288:].any()
    assert (values[256:, :] == 0).all() and (values[:, 288:] == 0).all()
    # The block covered by cell (1, 2) alone: rows 224..256, cols 256..288.
    np.testing.assert_allclose(values[224:256, 256:288], 0.9, rtol=1e-6)
    # The centre block (rows 192..224, cols 192..224) is seen by all six cells.
    np.testing.assert_allclose(values[200, 200], PROBS.mean(), rtol=1e-6)


def test_overlay_keeps_size_and_leaves_uncovered_pixels_alone() -> None:
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = overlay(image, PROBS)
    assert out.shape == (H, W, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[256:], image[256:])
    np.testing.assert_array_equal(out[:, 288:], image[:, 288:])
    assert (out[:256, :288] != image[:256, :288]).any()


def test_overlay_is_hottest_inside_the_strongest_cells_window() -> None:
    out = overlay(np.zeros((H, W, 3), dtype=np.uint8), PROBS).astype(int)
    brightness = out.sum(axis=-1)
    y, x = np.unravel_index(np.argmax(brightness), brightness.shape)
    assert 32 * 1 <= y < 32 * 1 + 224 and 32 * 2 <= x < 32 * 2 + 224  # cell (1, 2)'s window
    assert 224 <= y < 256 and 256 <= x < 288  # ...in the block only that cell sees
    assert brightness[240, 270] > brightness[10, 10]  # cell (0, 0)'s own block is darker


def test_overlay_alpha_zero_is_the_image() -> None:
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, PROBS, alpha=0.0), image)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.zeros((3, 3)), r"shape \(3, 3\) does not belong to a 270x300 image, which gives 2x3"),
        (PROBS * 10, r"probabilities in \[0, 1\]"),
        (np.full((2, 3), np.nan), r"probabilities in \[0, 1\]"),
    ],
)
def test_overlay_refuses_maps_that_do_not_fit(probs: np.ndarray, match: str) -> None:
    with pytest.raises(VggfcnError, match=match):
        overlay(np.zeros((H, W, 3), dtype=np.uint8), probs)


def test_overlay_refuses_an_image_smaller_than_a_window() -> None:
    with pytest.raises(VggfcnError, match="smaller than one 224x224 window"):
        overlay(np.zeros((200, 300, 3), dtype=np.uint8), np.zeros((0, 3)))


def test_encode_png_round_trips_through_pillow() -> None:
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = encode_png(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (40, 30)  # Pillow says (width, height)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), image)


def test_encode_png_without_pillow_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(VggfcnError, match=r"pip install pillow .*pip install '\.\[images\]'"):
        encode_png(np.zeros((2, 2, 3), dtype=np.uint8))


# ------------------------------------------------------------ vggfcn heatmap


def test_heatmap_png_has_input_size_and_marks_the_strongest_cell(
    fcn_file: Path, tmp_path: Path
) -> None:
    image = write_image(tmp_path / "in.png", 300, 352, seed=3)
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
    with Image.open(out) as png:  # the image, its width, with the legend below it
        assert png.format == "PNG" and png.size[0] == 352 and png.size[1] > 300
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
    image = write_image(tmp_path / "in.png", 224, 224)
    result = runner.invoke(
        main, ["heatmap", "-c", "tabby", "-o", str(tmp_path / "m.png"), str(fcn_file), str(image)]
    )
    assert (
        result.exit_code == 2
        and "names are known only for the 1000 ImageNet classes" in result.stderr
    )
    assert not (tmp_path / "m.png").exists()
