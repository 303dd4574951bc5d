"""Image and array inputs: preprocessing against hand-computed constants, real files from Pillow."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vggfcn.errors import FormatError, VggfcnError
from vggfcn.images import load_image, load_input, preprocess_image

PIXEL = np.array([[[10, 20, 30]]], dtype=np.uint8)  # one RGB pixel: R=10, G=20, B=30


def test_caffe_is_bgr_minus_the_keras_imagenet_means() -> None:
    out = preprocess_image(PIXEL, "caffe")
    assert out.dtype == np.float32
    assert out.shape == (1, 1, 3)
    np.testing.assert_allclose(out[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_torch_is_rgb_scaled_and_standardized() -> None:
    out = preprocess_image(PIXEL, "torch")
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_none_keeps_pixels_as_float() -> None:
    out = preprocess_image(PIXEL, "none")
    assert out.dtype == np.float32
    assert out[0, 0].tolist() == [10.0, 20.0, 30.0]


def test_unknown_mode_lists_the_choices() -> None:
    with pytest.raises(VggfcnError, match="caffe, torch, none"):
        preprocess_image(PIXEL, "keras")


def _save(path: Path, array: np.ndarray, **kwargs: Any) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _red(height: int = 4, width: int = 5) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 255
    return image


def test_png_reads_back_exactly_in_rgb_order(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 0)
    out = load_image(str(_save(tmp_path / "x.png", image)))
    assert out.dtype == np.uint8
    assert out.shape == (6, 7, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(out, image)


def test_jpeg_reads_approximately(tmp_path: Path) -> None:
    out = load_image(str(_save(tmp_path / "x.jpg", _red(16, 24), quality=95)))
    assert out.shape == (16, 24, 3)
    assert out[..., 0].min() > 240  # red stays red...
    assert out[..., 1:].max() < 15  # ...and green, blue stay near zero


def test_grayscale_is_expanded_to_rgb(tmp_path: Path) -> None:
    gray = np.full((3, 4), 77, dtype=np.uint8)
    out = load_image(str(_save(tmp_path / "g.png", gray)))
    assert out.shape == (3, 4, 3)
    assert out.reshape(-1).tolist() == [77] * 36


def test_rgba_drops_alpha_and_composites_transparency_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[1, 1] = (0, 255, 0, 0)  # fully transparent green: shows as white
    out = load_image(str(_save(tmp_path / "a.png", rgba)))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_palette_image_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(_red()).convert("P").save(path)
    assert load_image(str(path))[0, 0].tolist() == [255, 0, 0]


def test_text_named_png_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(FormatError, match=r"notes\.png: not a readable image"):
        load_image(str(path))


def test_truncated_png_is_a_format_error(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "cut.png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    )
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FormatError, match=r"cut\.png"):
        load_image(str(path))


def test_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"absent\.png: no such file"):
        load_input(str(tmp_path / "absent.png"), "caffe")


def test_missing_pillow_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(tmp_path / "x.png", _red())
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(VggfcnError, match=r"pip install pillow .*pip install '\.\[images\]'"):
        load_image(str(path))


def test_image_input_is_preprocessed_into_a_batch(tmp_path: Path) -> None:
    path = _save(tmp_path / "red.png", _red(224, 230))
    out = load_input(str(path), "caffe")
    assert out.shape == (1, 224, 230, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 5, 7], [0 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)


def test_small_image_is_refused_naming_224_and_its_size(tmp_path: Path) -> None:
    path = _save(tmp_path / "small.png", _red(100, 100))
    with pytest.raises(VggfcnError, match=r"small\.png: input is 100x100.*at least 224x224"):
        load_input(str(path), "caffe")


def _npy(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)


def test_npy_hwc_becomes_a_batch_of_one(tmp_path: Path) -> None:
    array = np.random.default_rng(2).standard_normal((224, 225, 3))  # float64 on disk
    out = load_input(_npy(tmp_path / "x.npy", array), "none")
    assert out.shape == (1, 224, 225, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], array.astype(np.float32))


def test_npy_batch_is_kept(tmp_path: Path) -> None:
    array = np.arange(2 * 224 * 224 * 3, dtype=np.float32).reshape(2, 224, 224, 3)
    out = load_input(_npy(tmp_path / "b.npy", array), "none")
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(out, array)


def test_npy_is_sniffed_not_judged_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "batch.dat"
    with open(path, "wb") as f:
        np.save(f, np.zeros((224, 224, 3), dtype=np.float32))
    assert load_input(str(path), "none").shape == (1, 224, 224, 3)


def test_object_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match=r"obj\.npy: .*object array.*never unpickled"):
        load_input(str(path), "none")


def test_integer_npy_is_refused(tmp_path: Path) -> None:
    path = _npy(tmp_path / "u8.npy", np.zeros((224, 224, 3), dtype=np.uint8))
    with pytest.raises(FormatError, match="uint8, expected float"):
        load_input(path, "none")


@pytest.mark.parametrize("shape", [(224, 224), (224, 224, 4), (1, 1, 224, 224, 3)])
def test_npy_of_wrong_shape_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = _npy(tmp_path / "s.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(FormatError, match=r"expected \(H, W, 3\) or \(N, H, W, 3\)"):
        load_input(path, "none")


def test_npy_with_nan_is_refused(tmp_path: Path) -> None:
    array = np.zeros((224, 224, 3), dtype=np.float32)
    array[3, 4, 1] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        load_input(_npy(tmp_path / "nan.npy", array), "none")


def test_small_npy_is_refused_naming_224(tmp_path: Path) -> None:
    path = _npy(tmp_path / "s.npy", np.zeros((3, 224, 200, 3), dtype=np.float32))
    with pytest.raises(VggfcnError, match=r"input is 224x200.*at least 224x224"):
        load_input(path, "none")


def test_npy_with_preprocessing_is_refused_not_preprocessed_twice(tmp_path: Path) -> None:
    path = _npy(tmp_path / "x.npy", np.zeros((224, 224, 3), dtype=np.float32))
    with pytest.raises(VggfcnError, match="already preprocessed.*'none'"):
        load_input(path, "caffe")


def test_corrupt_npy_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(FormatError, match=r"bad\.npy"):
        load_input(str(path), "none")


def test_unknown_preprocessing_is_refused_for_any_input(tmp_path: Path) -> None:
    path = _npy(tmp_path / "x.npy", np.zeros((224, 224, 3), dtype=np.float32))
    with pytest.raises(VggfcnError, match="choose one of caffe, torch, none"):
        load_input(path, "vgg")
