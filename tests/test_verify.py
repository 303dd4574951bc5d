"""verify: a right conversion passes for every generation; a wrong one fails; the rule is exact."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import GENERATIONS
from vggfcn import forward, referee, selfcheck
from vggfcn.api import convert_file, verify_files
from vggfcn.arch import Arch
from vggfcn.convert import to_fcn
from vggfcn.errors import ArchitectureError
from vggfcn.selfcheck import fc6_read_as_chw
from vggfcn.synthetic import random_classifier
from vggfcn.tensor import Tensor
from vggfcn.verify import prove, sample_images, verify


@pytest.mark.parametrize("generation", GENERATIONS)
def test_convert_then_verify_passes_for_every_generation(
    tiny_files: dict[str, Path], tmp_path: Path, generation: str
) -> None:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(tiny_files[generation]), str(out))
    report = verify_files(str(tiny_files[generation]), str(out), images=3)
    assert report.passed
    assert report.max_scaled_error < 1e-5  # float rounding only, far inside the 1e-4 tolerance
    assert report.top1_agreement == 1.0 and report.top5_agreement == 1.0
    assert report.images == 3


def test_channels_first_fc6_is_caught() -> None:
    classifier = random_classifier(seed=1)
    report = verify(classifier, fc6_read_as_chw(to_fcn(classifier)))
    assert not report.passed
    assert report.max_scaled_error > 1e-2


def test_tolerance_rule_is_scaled_by_the_logits() -> None:
    """|fcn - ref| <= atol*max(1, max|ref|) + rtol*|ref|: shifting the FCN's fc8 bias by d moves
    every logit by exactly d, so the verdict flips where the rule says it should."""
    classifier = random_classifier(seed=3)
    fcn = to_fcn(classifier)
    scale = verify(classifier, fcn, sizes=()).scale  # max(1, max|reference logit|)
    fc8 = fcn.head[2]

    def shifted(d: float) -> bool:
        bias = fc8.bias.read() + np.float32(d)
        broken = replace(fcn, head=(*fcn.head[:2], replace(fc8, bias=Tensor.wrap(bias, "b"))))
        return verify(classifier, broken, sizes=(), atol=1e-3, rtol=0.0).passed

    assert shifted(0.5e-3 * scale)
    assert not shifted(2e-3 * scale)


def test_original_and_converted_must_be_the_same_network() -> None:
    a = random_classifier(seed=0)
    other = Arch.from_blocks("vgg16", (4, 8, 8, 16, 16), (32, 32), 7)
    b = to_fcn(random_classifier(other))
    with pytest.raises(ArchitectureError, match="converted network is vgg16"):
        verify(a, b)
    with pytest.raises(ArchitectureError, match="give the original first"):
        prove(to_fcn(a), a)


def test_verify_reads_the_converted_file_not_the_original(keras1: Path, tmp_path: Path) -> None:
    """Change one float (a class bias) inside the converted file: verify must notice."""
    out = tmp_path / "fcn.safetensors"
    convert_file(str(keras1), str(out))
    data = bytearray(out.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    begin = header_end + json.loads(data[8:header_end])["fc8.bias"]["data_offsets"][0]
    data[begin : begin + 4] = np.float32(50.0).tobytes()
    out.write_bytes(bytes(data))
    assert not verify_files(str(keras1), str(out)).passed


def test_selfcheck_passes_and_each_check_can_fail() -> None:
    checks = selfcheck.run()
    assert [c.passed for c in checks] == [True] * 4
    assert {c.name for c in checks} >= {"seed example: dense == 1x1 conv", "conv2d == direct loop"}


def test_sample_images_are_deterministic() -> None:
    np.testing.assert_array_equal(sample_images(2, 7), sample_images(2, 7))
    assert not np.array_equal(sample_images(1, 7), sample_images(1, 8))
    x = sample_images(1, 0)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    assert -128 <= x.min() and x.max() <= 128


def test_probes_reach_weights_that_an_image_cannot() -> None:
    """Break an fc6 weight that multiplies a pool5 value the image leaves at zero (ReLU):
    the image alone cannot see it; the probes must."""
    classifier = random_classifier(seed=4)
    fcn = to_fcn(classifier)
    pool5 = referee.pool5(classifier, sample_images(1, seed=0), forward.Scratch())[0]
    h, w, c = np.argwhere(pool5 == 0)[0]
    fc6 = fcn.head[0]
    kernel = fc6.kernel.read().copy()
    kernel[h, w, c, :] += 1.0
    broken = replace(fcn, head=(replace(fc6, kernel=Tensor.wrap(kernel, "k")), *fcn.head[1:]))
    assert verify(classifier, broken, images=1, probes=0, seed=0).passed
    assert not verify(classifier, broken, images=1, probes=8, seed=0).passed


def test_spatial_check_covers_every_cell_at_each_size() -> None:
    classifier = random_classifier(seed=5)
    report = verify(classifier, to_fcn(classifier), sizes=(224, 288, 320))
    assert report.passed
    assert [(c.size, c.map_shape) for c in report.spatial] == [(288, (3, 3)), (320, (4, 4))]
    assert all(c.agreement.max_scaled_error < 1e-5 for c in report.spatial)


def test_spatial_check_fails_with_the_wrong_flatten_order() -> None:
    classifier = random_classifier(seed=6)
    report = verify(classifier, fc6_read_as_chw(to_fcn(classifier)), sizes=(288,))
    assert not report.passed and not report.spatial[0].agreement.passed


def test_trunk_that_differs_is_run_on_its_own_weights() -> None:
    classifier = random_classifier(seed=7)
    fcn = to_fcn(classifier)
    layer = fcn.trunk[3]
    kernel = layer.kernel.read().copy()
    kernel[0, 0, 0, 0] = np.nextafter(kernel[0, 0, 0, 0], np.float32(1))  # one ulp
    nudged = replace(
        fcn, trunk=(*fcn.trunk[:3], replace(layer, kernel=Tensor.wrap(kernel, "k")), *fcn.trunk[4:])
    )
    report = verify(classifier, nudged)
    assert not report.trunk_shared
    assert report.passed  # one ulp in one weight stays far inside the tolerance
