"""Heatmaps, softmax and ImageNet names, checked against hand-derived window geometry."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from vggfcn.errors import VggfcnError
from vggfcn.heatmap import encode_png, overlay, pixel_scores
from vggfcn.imagenet import class_index, class_names, label
from vggfcn.predict import softmax

# A 270x300 image: 8x9 blocks of 32 (+14 and +12 uncovered pixels) -> a (2, 3) score map.
H, W = 270, 300
PROBS = np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.9]], dtype=np.float32)


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
    with pytest.raises(VggfcnError, match=r"pip install 'vggfcn\[images\]'"):
        encode_png(np.zeros((2, 2, 3), dtype=np.uint8))


def test_imagenet_has_1000_names_in_torchvision_order() -> None:
    names = class_names()
    assert len(names) == 1000
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[281] == "tabby"
    assert names[999] == "toilet tissue"
    names.clear()  # the caller's copy; the table itself is untouched
    assert class_names()[281] == "tabby"


@pytest.mark.parametrize(("text", "index"), [("281", 281), ("tabby", 281), ("Tabby", 281)])
def test_class_index_by_number_or_name(text: str, index: int) -> None:
    assert class_index(text, 1000) == index


def test_names_differing_only_in_case_resolve_exactly_or_not_at_all() -> None:
    assert class_index("Cardigan", 1000) == 264  # the corgi
    assert class_index("cardigan", 1000) == 474  # the sweater
    with pytest.raises(VggfcnError, match="ambiguous"):
        class_index("CARDIGAN", 1000)


def test_misspelled_name_suggests_the_real_one() -> None:
    with pytest.raises(
        VggfcnError, match=r"unknown ImageNet class 'tabbby'.*did you mean.*'tabby' \(281\)"
    ):
        class_index("tabbby", 1000)


def test_names_need_an_imagenet_network() -> None:
    with pytest.raises(VggfcnError, match=r"this network has 10, give an index 0\.\.9"):
        class_index("tabby", 10)


@pytest.mark.parametrize("text", ["10", "-1"])
def test_index_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(VggfcnError, match=r"out of range.*0\.\.9"):
        class_index(text, 10)


def test_label_names_imagenet_classes_only() -> None:
    assert label(281, 1000) == "tabby"
    assert label(3, 10) == "class 3"
