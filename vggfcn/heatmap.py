"""Class-score heatmaps: spread a score map back over the image it came from, colour it, and
say what the colours mean.

Score-map cell (i, j) is the classifier applied to a window of p_h x p_w blocks of 32 pixels
(7x7, 224x224 pixels, for a stock VGG; `FCN.window` for a network built for another size).
At output stride s (32, or 16 and 8 à trous, see `atrous`) the window's top-left corner is
(s*i, s*j): in blocks of s pixels a window is (32/s)*p blocks wide and neighbouring windows
overlap by all but one block, so the map of an H x W input has floor(H/s) - (32/s)*p_h + 1
rows (likewise columns).
A pixel's value is the MEAN probability of the cells whose windows cover it. The max would
paint a confident cell's whole window at its peak, hiding where inside it the evidence is; the
mean peaks where covering windows agree, which localizes to s-pixel blocks.
Pixels no window covers (the bottom/right remainder when a side is not a multiple of s) get
value 0 and are left as they are in the image: no evidence is not evidence of absence.

Rendering returns pixels; `encode_png` returns bytes. Writing files (atomically) is the
caller's business.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from .arch import POOL5_SIZE, STRIDE
from .choices import OUTPUT_STRIDES
from .errors import VggfcnError
from .images import require_pillow

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

#: A stock VGG cell's window in blocks of 32 pixels: 7x7 blocks = 224x224 pixels.
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

#: Legend text size in pixels: at least 12 (legible at 224 px wide), else 1/40 of the width, so
#: the legend stays legible when a large image is shown shrunk to fit a screen.
_MIN_TEXT, _TEXT_PER_WIDTH = 12, 40
#: The colour bar's labelled probabilities.
_TICKS = (0.0, 0.5, 1.0)
_INK, _PAPER, _FRAME = (32, 32, 32), (255, 255, 255), (128, 128, 128)
_ELLIPSIS = "..."  # ASCII: every font Pillow may fall back to has the glyphs


def pixel_scores(
    cell_probs: np.ndarray,
    height: int,
    width: int,
    window: tuple[int, int] = WINDOW_BLOCKS,
    *,
    stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean probability of the windows covering each pixel, and which pixels any covers.

    Args:
        cell_probs: (h, w) probabilities of one class, the score map of a height x width input:
            (height//s - (32/s)*p_h + 1, ...) at output stride s.
        height, width: the input's size.
        window: (p_h, p_w), a cell's window in blocks of 32 pixels.
        stride: the map's output stride s (32, 16 or 8): cell (i, j)'s window starts at (s*i, s*j).
    Returns:
        (values, covered): (height, width) float32 in [0, 1] (0 where uncovered) and bool.
    Raises:
        VggfcnError: another output stride, a map that does not belong to an input of this size
            at this stride, or values outside [0, 1] (logits instead of probabilities?).

    >>> values, covered = pixel_scores(np.array([[0.25, 0.75]]), 224, 240, stride=16)
    >>> float(values[0, 0]), float(values[0, 100]), float(values[0, 230])
    (0.25, 0.5, 0.75)
    """
    _check_cells(cell_probs, height, width, window, stride)
    run_h, run_w = _window_in_blocks(window, stride)
    h, w = cell_probs.shape
    # A window is a product of a row run and a column run, so the sums over the windows covering
    # each block separate into two 1-D passes (k_h + k_w slice additions instead of k_h * k_w).
    total = _run_sums(_run_sums(cell_probs.astype(np.float64), run_h).T, run_w).T
    count = np.outer(_run_sums(np.ones(h), run_h), _run_sums(np.ones(w), run_w))
    blocks = total / count
    bh, bw = blocks.shape  # (height // stride, width // stride): every whole block is covered
    values = np.zeros((height, width), dtype=np.float32)
    values[: bh * stride, : bw * stride] = blocks.repeat(stride, axis=0).repeat(stride, axis=1)
    covered = np.zeros((height, width), dtype=bool)
    covered[: bh * stride, : bw * stride] = True
    return values, covered


def overlay(
    image_rgb: np.ndarray,
    cell_probs: np.ndarray,
    *,
    alpha: float = 0.5,
    window: tuple[int, int] = WINDOW_BLOCKS,
    stride: int = STRIDE,
) -> np.ndarray:
    """The image with one class's probabilities blended over it as a colour map.

    Args:
        image_rgb: (H, W, 3) uint8 RGB, the image the score map was computed from.
        cell_probs: the score map of one class's probabilities (shape: see `pixel_scores`).
        alpha: weight of the colour map where windows cover the image (0 = image only).
        window: (p_h, p_w), a cell's window in blocks of 32 pixels.
        stride: the map's output stride (32, 16 or 8).
    Returns:
        (H, W, 3) uint8; pixels no window covers are the image's own.
    Raises:
        VggfcnError: see `pixel_scores`; also a non-RGB image or alpha outside [0, 1].
    """
    _check_rgb(image_rgb, "an overlay")
    if not 0.0 <= alpha <= 1.0:
        raise VggfcnError(f"overlay alpha must be in [0, 1], got {alpha}")
    values, covered = pixel_scores(
        cell_probs, image_rgb.shape[0], image_rgb.shape[1], window, stride=stride
    )
    blend = np.where(covered, np.float32(alpha), np.float32(0))[..., np.newaxis]
    mixed = (1 - blend) * image_rgb + blend * _colorize(values)
    out: np.ndarray = np.rint(mixed).clip(0, 255).astype(np.uint8)
    return out


def render(
    image_rgb: np.ndarray,
    cell_probs: np.ndarray,
    *,
    class_name: str,
    stride: int = STRIDE,
    window: tuple[int, int] = WINDOW_BLOCKS,
    alpha: float = 0.5,
) -> np.ndarray:
    """`overlay` with a legend band below it, so the picture can be read on its own.

    A colour map without its scale is a mood, not a measurement: the band (the image's full
    width, white) shows the colour bar with its probability scale (0, 0.5, 1), the class, the
    map's maximum and the cell holding it, and the output stride. Text is drawn with Pillow's
    built-in font (no font files), its size growing with the width; a class name too long for
    the band ends in "...".

    Args:
        image_rgb, cell_probs, window, alpha: as for `overlay`.
        class_name: the class the probabilities are of (shown as given, on one line).
        stride: the map's output stride (32, 16 or 8).
    Returns:
        (H + band height, W, 3) uint8 RGB: rows :H are exactly `overlay`'s output.
    Raises:
        VggfcnError: see `overlay`; also Pillow (the `images` extra) missing.

    >>> rgb = np.zeros((224, 224, 3), np.uint8)
    >>> render(rgb, np.array([[0.9]]), class_name="tabby", stride=8).shape[0] > 224
    True
    """
    image = overlay(image_rgb, cell_probs, alpha=alpha, window=window, stride=stride)
    return np.concatenate([image, _legend(image.shape[1], cell_probs, class_name, stride)])


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image (needs Pillow, the `images` extra)."""
    _check_rgb(rgb, "a PNG")
    require_pillow()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def _legend(width: int, cell_probs: np.ndarray, class_name: str, stride: int) -> np.ndarray:
    """The (band height, width, 3) uint8 legend band of `render`.

    Rows, top to bottom: class name (left) and "stride s" (right); the colour bar, framed so
    that its black and its pale-yellow ends both show against white; tick marks and labels;
    "max p at cell (i, j)".
    """
    require_pillow()
    from PIL import Image, ImageDraw, ImageFont

    size = max(_MIN_TEXT, round(width / _TEXT_PER_WIDTH))
    font = ImageFont.load_default(size=size)
    line = int(font.getbbox("Ag(0,)")[3]) + 1  # one text line, descenders included
    pad, gap, tick = size // 2 + 2, size // 3 + 1, size // 3 + 1
    left, right = pad, width - pad  # the bar's columns, and the text's room
    bar_top = pad + line + gap
    bar_bottom = bar_top + size
    labels_top = bar_bottom + 1 + tick
    stats_top = labels_top + line + gap
    band = np.full((stats_top + line + pad, width, 3), _PAPER, dtype=np.uint8)
    ramp = np.linspace(0.0, 1.0, right - left)  # width >= 32 (one block) > 2 * pad: a bar
    band[bar_top:bar_bottom, left:right] = np.rint(_colorize(ramp)).astype(np.uint8)

    picture = Image.fromarray(band)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((left - 1, bar_top - 1, right, bar_bottom), outline=_FRAME)
    for value in _TICKS:
        x = left + round(value * (right - left - 1))
        draw.line((x, bar_bottom + 1, x, bar_bottom + tick), fill=_INK)
        label = f"{value:g}"
        half = draw.textlength(label, font=font) / 2
        draw.text((min(max(x - half, 0), width - 2 * half), labels_top), label, _INK, font)

    stride_label = f"stride {stride}"
    stride_width = draw.textlength(stride_label, font=font)
    draw.text((right - stride_width, pad), stride_label, _INK, font)
    name = " ".join(class_name.split())  # one line: a newline would leave the band
    name_room = right - left - stride_width - size
    draw.text((left, pad), _fit(draw, name, font, name_room), _INK, font)
    i, j = np.unravel_index(int(np.argmax(cell_probs)), cell_probs.shape)
    stats = f"max {float(cell_probs[i, j]):.2f} at cell ({i}, {j})"
    draw.text((left, stats_top), _fit(draw, stats, font, right - left), _INK, font)
    legend: np.ndarray = np.asarray(picture, dtype=np.uint8)
    return legend


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    room: float,
) -> str:
    """`text`, or its longest prefix ending in "..." that is at most `room` pixels wide ("" if
    not even that fits): a label must stay inside the band."""
    if draw.textlength(text, font=font) <= room:
        return text

    def fits(n: int) -> bool:
        return draw.textlength(text[:n].rstrip() + _ELLIPSIS, font=font) <= room

    shortest, longest = 0, len(text) - 1  # bisect for the longest prefix that fits
    while shortest < longest:
        middle = (shortest + longest + 1) // 2
        shortest, longest = (middle, longest) if fits(middle) else (shortest, middle - 1)
    return text[:shortest].rstrip() + _ELLIPSIS if fits(shortest) else ""


def _colorize(values: np.ndarray) -> np.ndarray:
    """(...) values in [0, 1] -> (..., 3) float64 RGB in 0..255 through `COLORMAP`."""
    anchors = COLORMAP[:, 0]
    return np.stack([np.interp(values, anchors, COLORMAP[:, c]) for c in (1, 2, 3)], axis=-1)


def _run_sums(a: np.ndarray, run: int) -> np.ndarray:
    """Along axis 0, out[b] = the sum of a[i] over the cells i whose `run` blocks i..i+run-1
    hold block b: (n + run - 1, ...) float64."""
    out = np.zeros((a.shape[0] + run - 1, *a.shape[1:]))
    for offset in range(run):
        out[offset : offset + a.shape[0]] += a
    return out


def _window_in_blocks(window: tuple[int, int], stride: int) -> tuple[int, int]:
    """A window of p_h x p_w blocks of 32 pixels, in blocks of `stride` pixels."""
    return (window[0] * (STRIDE // stride), window[1] * (STRIDE // stride))


def _map_shape(height: int, width: int, window: tuple[int, int], stride: int) -> tuple[int, int]:
    """The score map's (rows, columns) for an input of this size at this output stride."""
    run_h, run_w = _window_in_blocks(window, stride)
    return (height // stride - run_h + 1, width // stride - run_w + 1)


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise VggfcnError(f"{what} needs an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")


def _check_cells(
    cell_probs: np.ndarray, height: int, width: int, window: tuple[int, int], stride: int
) -> None:
    if stride not in OUTPUT_STRIDES:
        raise VggfcnError(
            f"output stride {stride}: expected one of {', '.join(map(str, OUTPUT_STRIDES))}"
        )
    expected = _map_shape(height, width, window, stride)
    if expected[0] < 1 or expected[1] < 1:
        raise VggfcnError(
            f"a {height}x{width} image is smaller than one {window[0] * STRIDE}x"
            f"{window[1] * STRIDE} window; it has no score map to overlay"
        )
    if cell_probs.shape != expected:
        other = [
            s for s in OUTPUT_STRIDES if _map_shape(height, width, window, s) == cell_probs.shape
        ]
        hint = f" (it is the shape at output stride {other[0]})" if other else ""
        raise VggfcnError(
            f"a score map of shape {cell_probs.shape} does not belong to a {height}x{width} "
            f"image, which gives {expected[0]}x{expected[1]} at output stride {stride}{hint}"
        )
    if not np.isfinite(cell_probs).all() or cell_probs.min() < 0 or cell_probs.max() > 1:
        raise VggfcnError(
            "score-map values must be probabilities in [0, 1] (apply softmax to logits), got "
            f"{cell_probs.min():g}..{cell_probs.max():g}"
        )
