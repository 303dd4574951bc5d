"""Full-size VGG16 (138 M parameters, ~553 MB) end to end: generate, convert, verify, inspect.

Marked slow (about half a minute); `make test` runs it, as CI does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.generate import FULL, write_checkpoint
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.convert import to_fcn
from vggfcn.formats import load
from vggfcn.selfcheck import fc6_read_as_chw
from vggfcn.verify import verify

pytestmark = pytest.mark.slow

#: Parameter count of keras.applications.VGG16 (include_top=True), a public figure.
VGG16_PARAMETERS = 138_357_544


def test_full_size_convert_and_verify(full_keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "vgg16.fcn.safetensors"
    result = convert_file(str(full_keras1), str(out))
    assert result.fc6_shape == (7, 7, 512, 4096)
    assert result.parameters == VGG16_PARAMETERS
    assert result.bytes_written == pytest.approx(VGG16_PARAMETERS * 4, abs=8192)
    report = verify_files(str(full_keras1), str(out))
    assert report.passed and report.classes == 1000
    assert report.top1_agreement == 1.0
    info = inspect_file(str(out)).as_dict()
    assert info["parameters"] == VGG16_PARAMETERS and info["arch"] == "vgg16"


def test_full_size_wrong_flatten_order_fails(full_keras1: Path) -> None:
    with load(str(full_keras1)) as classifier:
        report = verify(classifier, fc6_read_as_chw(to_fcn(classifier)), images=1)
    assert not report.passed


def test_full_size_torchvision_pth_converts_and_verifies(tmp_path: Path) -> None:
    import torch

    from fixtures.torch_vgg import classifier

    source = tmp_path / "vgg16-torchvision.pth"
    torch.save(classifier((64, 128, 256, 512, 512), 4096, 1000).state_dict(), source)
    out = tmp_path / "vgg16.fcn.safetensors"
    result = convert_file(str(source), str(out), layout="oihw", names="torch")
    assert result.parameters == VGG16_PARAMETERS and result.fc6_shape == (4096, 512, 7, 7)
    report = verify_files(str(source), str(out))
    assert report.passed and all(c.agreement.passed for c in report.spatial)


def test_full_size_vgg19_end_to_end(tmp_path: Path) -> None:
    from dataclasses import replace

    source = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    write_checkpoint(source, "keras1", replace(FULL, arch="vgg19"), seed=0)
    out = tmp_path / "vgg19.fcn.safetensors"
    result = convert_file(str(source), str(out), dtype="float16")
    assert result.arch == "vgg19" and result.parameters == 143_667_240  # Keras' VGG19 count
    report = verify_files(str(source), str(out))
    assert report.passed and report.precision == "float16"


@pytest.fixture(scope="module")
def full_caffemodel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Oxford release's layout: V1 layers, legacy dims, no input dims (553,432,081 bytes)."""
    from fixtures.caffe import write_caffemodel

    path = tmp_path_factory.mktemp("caffe") / "VGG_ILSVRC_16_layers.caffemodel"
    write_caffemodel(path, "v1", full=True)
    return path


def test_full_size_caffemodel_converts_and_verifies_at_224_and_288(
    full_caffemodel: Path, tmp_path: Path
) -> None:
    assert full_caffemodel.stat().st_size == 553_432_081
    out = tmp_path / "vgg16.fcn.safetensors"
    result = convert_file(str(full_caffemodel), str(out))
    assert result.parameters == VGG16_PARAMETERS and result.fc6_shape == (7, 7, 512, 4096)
    report = verify_files(str(full_caffemodel), str(out), sizes=(288,))
    assert report.passed and report.input_size == (224, 224)
    assert [c.map_shape for c in report.spatial] == [(3, 3)]  # type: ignore[union-attr]


def test_full_size_caffemodel_to_rgb_is_proven_too(full_caffemodel: Path, tmp_path: Path) -> None:
    out = tmp_path / "vgg16-rgb.fcn.safetensors"
    convert_file(str(full_caffemodel), str(out), channel_order="rgb")
    report = verify_files(str(full_caffemodel), str(out), sizes=(288,))
    assert report.passed and not report.trunk_shared  # type: ignore[union-attr]
    assert inspect_file(str(out)).as_dict()["channel_order"] == "rgb"
