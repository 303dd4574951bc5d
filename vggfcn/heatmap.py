"""Class-score heatmaps: spread a score map back over the image it came from, and colour it.

Score-map cell (i, j) is the classifier applied to the window whose top-left corner is
(32i, 32j): 7x7 blocks of 32 pixels (224x224) for a stock VGG, p_h x p_w blocks for a network
built for another size (`FCN.window`). Neighbouring windows overlap by all but 32 pixels, so a
pixel is seen by up to 7x7 cells. A pixel's value is the MEAN probability of the cells whose
windows cover it. The max would paint a confident cell's whole window at its peak, hiding where
inside it the evidence is; the mean peaks where covering windows agree, which localizes to
32-pixel blocks.
Pixels no window covers (the bottom/right remainder when a side is not a multiple of 32) get
value 0 and are left as they are in the image: no evidence is not evidence of absence.

Rendering returns pixels; `encode_png` returns bytes. Writing files (atomically) is the
caller's business.
"""

from __future__ import annotations

import io

import numpy as np

from .arch import POOL5_SIZE, STRIDE
from .errors import VggfcnError
from .images import require_pillow

#: A stock VGG cell's window in STRIDE-sized blocks: 7x7 blocks of 32 = 224x224 pixels.
WINDOW_BLOCKS = (POOL5_SIZE, POOL5_SIZE)

#: Colour-map anchors (value, R, G, B): matplotlib's "inferno" sampled at 0, 1/4, 1/2, 3/4, 1
#: and interpolated linearly. Its brightness rises monotonically, so the map reads correctly in
#: grayscale and for colour-blind viewers, and the hottest cell is the brightest.
COLORMAP = np.array(
    [
        [0.00, 0, 0, 4],
        [0.25, 87, 16, 110],
        [0.50, 188, 55, 84],
        [0.75, 249, 142, 9],
        [1.00, 252, 255, 164],
    ],
    dtype=np.float64,
)


def pixel_scores(
    cell_probs: np.ndarray,
    height: int,
    width: int,
    window: tuple[int, int] = WINDOW_BLOCKS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean probability of the windows covering each pixel, and which pixels any covers.

    Args:
        cell_probs: (h, w) probabilities of one class, the score map of a height x width input.
        height, width: the input's size; the map must be (height//32 - p_h + 1, ...).
        window: (p_h, p_w), a cell's window in blocks of 32 pixels.
    Returns:
        (values, covered): (height, width) float32 in [0, 1] (0 where uncovered) and bool.
    Raises:
        VggfcnError: the map does not belong to an input of this size, or holds values
            outside [0, 1] (logits instead of probabilities?).
    """
    _check_cells(cell_probs, height, width, window)
    h, w = cell_probs.shape
    bh, bw = h + window[0] - 1, w + window[1] - 1  # blocks covered by some window
    total = np.zeros((bh, bw))
    count = np.zeros((bh, bw))
    for di in range(window[0]):  # cell (i, j) covers blocks i..i+p_h-1 x j..j+p_w-1
        for dj in range(window[1]):
            total[di : di + h, dj : dj + w] += cell_probs
            count[di : di + h, dj : dj + w] += 1
    blocks = total / count
    values = np.zeros((height, width), dtype=np.float32)
    values[: bh * STRIDE, : bw * STRIDE] = blocks.repeat(STRIDE, axis=0).repeat(STRIDE, axis=1)
    covered = np.zeros((height, width), dtype=bool)
    covered[: bh * STRIDE, : bw * STRIDE] = True
    return values, covered


def overlay(
    image_rgb: np.ndarray,
    cell_probs: np.ndarray,
    *,
    alpha: float = 0.5,
    window: tuple[int, int] = WINDOW_BLOCKS,
) -> np.ndarray:
    """The image with one class's probabilities blended over it as a colour map.

    Args:
        image_rgb: (H, W, 3) uint8 RGB, the image the score map was computed from.
        cell_probs: (H//32 - p_h + 1, W//32 - p_w + 1) probabilities of one class.
        alpha: weight of the colour map where windows cover the image (0 = image only).
        window: (p_h, p_w), a cell's window in blocks of 32 pixels.
    Returns:
        (H, W, 3) uint8; pixels no window covers are the image's own.
    Raises:
        VggfcnError: see `pixel_scores`; also a non-RGB image or alpha outside [0, 1].
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise VggfcnError(
            f"an overlay needs an (H, W, 3) uint8 RGB image, got {image_rgb.dtype} "
            f"{image_rgb.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise VggfcnError(f"overlay alpha must be in [0, 1], got {alpha}")
    values, covered = pixel_scores(cell_probs, image_rgb.shape[0], image_rgb.shape[1], window)
    blend = np.where(covered, np.float32(alpha), np.float32(0))[..., np.newaxis]
    mixed = (1 - blend) * image_rgb + blend * _colorize(values)
    out: np.ndarray = np.rint(mixed).clip(0, 255).astype(np.uint8)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image (needs Pillow, the `images` extra)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise VggfcnError(f"a PNG needs an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    require_pillow()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def _colorize(values: np.ndarray) -> np.ndarray:
    """(...) values in [0, 1] -> (..., 3) float64 RGB in 0..255 through `COLORMAP`."""
    anchors = COLORMAP[:, 0]
    return np.stack([np.interp(values, anchors, COLORMAP[:, c]) for c in (1, 2, 3)], axis=-1)


def _check_cells(cell_probs: np.ndarray, height: int, width: int, window: tuple[int, int]) -> None:
    expected = (height // STRIDE - window[0] + 1, width // STRIDE - window[1] + 1)
    if expected[0] < 1 or expected[1] < 1:
        raise VggfcnError(
            f"a {height}x{width} image is smaller than one {window[0] * STRIDE}x"
            f"{window[1] * STRIDE} window; it has no score map to overlay"
        )
    if cell_probs.shape != expected:
        raise VggfcnError(
            f"a score map of shape {cell_probs.shape} does not belong to a {height}x{width} "
            f"image, which gives {expected[0]}x{expected[1]}"
        )
    if not np.isfinite(cell_probs).all() or cell_probs.min() < 0 or cell_probs.max() > 1:
        raise VggfcnError(
            "score-map values must be probabilities in [0, 1] (apply softmax to logits), got "
            f"{cell_probs.min():g}..{cell_probs.max():g}"
        )
