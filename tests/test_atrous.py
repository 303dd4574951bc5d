"""Output stride 16 and 8 (à trous): the dilated kernels against torch, the network against
torch running the same dilated ops, the shift-and-stitch identity computed by torch on its
own, and `verify` catching a dilation that disagrees with the recorded stride.

The writers' dilated graphs (ONNX, Keras) are tested in test_atrous_outputs.py; predict and
heatmap over many inputs in test_dense.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as tf

from fixtures.finetuned import keras_finetuned
from tests.helpers import assert_logits_close, nchw, tiny_fcn
from vggfcn import forward, referee
from vggfcn.atrous import atrous
from vggfcn.convert import to_fcn
from vggfcn.errors import VggfcnError
from vggfcn.fcn import FCN, PLAIN, ConvLayer, Pool
from vggfcn.formats import load
from vggfcn.synthetic import TINY, random_classifier
from vggfcn.verify import sample_images, verify

SIZES = [(224, 224), (256, 320), (300, 260), (288, 288)]


def _torch_conv(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, d: int, same: bool
) -> np.ndarray:
    pad = d * (kernel.shape[0] // 2) if same else 0
    weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    y = tf.conv2d(nchw(x), weight, torch.from_numpy(bias), padding=pad, dilation=d)
    return y.permute(0, 2, 3, 1).numpy()


def torch_logits(fcn: FCN, images: np.ndarray) -> np.ndarray:
    """The network as torch runs it: its own Conv2d dilations and MaxPool2d strides/dilations."""
    x = nchw(images)
    start = 0
    with torch.no_grad():
        for count, pool in zip(fcn.plan, fcn.block_pools, strict=True):
            for layer in fcn.trunk[start : start + count]:
                x = _conv(x, layer, same=True)
            start += count
            x = tf.max_pool2d(x, 2, stride=pool.stride, dilation=pool.dilation)
        for layer in fcn.head:
            x = _conv(x, layer, same=False)
    return x.permute(0, 2, 3, 1).numpy()


def _conv(x: torch.Tensor, layer: ConvLayer, *, same: bool) -> torch.Tensor:
    weight = torch.from_numpy(np.ascontiguousarray(layer.kernel.read().transpose(3, 2, 0, 1)))
    pad = layer.dilation * (layer.kernel.shape[0] // 2) if same else 0
    y = tf.conv2d(
        x, weight, torch.from_numpy(layer.bias.read()), padding=pad, dilation=layer.dilation
    )
    return torch.relu(y) if layer.relu else y


# ------------------------------------------------------------------ the kernels


@pytest.mark.parametrize(
    ("shape", "k", "d", "same", "path"),
    [
        ((2, 9, 11, 3), 3, 2, True, "im2col"),
        ((1, 40, 44, 16), 3, 2, True, "rows"),
        ((1, 64, 80, 8), 3, 4, True, "rows"),
        ((2, 26, 33, 8), 7, 4, False, "im2col"),
        ((1, 30, 31, 16), 7, 4, False, "bands"),
        ((1, 14, 15, 32), 7, 2, False, "bands"),
    ],
)
def test_dilated_conv_equals_torch_on_every_path(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], k: int, d: int, same: bool, path: str
) -> None:
    rng = np.random.default_rng(k * d)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((k, k, shape[3], 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    if path != "im2col":  # force the large-layer paths on small arrays
        monkeypatch.setattr(forward, "IM2COL_BYTES", 1024)
        monkeypatch.setattr(forward, "HEAD_BLOCK_BYTES", 40_000)
    ours = forward.conv2d(x, kernel, bias, same=same, dilation=d)
    theirs = _torch_conv(x, kernel, bias, d, same)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3)])
@pytest.mark.parametrize("shape", [(2, 13, 10, 3), (1, 8, 9, 2)])
def test_pool_equals_torch(stride: int, dilation: int, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(stride + dilation).standard_normal(shape).astype(np.float32)
    ours = forward.pool2d(x, Pool(stride, dilation))
    theirs = tf.max_pool2d(nchw(x), 2, stride=stride, dilation=dilation).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_plain_pool_is_the_classic_2x2_stride_2() -> None:
    x = np.arange(2 * 5 * 4 * 3, dtype=np.float32).reshape(2, 5, 4, 3)
    np.testing.assert_array_equal(forward.pool2d(x, PLAIN), forward.max_pool2(x))


# ------------------------------------------------------------------ the network


@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("size", SIZES)
def test_dilated_network_equals_torch(stride: int, size: tuple[int, int]) -> None:
    fcn = atrous(tiny_fcn(), stride)
    x = sample_images(2, 1, size)
    ours = forward.logits(fcn, x)
    assert ours.shape[1:3] == fcn.output_size(*size)
    assert_logits_close(ours, torch_logits(fcn, x))


def test_strips_give_the_unstripped_result_at_stride_8(monkeypatch: pytest.MonkeyPatch) -> None:
    fcn = atrous(tiny_fcn(), 8)
    x = sample_images(1, 2, (320, 288))
    whole = forward.logits(fcn, x)
    monkeypatch.setattr(forward, "STRIP_BYTES", 4096)  # every block in strips of a few rows
    np.testing.assert_allclose(forward.logits(fcn, x), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("stride", "side"),
    [(32, lambda h: h // 32 - 6), (16, lambda h: h // 16 - 13), (8, lambda h: h // 8 - 27)],
)
def test_map_side_rule(stride: int, side: Callable[[int], int]) -> None:
    fcn = atrous(tiny_fcn(), stride)
    for h, w in [(224, 224), (448, 448), (256, 384)]:
        assert fcn.output_size(h, w) == (side(h), side(w))


def test_atrous_attributes_follow_the_paper() -> None:
    fcn = tiny_fcn()
    s16, s8 = atrous(fcn, 16), atrous(fcn, 8)
    assert s16.block_pools[:4] == (PLAIN,) * 4 and s16.block_pools[4] == Pool(1, 1)
    assert [layer.dilation for layer in s16.trunk] == [1] * 13
    assert [layer.dilation for layer in s16.head] == [2, 1, 1]
    assert s8.block_pools[3:] == (Pool(1, 1), Pool(1, 2))
    assert [layer.dilation for layer in s8.trunk] == [1] * 10 + [2] * 3
    assert [layer.dilation for layer in s8.head] == [4, 1, 1]
    assert atrous(s8, 32).plain and not s8.plain and s8.output_stride == 8


def test_reduced_head_and_unknown_stride_refused() -> None:
    fcn = tiny_fcn()
    with pytest.raises(VggfcnError, match="one of 32, 16, 8"):
        atrous(fcn, 4)
    reduced = replace(fcn, info=replace(fcn.info, head="reduced"))
    with pytest.raises(VggfcnError, match="reduced head"):
        atrous(reduced, 8)


# ------------------------------------------------------------ shift-and-stitch


def _torch_head32(fcn: FCN, volume: torch.Tensor) -> torch.Tensor:
    """pool5 2x2/2 then the (undilated) converted head, as torch runs them: the issue's head32."""
    x = tf.max_pool2d(volume, 2, stride=2)
    for layer in fcn.head:
        x = _conv(x, layer, same=False)
    return x


def _torch_until(fcn: FCN, x: torch.Tensor, blocks: int, convs: int = 0) -> torch.Tensor:
    """The stride-32 trunk through `blocks` whole blocks, then `convs` convolutions."""
    start = 0
    for block, count in enumerate(fcn.plan):
        for layer in fcn.trunk[start : start + (count if block < blocks else convs)]:
            x = _conv(x, layer, same=True)
        if block >= blocks:
            return x
        start += count
        x = tf.max_pool2d(x, 2, stride=2)
    return x


def _stitch(maps: dict[tuple[int, int], torch.Tensor]) -> np.ndarray:
    h = maps[0, 0].shape[2] + maps[1, 0].shape[2]
    w = maps[0, 0].shape[3] + maps[0, 1].shape[3]
    out = np.zeros((maps[0, 0].shape[0], maps[0, 0].shape[1], h, w), dtype=np.float32)
    for (a, b), m in maps.items():
        out[:, :, a::2, b::2] = m.numpy()
    return out.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size", SIZES[1:])  # every shift has a window (torch refuses none)
def test_shift_and_stitch_identity_in_torch(size: tuple[int, int]) -> None:
    """M16[2i+a, 2j+b] = head32(F[a:, b:])[i, j] and M8[4i+2q+p] = head32(block5(pool4(G[p:]))
    [q:])[i], computed by torch alone from the stride-32 network, equal the dilated maps."""
    plain = tiny_fcn()
    x = sample_images(1, 3, size)
    with torch.no_grad():
        f = _torch_until(plain, nchw(x), 4, convs=3)  # block5's output
        g = _torch_until(plain, nchw(x), 3, convs=3)  # conv4_3's output
        m16 = _stitch(
            {(a, b): _torch_head32(plain, f[:, :, a:, b:]) for a in (0, 1) for b in (0, 1)}
        )
        phases = {}
        for p in (0, 1):
            for r in (0, 1):
                block5 = tf.max_pool2d(g[:, :, p:, r:], 2, stride=2)
                for layer in plain.trunk[10:]:
                    block5 = _conv(block5, layer, same=True)
                phases[p, r] = _stitch(
                    {
                        (a, b): _torch_head32(plain, block5[:, :, a:, b:])
                        for a in (0, 1)
                        for b in (0, 1)
                    }
                )
        m8 = _stitch({key: torch.from_numpy(m.transpose(0, 3, 1, 2)) for key, m in phases.items()})
    assert_logits_close(forward.logits(atrous(plain, 16), x), m16)
    assert_logits_close(forward.logits(atrous(plain, 8), x), m8)
    m32 = forward.logits(plain, x)  # the stride-32 map sits at every 4th cell of stride 8's
    assert_logits_close(m8[:, ::4, ::4][:, : m32.shape[1], : m32.shape[2]], m32)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_referee_stitches_what_the_dilated_network_computes(stride: int) -> None:
    graph = random_classifier(TINY, seed=4)
    x = sample_images(2, 5, (288, 320))
    stitched = referee.stitched(graph, x, stride, (7, 7))
    assert_logits_close(forward.logits(atrous(to_fcn(graph), stride), x), stitched)


# ------------------------------------------------------------------ the proof


@pytest.mark.parametrize("stride", [16, 8])
def test_verify_proves_a_dilated_network(stride: int) -> None:
    graph = random_classifier(TINY, seed=1)
    report = verify(graph, atrous(to_fcn(graph), stride), sizes=[288, 320])
    assert report.passed and report.output_stride == stride
    assert [c.size for c in report.strided] == [(224, 224), (288, 288), (320, 320)]
    assert all(c.agreement is not None and c.agreement.passed for c in report.strided)


def test_verify_fails_a_dilation_that_disagrees_with_the_recorded_stride() -> None:
    graph = random_classifier(TINY, seed=1)
    fcn = atrous(to_fcn(graph), 8)
    fc6 = replace(fcn.head[0], dilation=2)  # stride 16's fc6 in a stride-8 network
    report = verify(graph, replace(fcn, head=(fc6, *fcn.head[1:])))
    assert not report.passed
    assert any(c.map_shape != c.expected_shape for c in report.strided)
    conv5 = replace(fcn.trunk[-1], dilation=1)  # same map shape, wrong values
    report = verify(graph, replace(fcn, trunk=(*fcn.trunk[:-1], conv5)))
    assert not report.passed
    assert all(c.map_shape == c.expected_shape for c in report.strided)
    assert not all(c.passed for c in report.strided)


def test_verify_fails_a_plain_network_recorded_at_stride_16() -> None:
    graph = random_classifier(TINY, seed=1)
    fcn = to_fcn(graph)
    report = verify(graph, replace(fcn, info=replace(fcn.info, output_stride=16)))
    assert not report.passed


def test_verify_a_4x4_head_at_stride_8(tmp_path: Path) -> None:
    """A fine-tuned 150x150 model's head is 4x4 over pool5: the same construction applies."""
    source = tmp_path / "m.keras"
    keras_finetuned("flatten", 150).save(str(source))
    with load(str(source)) as graph:
        fcn = atrous(to_fcn(graph), 8)
        assert fcn.window == (4, 4) and fcn.head[0].dilation == 4
        report = verify(graph, fcn, sizes=[192])
    assert report.passed
    assert [c.map_shape for c in report.strided] == [(3, 3), (192 // 8 - 15,) * 2]
