"""Network inputs from image files or preprocessed .npy arrays, channels-last float32.

Pillow is an optional extra (`vggfcn[images]`): converting checkpoints never needs it, so it is
imported only when an image is actually read. A `.npy` array is taken as already preprocessed
and is never preprocessed again: applying "caffe" twice would silently shift every pixel by
the mean, so asking for it is an error rather than a guess.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .arch import MIN_INPUT
from .choices import PREPROCESS_MODES
from .errors import AssumptionWarning, FormatError, VggfcnError
from .formats.detect import NPY_MAGIC

if TYPE_CHECKING:
    from PIL import Image

#: ImageNet channel means in BGR order, subtracted by Keras `imagenet_utils.preprocess_input`
#: in its default "caffe" mode (the mode of Keras' VGG16/VGG19), after flipping RGB to BGR.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

#: ImageNet per-channel mean and standard deviation (RGB, on 0..1 pixels) that torchvision's
#: classification presets (`transforms._presets.ImageClassification`) normalize with.
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)


_PILLOW_MISSING = (
    "reading images needs Pillow, vggfcn's `images` extra: pip install pillow "
    "(or pip install '.[images]' from vggfcn's folder)"
)


def load_image(path: str) -> np.ndarray:
    """Read any image Pillow understands as (H, W, 3) uint8 RGB.

    Grayscale and palette images are expanded to RGB; transparent pixels are composited over
    white (what a viewer shows), because the colour stored under alpha 0 is arbitrary. EXIF
    orientation is applied so that score-map cells line up with the picture as people see it.

    Raises:
        VggfcnError: Pillow is not installed.
        FormatError: the file is missing, unreadable, corrupt or not an image.
    """
    require_pillow()
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            rgb = _to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise FormatError(f"{path}: not a readable image ({e})") from None
    return np.asarray(rgb, dtype=np.uint8)


def preprocess_image(rgb_uint8: np.ndarray, mode: str, order: str | None = None) -> np.ndarray:
    """Normalize 0..255 RGB pixels the way the checkpoint's trainers did.

    Args:
        rgb_uint8: (H, W, 3) RGB pixels in 0..255.
        mode: "caffe" (Keras VGG16/VGG19: BGR, minus `CAFFE_BGR_MEAN`, no scaling),
            "torch" (torchvision: RGB, x/255, minus `TORCH_RGB_MEAN`, over `TORCH_RGB_STD`)
            or "none" (pixels unchanged, as float32).
        order: the channel order the network takes, "rgb" or "bgr"; by default the mode's
            own (a Caffe model converted with --rgb takes caffe-normalised RGB).
    Returns:
        (H, W, 3) float32.
    Raises:
        VggfcnError: unknown mode, or not an (H, W, 3) array.

    >>> bgr = preprocess_image(np.array([[[10, 20, 30]]], np.uint8), "caffe")[0, 0]
    >>> [round(float(v), 3) for v in bgr]  # 30 - 103.939, 20 - 116.779, 10 - 123.68
    [-73.939, -96.779, -113.68]
    """
    _check_mode(mode)
    if rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise VggfcnError(f"an image must be (H, W, 3) RGB, got shape {rgb_uint8.shape}")
    x = rgb_uint8.astype(np.float32)
    if mode == "caffe":
        x = x - np.array(CAFFE_BGR_MEAN[::-1], dtype=np.float32)  # the means of R, G, B
    elif mode == "torch":
        mean = np.array(TORCH_RGB_MEAN, dtype=np.float32)
        std = np.array(TORCH_RGB_STD, dtype=np.float32)
        x = (x / np.float32(255) - mean) / std
    bgr = order == "bgr" if order in ("rgb", "bgr") else mode == "caffe"
    return x[..., ::-1] if bgr else x


def load_input(
    path: str,
    preprocess: str,
    minimum: tuple[int, int] = (MIN_INPUT, MIN_INPUT),
    order: str | None = None,
    channels_first: bool | None = None,
) -> np.ndarray:
    """Network input from an image file or a .npy array: (N, H, W, 3) float32.

    A file starting with the .npy magic is an array of already-preprocessed pixels, (H, W, 3)
    or (N, H, W, 3) float — or (3, H, W), (N, 3, H, W) from torch pipelines, with
    `channels_first`, or when None and only that reading fits — read without unpickling;
    `preprocess` must then be "none". Anything else is read as an image and preprocessed with
    `preprocess` (see `preprocess_image`).

    Warns:
        AssumptionWarning: an array taken as channels-first because only that reading fits.

    Raises:
        VggfcnError: unknown mode, preprocessing asked for an array, input smaller than
            `minimum` (the network's window), or Pillow missing for an image.
        FormatError: unreadable file, object array, wrong dtype or shape.
    """
    _check_mode(preprocess)
    if is_npy(path):
        batch = _load_array(path, preprocess, channels_first)
    else:
        batch = preprocess_image(load_image(path), preprocess, order)[np.newaxis]
    check_size(path, batch.shape[1], batch.shape[2], minimum)
    return batch


def require_pillow() -> None:
    """Fail with the one-line install hint when the optional `images` extra is absent."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise VggfcnError(_PILLOW_MISSING) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of a Pillow image, with any transparency composited over white."""
    from PIL import Image

    if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _check_mode(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise VggfcnError(
            f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}"
        )


def is_npy(path: str) -> bool:
    """Whether the file starts with the .npy magic; sniffed, so the file's name does not matter."""
    if os.path.isdir(path):
        raise FormatError(f"{path}: is a directory, expected an image or a .npy file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    return head == NPY_MAGIC


def _load_array(path: str, preprocess: str, channels_first: bool | None) -> np.ndarray:
    """A preprocessed .npy batch as (N, H, W, 3) float32, refusing pickles and raw pixels."""
    if preprocess != "none":
        raise VggfcnError(
            f"{path}: a .npy input is taken as already preprocessed; use preprocessing 'none' "
            f"(got {preprocess!r}), or pass the image file instead"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise FormatError(
                f"{path}: holds Python objects (an object array); only numeric arrays are read, "
                "never unpickled"
            ) from None
        raise FormatError(f"{path}: corrupt .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise FormatError(f"{path}: corrupt .npy file ({e})") from None
    if not isinstance(array, np.ndarray):
        raise FormatError(f"{path}: expected a single array")
    return _as_batch(path, array, channels_first)


def _as_batch(path: str, array: np.ndarray, channels_first: bool | None) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        raise FormatError(
            f"{path}: array of {array.dtype}, expected float (preprocessed pixels); pass raw "
            "pixels as an image file so they get preprocessed"
        )
    last = array.ndim in (3, 4) and array.shape[-1] == 3
    first = array.ndim in (3, 4) and array.shape[-3] == 3
    if channels_first is None and first and not last:
        warnings.warn(
            AssumptionWarning(
                f"{path}: an array of shape {array.shape} read as channels-first (N, 3, H, W), "
                "as torch pipelines save them (--channels-last refuses that reading)"
            ),
            stacklevel=4,
        )
        channels_first = True
    if channels_first:
        if not first:
            raise FormatError(
                f"{path}: array of shape {array.shape}, expected (3, H, W) or (N, 3, H, W) "
                "channels-first"
            )
        array = np.moveaxis(array, -3, -1)
    elif not last:
        raise FormatError(
            f"{path}: array of shape {array.shape}, expected (H, W, 3) or (N, H, W, 3) "
            "channels-last, or (N, 3, H, W) with --channels-first"
        )
    batch = array.astype(np.float32).reshape((-1, *array.shape[-3:]))
    if batch.shape[0] == 0:
        raise FormatError(f"{path}: array holds no images (N = 0)")
    if not np.isfinite(batch).all():
        raise FormatError(f"{path}: array holds NaN or infinite values (or overflows float32)")
    return batch


def check_size(
    path: str, height: int, width: int, minimum: tuple[int, int] = (MIN_INPUT, MIN_INPUT)
) -> None:
    """Refuse an input smaller than the network's window (`FCN.min_input`)."""
    if height < minimum[0] or width < minimum[1]:
        raise VggfcnError(
            f"{path}: input is {height}x{width} (HxW); the network needs at least "
            f"{minimum[0]}x{minimum[1]}"
        )
