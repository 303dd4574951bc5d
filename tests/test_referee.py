"""The referee runs a source graph as its file defines it: tested by hand and against torch before
it judges anything, each file convention on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from vggfcn import forward, referee
from vggfcn.graph import (
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    InputSpec,
    MaxPool,
    Op,
    Provenance,
    SourceGraph,
)
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.tensor import Tensor
from vggfcn.verify import sample_images


def _t(values: object) -> Tensor:
    return Tensor.wrap(np.asarray(values, dtype=np.float32), "<test>")


def _graph(*ops: Op) -> SourceGraph:
    return SourceGraph(
        ops=ops,
        input=InputSpec(size=(224, 224)),
        output_activation="linear",
        provenance=Provenance(path="<test>", format="memory", generation="test"),
    )


def _head(x: np.ndarray, *ops: Op) -> np.ndarray:
    return referee.head(_graph(*ops), x)


W = [[0, 1, 1], [2, 3, 5]]  # the seed example: rows are output units
B = [8, 13]


@pytest.mark.parametrize("layout", ["IO", "OI"])
def test_seed_example_in_either_dense_layout(layout: str) -> None:
    kernel = np.array(W, np.float32).T if layout == "IO" else np.array(W, np.float32)
    x = np.array([1, 2, 3], np.float32).reshape(1, 1, 1, 3)
    out = _head(
        x,
        Flatten("f", "HWC"),
        Dense("d", _t(kernel), _t(B), layout),  # type: ignore[arg-type]
        Activation("r", "relu"),
    )
    assert out.tolist() == [[13.0, 36.0]]


@pytest.mark.parametrize("order", ["HWC", "CHW"])
def test_flatten_reads_the_volume_in_the_files_order(order: str) -> None:
    """A (2, 3, 4) volume and a dense layer picking one column: the value it picks is the one
    at that position of the file's flatten order, worked out by hand."""
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)  # x[0, h, w, c] = 12h + 4w + c
    h, w, c = 1, 2, 3
    column = (h * 3 + w) * 4 + c if order == "HWC" else (c * 2 + h) * 3 + w
    kernel = np.zeros((1, 24), np.float32)
    kernel[0, column] = 1
    out = _head(x, Flatten("f", order), Dense("d", _t(kernel), None, "OI"))  # type: ignore[arg-type]
    assert out.tolist() == [[x[0, h, w, c]]] == [[23.0]]


def test_oihw_and_hwio_convolutions_agree_with_torch() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
    oihw = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    theirs = (
        F.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            torch.from_numpy(oihw),
            torch.from_numpy(bias),
            padding=1,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    for layout, kernel in (("OIHW", oihw), ("HWIO", oihw.transpose(2, 3, 1, 0).copy())):
        conv = Conv("c", _t(kernel), _t(bias), layout)  # type: ignore[arg-type]
        ours = referee.pool5(_graph(conv, MaxPool("p")), x, forward.Scratch())
        expected = F.max_pool2d(torch.from_numpy(theirs).permute(0, 3, 1, 2), 2)
        np.testing.assert_allclose(ours, expected.permute(0, 2, 3, 1).numpy(), atol=1e-5, rtol=1e-5)


def test_batch_norm_is_its_definition() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5)).astype(np.float32).reshape(3, 1, 1, 5)
    g, b, m, v = (rng.uniform(0.5, 2, 5).astype(np.float32) for _ in range(4))
    norm = BatchNorm("bn", _t(g), _t(b), _t(m), _t(v), 1e-3)
    out = _head(x, GlobalAvgPool("gap"), norm)
    expected = (x.reshape(3, 5) - m) / np.sqrt(v + 1e-3) * g + b
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_global_average_pool_is_the_mean_over_positions() -> None:
    x = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    out = _head(x, GlobalAvgPool("gap"))
    np.testing.assert_array_equal(out, x.mean(axis=(1, 2)))


def test_ceil_max_pool_keeps_the_odd_edge_and_floor_drops_it() -> None:
    """Caffe rounds pooled sizes up: a 3x3 map pools to 2x2, the last row/column alone."""
    x = np.array([[1, 9, 2], [3, 4, 8], [7, 5, 6]], np.float32).reshape(1, 3, 3, 1)
    identity = Conv("c", _t(np.ones((1, 1, 1, 1))), _t([0.0]), "HWIO", "valid")
    ceil = referee.pool5(_graph(identity, MaxPool("p", ceil=True)), x, forward.Scratch())
    floor = referee.pool5(_graph(identity, MaxPool("p")), x, forward.Scratch())
    assert ceil.reshape(2, 2).tolist() == [[9, 8], [7, 6]]
    assert floor.reshape(1, 1).tolist() == [[9]]


def test_tiny_vgg16_logits_match_torch() -> None:
    """A whole Keras-layout classifier through the referee against torch's layers."""
    graph = random_classifier(TINY, seed=5)
    images = sample_images(2, seed=6)
    ours = referee.head(graph, referee.pool5(graph, images, forward.Scratch()))
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # NCHW
    for op in graph.ops:
        if isinstance(op, Conv):
            k = torch.from_numpy(op.kernel.read()).permute(3, 2, 0, 1)  # HWIO -> OIHW
            x = F.conv2d(x, k, torch.from_numpy(op.bias.read()), padding=1)  # type: ignore[union-attr]
        elif isinstance(op, Activation):
            x = F.relu(x)
        elif isinstance(op, MaxPool):
            x = F.max_pool2d(x, 2)
        elif isinstance(op, Flatten):
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # HWC flatten, as Keras
        elif isinstance(op, Dense):
            x = x @ torch.from_numpy(op.kernel.read()) + torch.from_numpy(op.bias.read())  # type: ignore[union-attr]
    theirs = x.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_results_are_never_views_of_the_scratch() -> None:
    graph = random_classifier(TINY, seed=7)
    scratch = forward.Scratch()
    first = referee.pool5(graph, sample_images(1, seed=8), scratch)
    kept = first.copy()
    referee.pool5(graph, sample_images(1, seed=9, size=288), scratch)
    np.testing.assert_array_equal(first, kept)
