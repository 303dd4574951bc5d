"""The fast kernels and the FCN runner: hand-worked cases, the definition of convolution, torch.

`conv2d` is the one piece the referee shares with what it judges, so it is held to the definition
(a direct loop) and to torch here; the rest of the referee has its own tests (test_referee.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vggfcn import forward, referee
from vggfcn.convert import to_fcn
from vggfcn.errors import VggfcnError
from vggfcn.selfcheck import direct_conv2d
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.verify import sample_images


def test_seed_example_1x1_conv_gives_13_36() -> None:
    w = np.array([[0, 1, 1], [2, 3, 5]], dtype=np.float32)  # rows = output units
    b = np.array([8, 13], dtype=np.float32)
    x = np.array([[1, 2, 3]], dtype=np.float32)
    conv = forward.conv2d(x.reshape(1, 1, 1, 3), w.T.reshape(1, 1, 3, 2), b, same=False, relu=True)
    assert conv.reshape(-1).tolist() == [13.0, 36.0]


def test_1x1_conv_is_the_dense_layer_at_every_pixel() -> None:
    w = np.array([[0, 1, 1], [2, 3, 5]], dtype=np.float32).T
    b = np.array([8, 13], dtype=np.float32)
    image = np.random.default_rng(0).uniform(-5, 5, (2, 6, 5, 3)).astype(np.float32)
    conv = forward.conv2d(image, w.reshape(1, 1, 3, 2), b, same=False)
    assert conv.shape == (2, 6, 5, 2)
    for i, y, x in [(0, 0, 0), (1, 5, 4), (0, 3, 2)]:
        expected = image[i, y, x] @ w + b
        np.testing.assert_allclose(conv[i, y, x], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "same", "shape"),
    [
        (3, True, (2, 9, 8, 3)),
        (3, False, (1, 9, 8, 3)),
        (7, False, (1, 10, 7, 5)),
        (1, False, (2, 4, 4, 2)),
        (3, True, (1, 1, 1, 3)),
        (5, True, (1, 6, 9, 2)),
    ],
)
def test_conv2d_equals_direct_definition(k: int, same: bool, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(k * 10 + same)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((k, k, shape[3], 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    fast = forward.conv2d(x, kernel, bias, same=same)
    slow = direct_conv2d(x, kernel, bias, same=same)
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("k", "same"), [(3, True), (3, False), (7, False), (1, False)])
def test_row_gemm_strategy_in_several_bands_equals_direct_definition(
    k: int, same: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large layers take the per-kernel-row path; force it on a small one, cut into bands of
    # 256 rows (a band boundary falls mid-image row), and check it against the definition.
    monkeypatch.setattr(forward, "IM2COL_BYTES", 0)
    monkeypatch.setattr(forward, "MAX_BLOCK_ROWS", 256)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((2, 23, 19, 5)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 5, 6)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    fast = forward.conv2d(x, kernel, bias, same=same, relu=True)
    slow = np.maximum(direct_conv2d(x, kernel, bias, same=same), 0)
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)


def test_valid_convs_of_several_maps_equal_one_conv_each() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in [(2, 7, 7, 4), (1, 9, 8, 4)]]
    kernel = rng.standard_normal((7, 7, 4, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    together = forward.valid_convs(xs, kernel, bias, relu=True)
    assert [y.shape for y in together] == [(2, 1, 1, 5), (1, 3, 2, 5)]
    for x, y in zip(xs, together, strict=True):
        alone = np.maximum(direct_conv2d(x, kernel, bias, same=False), 0)
        np.testing.assert_allclose(y, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("height", "width", "batch"), [(224, 224, 1), (253, 231, 2)])
def test_large_blocks_in_strips_equal_the_unstripped_trunk(
    height: int, width: int, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Big inputs run each block in horizontal strips with halo rows; force that on a small net
    # (strips of a few rows, so every block is cut many times, odd sizes) and compare with the
    # same trunk run whole.
    fcn = to_fcn(random_classifier(TINY, seed=11))
    images = sample_images(batch, seed=13, size=max(height, width))[:, :height, :width]
    whole = forward.trunk(fcn, images)
    monkeypatch.setattr(forward, "STRIP_BYTES", 3000)
    strips = forward.trunk(fcn, images)
    assert strips.shape == whole.shape == (batch, height // 32, width // 32, 16)
    np.testing.assert_allclose(strips, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_kept_scratch_changes_nothing_and_is_not_shared_between_threads() -> None:
    # Each thread keeps its trunk buffers between calls: a result must not change when later
    # calls reuse them, and two threads running at once must not write into each other's.
    weights = to_fcn(random_classifier(TINY, seed=21))
    inputs = [sample_images(1, seed=s, size=224 + 32 * s) for s in range(4)]
    alone = [forward.trunk(weights, x, forward.Scratch()) for x in inputs]
    first = forward.logits(weights, inputs[0])
    kept = first.copy()
    forward.logits(weights, inputs[3])  # larger: the kept buffers grow and are overwritten
    np.testing.assert_array_equal(first, kept)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return [forward.trunk(weights, x) for _ in range(5)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, inputs))
    for expected, repeated in zip(alone, results, strict=True):
        for got in repeated:
            np.testing.assert_array_equal(got, expected)


def test_max_pool_takes_window_maxima_and_drops_odd_edges() -> None:
    x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
    x = np.random.default_rng(1).permutation(x.reshape(-1)).reshape(x.shape)
    pooled = forward.max_pool2(x)
    assert pooled.shape == (2, 2, 3, 3)
    for i, y, xx, c in [(0, 0, 0, 0), (1, 1, 2, 2), (0, 1, 1, 1)]:
        assert pooled[i, y, xx, c] == x[i, 2 * y : 2 * y + 2, 2 * xx : 2 * xx + 2, c].max()


def test_fcn_rejects_small_inputs_and_channels_first() -> None:
    fcn = to_fcn(random_classifier(TINY))
    with pytest.raises(VggfcnError, match="at least 224x224"):
        forward.logits(fcn, np.zeros((1, 200, 300, 3), np.float32))
    with pytest.raises(VggfcnError, match="channels-last"):
        forward.logits(fcn, np.zeros((1, 3, 224, 224), np.float32))


def test_fcn_map_size_rule_and_cells_equal_classifier_on_windows() -> None:
    classifier = random_classifier(TINY, seed=3)
    fcn = to_fcn(classifier)
    x = sample_images(1, seed=4, size=288)
    scores = forward.logits(fcn, x)
    assert scores.shape == (1, 3, 3, TINY.classes) == (1, *fcn.output_size(288, 288), TINY.classes)
    pool5 = referee.pool5(classifier, x, forward.Scratch())
    for i in range(3):
        for j in range(3):
            head = referee.head(classifier, pool5[:, i : i + 7, j : j + 7])
            np.testing.assert_allclose(
                scores[:, i, j], head, rtol=1e-4, atol=1e-4 * np.abs(head).max()
            )


class TestAgainstTorch:
    """An independent implementation: torch's conv2d."""

    torch = pytest.importorskip("torch")

    def test_conv2d_matches_torch_at_odd_sizes(self) -> None:
        torch, F = self.torch, self.torch.nn.functional
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 13, 11, 6)).astype(np.float32)
        k = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
        b = rng.standard_normal(5).astype(np.float32)
        theirs = (
            F.conv2d(
                torch.from_numpy(x).permute(0, 3, 1, 2),
                torch.from_numpy(k).permute(3, 2, 0, 1),
                torch.from_numpy(b),
                padding=1,
            )
            .permute(0, 2, 3, 1)
            .numpy()
        )
        np.testing.assert_allclose(forward.conv2d(x, k, b, same=True), theirs, rtol=1e-5, atol=1e-5)
