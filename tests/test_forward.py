"""The referee is tested first: hand-worked cases, the definition of convolution, and torch."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from vggfcn import forward
from vggfcn.convert import to_fcn
from vggfcn.errors import VggfcnError
from vggfcn.selfcheck import direct_conv2d
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.verify import sample_images
from vggfcn.weights import BatchNorm, Tensor


def test_seed_example_dense_and_1x1_conv_give_13_36() -> None:
    w = np.array([[0, 1, 1], [2, 3, 5]], dtype=np.float32)  # rows = output units
    b = np.array([8, 13], dtype=np.float32)
    x = np.array([[1, 2, 3]], dtype=np.float32)
    dense = forward.relu(forward.dense(x, w.T, b))
    conv = forward.relu(
        forward.conv2d(x.reshape(1, 1, 1, 3), w.T.reshape(1, 1, 3, 2), b, same=False)
    )
    assert dense.tolist() == [[13.0, 36.0]]
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
    # (strips of a few rows, so every block is cut many times, odd sizes, batch norm included)
    # and compare with the same trunk run whole.
    weights = random_classifier(TINY, seed=11)
    rng = np.random.default_rng(12)
    normed = tuple(
        replace(layer, norm=_random_norm(rng, layer.kernel.shape[3])) if i % 3 == 1 else layer
        for i, layer in enumerate(weights.trunk)
    )
    weights = replace(weights, trunk=normed)
    images = sample_images(batch, seed=13, size=max(height, width))[:, :height, :width]
    whole = forward.trunk(weights, images)
    monkeypatch.setattr(forward, "STRIP_BYTES", 3000)
    strips = forward.trunk(weights, images)
    assert strips.shape == whole.shape == (batch, height // 32, width // 32, 16)
    np.testing.assert_allclose(strips, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def _random_norm(rng: np.random.Generator, channels: int) -> BatchNorm:
    def tensor(low: float, high: float) -> Tensor:
        return Tensor.wrap(rng.uniform(low, high, channels).astype(np.float32), "<norm>")

    return BatchNorm(tensor(0.5, 2), tensor(-0.5, 0.5), tensor(-0.2, 0.2), tensor(0.5, 2), 1e-5)


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


def test_classifier_rejects_other_sizes_and_small_inputs() -> None:
    w = random_classifier(TINY)
    with pytest.raises(VggfcnError, match="224x224 inputs only"):
        forward.logits(w, np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(VggfcnError, match="at least 224x224"):
        forward.logits(to_fcn(w), np.zeros((1, 200, 300, 3), np.float32))
    with pytest.raises(VggfcnError, match="channels-last"):
        forward.logits(w, np.zeros((1, 3, 224, 224), np.float32))


def test_fcn_map_size_rule_and_cells_equal_classifier_on_windows() -> None:
    classifier = random_classifier(TINY, seed=3)
    fcn = to_fcn(classifier)
    x = sample_images(1, seed=4, size=288)
    scores = forward.logits(fcn, x)
    assert scores.shape == (1, 3, 3, TINY.classes) == (1, *TINY.output_size(288, 288), TINY.classes)
    pool5 = forward.trunk(classifier, x)
    for i in range(3):
        for j in range(3):
            head = forward.classifier_head(classifier, pool5[:, i : i + 7, j : j + 7])
            np.testing.assert_allclose(
                scores[:, i, j], head, rtol=1e-4, atol=1e-4 * np.abs(head).max()
            )


class TestAgainstTorch:
    """An independent implementation: torch's conv2d, max_pool2d and linear layers."""

    torch = pytest.importorskip("torch")

    def _torch_classifier(self, weights, images: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
        torch, F = self.torch, self.torch.nn.functional
        x = torch.from_numpy(images).permute(0, 3, 1, 2)  # NCHW
        pools = weights.arch.pools_after()
        for i, layer in enumerate(weights.trunk):
            k = torch.from_numpy(layer.kernel.read()).permute(3, 2, 0, 1)  # HWIO -> OIHW
            x = F.relu(F.conv2d(x, k, torch.from_numpy(layer.bias.read()), padding=1))
            if i in pools:
                x = F.max_pool2d(x, 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # HWC flatten, as Keras
        fc6, fc7, fc8 = weights.head
        x = F.relu(x @ torch.from_numpy(fc6.kernel.read()) + torch.from_numpy(fc6.bias.read()))
        x = F.relu(x @ torch.from_numpy(fc7.kernel.read()) + torch.from_numpy(fc7.bias.read()))
        return (x @ torch.from_numpy(fc8.kernel.read()) + torch.from_numpy(fc8.bias.read())).numpy()

    def test_tiny_vgg16_logits_match_torch(self) -> None:
        weights = random_classifier(TINY, seed=5)
        images = sample_images(2, seed=6)
        ours = forward.logits(weights, images)
        theirs = self._torch_classifier(weights, images)
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale)

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
