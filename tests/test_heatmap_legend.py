"""Heatmaps at output stride 16 and 8 (`heatmap.pixel_scores`, `overlay`) and the legend band
(`heatmap.render`).

The geometry is checked against a brute-force reference written here from the definition alone:
cell (i, j) at output stride s sees the p_h*32 x p_w*32 pixels whose top-left corner is
(s*i, s*j), and a pixel's value is the mean over the cells that see it. The legend is checked
by looking at its pixels: where the colour bar is, what colours it runs through, and that
nothing leaves the band.
"""

from __future__ import annotations

import numpy as np
import pytest

from vggfcn.errors import VggfcnError
from vggfcn.heatmap import COLORMAP, overlay, pixel_scores, render

WHITE = (255, 255, 255)
COLDEST, HOTTEST = tuple(COLORMAP[0, 1:].astype(int)), tuple(COLORMAP[-1, 1:].astype(int))


def cells_along(side: int, blocks: int, stride: int) -> int:
    """How many windows of `blocks` x 32 pixels, `stride` apart, fit in `side` pixels."""
    return (side - 32 * blocks) // stride + 1


def reference(
    cells: np.ndarray, height: int, width: int, window: tuple[int, int], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the windows covering each pixel, one window rectangle at a time."""
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    rows, cols = 32 * window[0], 32 * window[1]
    for i in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            top, left = stride * i, stride * j
            assert top + rows <= height and left + cols <= width  # every window is inside
            total[top : top + rows, left : left + cols] += cells[i, j]
            count[top : top + rows, left : left + cols] += 1
    covered = count > 0
    return np.where(covered, total / np.maximum(count, 1), 0.0), covered


def random_cells(height: int, width: int, window: tuple[int, int], stride: int) -> np.ndarray:
    shape = (cells_along(height, window[0], stride), cells_along(width, window[1], stride))
    return np.random.default_rng(height * width + stride).random(shape).astype(np.float32)


def legend_of(image: np.ndarray, picture: np.ndarray) -> np.ndarray:
    assert picture.shape[1:] == image.shape[1:] and picture.shape[0] > image.shape[0]
    return picture[image.shape[0] :]


def bar_row(band: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The colour bar's middle row and its first and last columns, found by the coldest colour
    (which nothing else in the band is) and the hottest."""
    rows = np.flatnonzero((band == COLDEST).all(axis=-1).any(axis=1))
    assert rows.size > 0, "no colour bar in the legend"
    row = band[rows[rows.size // 2]]
    first = int(np.flatnonzero((row == COLDEST).all(axis=-1))[0])
    last = int(np.flatnonzero((row == HOTTEST).all(axis=-1))[-1])
    return row, first, last


# --------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("height", "width", "window", "stride"),
    [
        (256, 256, (7, 7), 16),  # square, a multiple of 32: 3x3 cells
        (288, 352, (7, 7), 8),  # non-square: 9x17 cells, 28-block windows
        (250, 300, (2, 3), 16),  # sides not multiples of 16: uncovered remainder
        (100, 77, (1, 2), 8),  # sides not multiples of 8, a non-square window
        (270, 300, (7, 7), 32),  # the classifier's stride, for comparison
        (96, 160, (3, 1), 8),
    ],
)
def test_pixel_scores_match_the_brute_force_mean_of_covering_windows(
    height: int, width: int, window: tuple[int, int], stride: int
) -> None:
    cells = random_cells(height, width, window, stride)
    assert cells.size > 1
    values, covered = pixel_scores(cells, height, width, window, stride=stride)
    want_values, want_covered = reference(cells, height, width, window, stride)
    np.testing.assert_array_equal(covered, want_covered)
    np.testing.assert_allclose(values, want_values, rtol=1e-6, atol=1e-7)
    assert values.dtype == np.float32 and (values[~covered] == 0).all()


@pytest.mark.parametrize(
    ("stride", "expected"),
    # What the network computes for a 448x320 input and a 7x7 head: H//s - (32/s)*7 + 1.
    [(32, (448 // 32 - 7 + 1, 320 // 32 - 7 + 1)), (16, (15, 7)), (8, (29, 13))],
)
def test_the_map_shape_each_stride_accepts(stride: int, expected: tuple[int, int]) -> None:
    assert expected == (cells_along(448, 7, stride), cells_along(320, 7, stride))
    pixel_scores(np.zeros(expected), 448, 320, stride=stride)
    for wrong in ((expected[0] + 1, expected[1]), (expected[0], expected[1] - 1)):
        with pytest.raises(VggfcnError, match=f"at output stride {stride}"):
            pixel_scores(np.zeros(wrong), 448, 320, stride=stride)


def test_a_finer_stride_localizes_a_lone_hot_cell_to_its_own_blocks() -> None:
    # At stride 8 on a 224x232 image there is one row of two cells, 8 pixels apart: only the
    # first 8 columns are cell 0's alone, only the last 8 cell 1's.
    values, covered = pixel_scores(np.array([[0.0, 1.0]]), 224, 232, stride=8)
    assert covered.all()
    np.testing.assert_allclose(values[50, [0, 7, 8, 223, 224, 231]], [0, 0, 0.5, 0.5, 1, 1])


@pytest.mark.parametrize(
    ("shape", "stride", "match"),
    [
        # 256x256 is 3x3 at stride 16; the stride-32 map (2x2) is refused, and recognised.
        (
            (2, 2),
            16,
            r"\(2, 2\) does not belong to a 256x256 image, which gives 3x3 at output "
            r"stride 16 \(it is the shape at output stride 32\)",
        ),
        ((3, 3), 8, r"which gives 5x5 at output stride 8 \(it is the shape at output stride 16\)"),
        ((4, 4), 8, r"which gives 5x5 at output stride 8$"),
        ((3, 3), 12, r"^output stride 12: expected one of 32, 16, 8$"),
    ],
)
def test_maps_of_another_stride_or_size_are_refused(
    shape: tuple[int, int], stride: int, match: str
) -> None:
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    with pytest.raises(VggfcnError, match=match):
        overlay(image, np.zeros(shape), stride=stride)
    with pytest.raises(VggfcnError, match=match):
        render(image, np.zeros(shape), class_name="cat", stride=stride)


def test_an_image_smaller_than_a_window_is_refused_at_every_stride() -> None:
    for stride in (32, 16, 8):
        with pytest.raises(VggfcnError, match="smaller than one 224x224 window"):
            pixel_scores(np.zeros((1, 1)), 223, 300, stride=stride)


def test_overlay_at_stride_8_leaves_only_the_sub_8_remainder_alone() -> None:
    image = np.random.default_rng(3).integers(0, 256, (229, 238, 3), dtype=np.uint8)
    out = overlay(image, random_cells(229, 238, (7, 7), 8), stride=8)
    np.testing.assert_array_equal(out[224:], image[224:])
    np.testing.assert_array_equal(out[:, 232:], image[:, 232:])
    assert (out[:224, :232] != image[:224, :232]).any(axis=-1).mean() > 0.9


# ----------------------------------------------------------------- legend


@pytest.mark.parametrize(("height", "width", "stride"), [(224, 224, 8), (300, 960, 16)])
def test_render_is_the_overlay_with_a_legend_band_below(
    height: int, width: int, stride: int
) -> None:
    image = np.random.default_rng(4).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cells = random_cells(height, width, (7, 7), stride)
    picture = render(image, cells, class_name="tabby, tabby cat", stride=stride, alpha=0.3)
    assert picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[:height], overlay(image, cells, stride=stride, alpha=0.3))
    band = legend_of(image, picture)
    assert band.shape[0] >= 40  # room for two text lines, the bar and its labels
    assert (band[:, :2] == WHITE).all() and (band[:, -2:] == WHITE).all()  # margins stay clear


def test_the_colour_bar_runs_through_the_colormap_from_left_to_right() -> None:
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    row, first, last = bar_row(legend_of(image, render(image, np.array([[0.4]]), class_name="x")))
    assert last - first + 1 >= 0.85 * 224  # nearly the full width
    bar = row[first : last + 1].astype(int)
    brightness = bar.sum(axis=-1)
    assert (np.diff(brightness) >= 0).all() and brightness[-1] > brightness[0]
    assert tuple(bar[0]) == COLDEST and tuple(bar[-1]) == HOTTEST  # both ends, exactly
    for value, *rgb in COLORMAP:  # ... and the anchors in between, where they should be
        column = round(value * (len(bar) - 1))
        assert np.abs(bar[column] - rgb).max() <= 8, (value, bar[column], rgb)


def test_the_hottest_colour_is_the_one_the_overlay_paints_at_probability_1() -> None:
    image = np.zeros((256, 224, 3), dtype=np.uint8)
    cells = np.array([[0.2], [1.0]])  # the bottom 32 rows are seen by cell 1 alone
    picture = render(image, cells, class_name="x", alpha=1.0)
    assert tuple(picture[250, 100]) == HOTTEST
    row, _, last = bar_row(legend_of(image, picture))
    assert tuple(row[last]) == tuple(picture[250, 100])


def test_alpha_zero_leaves_the_image_region_identical_to_the_input() -> None:
    image = np.random.default_rng(5).integers(0, 256, (250, 260, 3), dtype=np.uint8)
    picture = render(
        image, random_cells(250, 260, (7, 7), 16), class_name="x", alpha=0.0, stride=16
    )
    np.testing.assert_array_equal(picture[:250], image)


def text_row(band: np.ndarray) -> np.ndarray:
    """The band above the colour bar's frame: the class name and the stride."""
    rows = np.flatnonzero((band == COLDEST).all(axis=-1).any(axis=1))
    return band[: rows[0] - 2]


@pytest.mark.parametrize(
    "name",
    [
        "Granny Smith apple, a name much too long for a 224-pixel band " * 20,
        "x" * 5000,
        "a name\nwith a newline and a tab\tand café, 猫",
    ],
)
def test_a_long_class_name_is_cut_and_stays_clear_of_the_stride(name: str) -> None:
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    cells = np.array([[0.87]])
    short = legend_of(image, render(image, cells, class_name="cat", stride=8))
    long = legend_of(image, render(image, cells, class_name=name, stride=8))
    assert long.shape == short.shape
    # The stride label's side of the text row is untouched, and so is everything below it.
    np.testing.assert_array_equal(text_row(long)[:, 168:], text_row(short)[:, 168:])
    below = text_row(short).shape[0]
    np.testing.assert_array_equal(long[below:], short[below:])
    assert (text_row(long)[:, -4:] == WHITE).all()


def test_the_legend_tells_strides_apart_and_nothing_else_changes() -> None:
    # A 224x224 image has a 1x1 map at every stride: only the stride label may differ.
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    bands = [
        legend_of(image, render(image, np.array([[0.5]]), class_name="cat", stride=s))
        for s in (32, 16, 8)
    ]
    text = text_row(bands[0]).shape[0]
    for band in bands[1:]:
        assert (band[:text] != bands[0][:text]).any()
        np.testing.assert_array_equal(band[text:], bands[0][text:])
        np.testing.assert_array_equal(band[:, :112], bands[0][:, :112])  # the name's half


def test_the_legend_shows_where_the_maximum_is() -> None:
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    one = np.array([[0.1, 0.2], [0.3, 0.9]])
    bands = [
        legend_of(image, render(image, cells, class_name="cat", alpha=0.0))
        for cells in (one, one[::-1], one * 0.5)
    ]
    bar = np.flatnonzero((bands[0] == COLDEST).all(axis=-1).any(axis=1))
    for band in bands[1:]:  # another cell or another maximum: the line below the bar changes
        changed = np.flatnonzero((band != bands[0]).any(axis=(1, 2)))
        assert changed.size > 0 and changed.min() > bar.max()


def test_the_legend_grows_with_the_image_and_fits_a_narrow_one() -> None:
    small = np.zeros((224, 224, 3), dtype=np.uint8)
    large = np.zeros((224, 1200, 3), dtype=np.uint8)
    small_band = legend_of(small, render(small, np.zeros((1, 1)), class_name="cat"))
    large_band = legend_of(large, render(large, np.zeros((1, 31)), class_name="cat"))
    assert large_band.shape[0] > 1.5 * small_band.shape[0]  # text scales with the width
    narrow = np.zeros((40, 32, 3), dtype=np.uint8)  # a 1x1-block head: 32 pixels wide
    picture = render(narrow, np.zeros((1, 1)), class_name="tabby cat", window=(1, 1))
    assert picture.shape[1] == 32
