"""Detection and segmentation backbones: channel order flipped and proven, and SSD/DeepLab's
reduced heads made from any VGG16 vggfcn reads (Caffe's original, torchvision's, Keras'),
loadable into ssd.pytorch's `vgg()` ModuleList and proven value by value."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import vggfcn.convert
from fixtures.caffe import write_caffemodel
from fixtures.generate import TINY
from fixtures.torch_vgg import classifier
from tests.helpers import assert_refused, run, safetensors_metadata, tensors
from vggfcn.verify import sample_images


@pytest.fixture(scope="module")
def caffemodel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("caffe") / "VGG_ILSVRC_16_layers.caffemodel"
    return path, write_caffemodel(path, "v1")


# ------------------------------------------------------------ channel order


def test_caffe_source_records_bgr_and_caffe_preprocessing(
    caffemodel: tuple[Path, list], tmp_path: Path
) -> None:  # type: ignore[type-arg]
    source, _ = caffemodel
    out = tmp_path / "bgr.safetensors"
    assert run("convert", source, out).exit_code == 0
    meta = safetensors_metadata(out)
    assert (meta["channel_order"], meta["preprocessing"]) == ("bgr", "caffe")
    assert meta["source_format"] == "caffemodel/v1"


def test_rgb_flips_conv1_and_verify_proves_it(
    caffemodel: tuple[Path, list], tmp_path: Path
) -> None:  # type: ignore[type-arg]
    source, layers = caffemodel
    out = tmp_path / "rgb.safetensors"
    assert run("convert", "--rgb", source, out).exit_code == 0
    assert safetensors_metadata(out)["channel_order"] == "rgb"
    conv1 = tensors(out)["block1_conv1.kernel"]  # HWIO; Caffe's is OIHW over B, G, R
    np.testing.assert_array_equal(conv1, layers[0].kernel.transpose(2, 3, 1, 0)[:, :, ::-1, :])
    verified = run("verify", source, out)
    assert verified.exit_code == 0, verified.stdout
    assert "differ: each network its own" in verified.stdout  # conv1 differs: no shared pool5


def test_a_flip_that_is_claimed_but_not_made_fails_verify(
    caffemodel: tuple[Path, list],  # type: ignore[type-arg]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, _ = caffemodel
    out = tmp_path / "claims-rgb.safetensors"
    monkeypatch.setattr(vggfcn.convert, "_flipped_input", lambda layer: layer)
    assert run("convert", "--rgb", source, out).exit_code == 0
    monkeypatch.undo()
    verified = run("verify", source, out)
    assert verified.exit_code == 1 and "FAIL" in verified.stdout


def test_rgb_on_an_rgb_source_changes_nothing_and_bgr_flips_it(tmp_path: Path) -> None:
    source = tmp_path / "tv.pth"
    torch.save(classifier(TINY.convs, 32, 10).state_dict(), source)
    same, flipped = tmp_path / "rgb.safetensors", tmp_path / "bgr.safetensors"
    assert run("convert", "--rgb", source, same).exit_code == 0
    assert run("convert", "--bgr", source, flipped).exit_code == 0
    assert "bit-identical" in run("verify", source, same).stdout
    assert run("verify", source, flipped).exit_code == 0
    np.testing.assert_array_equal(
        tensors(flipped)["block1_conv1.kernel"], tensors(same)["block1_conv1.kernel"][:, :, ::-1]
    )


def test_predict_on_an_rgb_flipped_file_matches_the_bgr_original(
    caffemodel: tuple[Path, list],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    """Caffe preprocessing is 0..255 minus the ImageNet means; a flipped file takes it in RGB
    order, and gives what the BGR original gives on the same photo."""
    pytest.importorskip("PIL")
    from PIL import Image

    source, _ = caffemodel
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (256, 288, 3), np.uint8)).save(image)
    maps = []
    for options in ([], ["--rgb"]):
        out = tmp_path / f"fcn{len(options)}.safetensors"
        assert run("convert", *options, source, out).exit_code == 0
        scores = tmp_path / f"scores{len(options)}.npy"
        assert run("predict", out, image, "--out", scores).exit_code == 0
        maps.append(np.load(scores))
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-4 * np.abs(maps[0]).max())


# ------------------------------------------------------------ reduced heads for SSD and DeepLab


def ssd_vgg(widths: tuple[int, ...], conv6: int) -> nn.ModuleList:
    """ssd.pytorch's `vgg(base['300'], 3)` (amdegroot/ssd.pytorch ssd.py), with our widths."""
    w = widths
    cfg = [w[0], w[0], "M", w[1], w[1], "M", w[2], w[2], w[2], "C", w[3], w[3], w[3], "M"]
    cfg += [w[4], w[4], w[4]]
    layers: list[nn.Module] = []
    channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif v == "C":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)]
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)
    pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    six = nn.Conv2d(channels, conv6, kernel_size=3, padding=6, dilation=6)
    seven = nn.Conv2d(conv6, conv6, kernel_size=1)
    layers += [pool5, six, nn.ReLU(inplace=True), seven, nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


@pytest.mark.parametrize("kind", ["caffemodel", "torchvision", "keras1"])
def test_ssd_names_load_strictly_into_ssd_vgg_and_verify(
    kind: str,
    caffemodel: tuple[Path, list],
    keras1: Path,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    model = classifier(TINY.convs, 32, 10, seed=5)
    if kind == "torchvision":
        source = tmp_path / "vgg16.pth"
        torch.save(model.state_dict(), source)
    else:
        source = caffemodel[0] if kind == "caffemodel" else keras1
    out = tmp_path / "vgg16_reducedfc.safetensors"
    converted = run(
        "convert", "--head", "reduced", "--names", "ssd", "--layout", "oihw", source, out
    )
    assert converted.exit_code == 0, converted.stderr
    assert "reduced backbone" in converted.stdout and "conv6 as (8, 16, 3, 3)" in converted.stdout
    state = safetensors.torch.load_file(str(out))
    indices = sorted({int(key.split(".")[0]) for key in state})
    assert indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33]
    vgg = ssd_vgg(TINY.convs, 8)
    vgg.load_state_dict(state, strict=True)
    x = torch.from_numpy(sample_images(1, seed=2, size=300).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for layer in vgg:
            x = layer(x)
    assert tuple(x.shape) == (1, 8, 19, 19)  # SSD300's conv7 map
    meta = safetensors_metadata(out)
    assert meta["head"] == "reduced" and "dilation 6" in meta["use_ssd"]
    assert "dilation 12" in meta["use_deeplab_largefov"]
    verified = run("verify", source, out)
    assert verified.exit_code == 0, verified.stdout
    assert "no logits are compared" in verified.stdout and "PASS" in verified.stdout
    if kind == "torchvision":  # the decimation, checked against torch's own fc6 and fc7
        fc6 = model.classifier[0].weight.detach().view(32, 16, 7, 7)
        torch.testing.assert_close(state["31.weight"], fc6[0::4, :, 0::3, 0::3], rtol=0, atol=0)
        fc7 = model.classifier[3].weight.detach()
        torch.testing.assert_close(state["33.weight"][:, :, 0, 0], fc7[0::4, 0::4], rtol=0, atol=0)


def test_a_tampered_reduced_value_fails_verify(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "reduced.safetensors"
    assert run("convert", "--head", "reduced", keras1, out).exit_code == 0
    data = bytearray(out.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    at = 8 + n + header["conv7.kernel"]["data_offsets"][0] + 4 * 17
    (value,) = struct.unpack("<f", data[at : at + 4])
    data[at : at + 4] = struct.pack("<f", value + 0.25)
    out.write_bytes(bytes(data))
    verified = run("verify", keras1, out)
    assert verified.exit_code == 1
    assert "conv7" in verified.stdout and "1 differ  FAIL" in verified.stdout


def test_reduced_fc8_keeps_every_fourth_input(keras1: Path, tmp_path: Path) -> None:
    out = tmp_path / "reduced-fc8.safetensors"
    assert run("convert", "--head", "reduced-fc8", keras1, out).exit_code == 0
    stored = tensors(out)
    assert stored["fc8.kernel"].shape == (1, 1, 8, TINY.classes)
    assert run("verify", keras1, out).exit_code == 0
    assert_refused(run("predict", out, keras1), out, "reduced head")


def test_reduced_heads_are_refused_where_they_do_not_apply(keras1: Path, tmp_path: Path) -> None:
    for args, expected in (
        (["--names", "ssd"], "--head reduced"),
        (["--head", "reduced", "--names", "ssd"], "--layout oihw"),
        (["--head", "reduced-fc8", "--names", "ssd", "--layout", "oihw"], "--head reduced"),
    ):
        out = tmp_path / "x.safetensors"
        result = run("convert", *args, keras1, out)
        assert result.exit_code == 2 and expected in result.stderr, result.stderr
        assert not out.exists()
    vgg19 = tmp_path / "vgg19.pth"
    torch.save(classifier(TINY.convs, 32, 10, plan=(2, 2, 4, 4, 4)).state_dict(), vgg19)
    result = run("convert", "--head", "reduced", vgg19, tmp_path / "r.safetensors")
    assert result.exit_code == 2 and "VGG16's stock head" in result.stderr
