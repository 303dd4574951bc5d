"""The VGG family (11/13/16/19), batch norm folded, and half-precision outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from fixtures.generate import GENERATIONS, TINY, make_weights, write_checkpoint
from fixtures.torch_vgg import VGGFCN, classifier, timm_state_dict
from tests.conftest import read_all
from vggfcn import forward, referee
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.arch import PLANS
from vggfcn.convert import to_fcn
from vggfcn.formats import load
from vggfcn.graph import SourceGraph
from vggfcn.precision import from_bfloat16_bits, to_bfloat16_bits
from vggfcn.tensor import Tensor
from vggfcn.verify import sample_images, verify

WIDTHS, FC, CLASSES = (4, 8, 8, 16, 16), 32, 10


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("arch", ["vgg11", "vgg13", "vgg19"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_architecture_in_every_keras_generation(
    tmp_path: Path, arch: str, generation: str
) -> None:
    source = tmp_path / ("m.weights.h5" if generation == "keras3-weights" else "m.h5")
    write_checkpoint(source, generation, replace(TINY, arch=arch))
    out = tmp_path / "fcn.safetensors"
    result = convert_file(str(source), str(out))
    assert result.arch == arch
    assert verify_files(str(source), str(out)).passed
    assert inspect_file(str(out)).as_dict()["arch"] == arch


@pytest.mark.parametrize("arch", sorted(PLANS))
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_torch_family_with_and_without_batch_norm(
    tmp_path: Path, arch: str, batch_norm: bool, layout: str
) -> None:
    model = classifier(WIDTHS, FC, CLASSES, seed=1, plan=PLANS[arch], batch_norm=batch_norm)
    sd = model.state_dict()
    source = tmp_path / "m.pth"
    torch.save(timm_state_dict(sd) if layout == "timm" else sd, source)
    x = sample_images(1, seed=2)
    with load(str(source)) as graph, torch.no_grad():
        assert isinstance(graph, SourceGraph)
        fcn = to_fcn(graph)
        assert fcn.name == arch
        ours = referee.head(graph, referee.pool5(graph, x, forward.Scratch()))
        folded = forward.logits(fcn, x)[:, 0, 0]
        theirs = model(_nchw(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    np.testing.assert_allclose(folded, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    out = tmp_path / "fcn.safetensors"
    convert_file(str(source), str(out), layout="oihw", names="torch")
    report = verify_files(str(source), str(out))
    assert report.passed and report.trunk_shared is not batch_norm
    fcn = VGGFCN(WIDTHS, FC, CLASSES, plan=PLANS[arch]).eval()  # no BatchNorm: folded
    fcn.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fcn(_nchw(x))[:, :, 0, 0], model(_nchw(x)), rtol=1e-4, atol=1e-4)
    meta = inspect_file(str(out)).as_dict()
    assert meta["head"] == "convolutional"


def test_fold_equals_conv_then_batch_norm(tmp_path: Path) -> None:
    model = classifier(WIDTHS, FC, CLASSES, seed=3, batch_norm=True)
    conv, bn = model.features[0], model.features[1]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x))).permute(0, 2, 3, 1).numpy()
    torch.save(model.state_dict(), tmp_path / "bn.pth")
    with load(str(tmp_path / "bn.pth")) as graph:
        assert isinstance(graph, SourceGraph)
        first = to_fcn(graph).trunk[0]
        kernel, bias = first.kernel.read(), first.bias.read()
    got = forward.conv2d(x.permute(0, 2, 3, 1).numpy(), kernel, bias, same=True, relu=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_a_file_that_forgot_to_fold_is_caught(tmp_path: Path) -> None:
    """Unfolded conv weights with the batch norms dropped: right shapes, wrong function."""
    model = classifier(WIDTHS, FC, CLASSES, seed=4, batch_norm=True)
    torch.save(model.state_dict(), tmp_path / "bn.pth")
    plain = {k: v for k, v in model.state_dict().items() if "running" not in k}
    with load(str(tmp_path / "bn.pth")) as original:
        assert isinstance(original, SourceGraph)
        fcn = to_fcn(original)
        unfolded = [  # each conv's own kernel, OIHW -> HWIO, and bias: no batch norm in it
            (
                plain[f"{layer.source_name}.weight"].permute(2, 3, 1, 0),
                plain[f"{layer.source_name}.bias"],
            )
            for layer in fcn.trunk
        ]
        forgot = replace(
            fcn,
            trunk=tuple(
                replace(layer, kernel=_wrap(k), bias=_wrap(b))
                for layer, (k, b) in zip(fcn.trunk, unfolded, strict=True)
            ),
        )
        assert verify(original, fcn).passed
        assert not verify(original, forgot).passed


def _wrap(t: torch.Tensor) -> Tensor:
    return Tensor.wrap(t.detach().contiguous().numpy(), "<test>")


def test_bfloat16_rounding_matches_ml_dtypes() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.005859375, 1.0078125, 3.4e38, -3.4e38,
                        1e-40, np.inf, -np.inf, np.nan, 65504.0], dtype=np.float32)  # fmt: skip
    x = np.concatenate(
        [
            special,
            rng.standard_normal(100_000).astype(np.float32)
            * 10.0 ** rng.integers(-30, 30, 100_000),
        ]
    )
    ours = to_bfloat16_bits(x.astype(np.float32))
    theirs = x.astype(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(from_bfloat16_bits(ours[np.isnan(x)])).all()
    assert np.array_equal(from_bfloat16_bits(ours[np.isinf(x)]), x[np.isinf(x)])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_output_passes_its_tolerance_and_fails_float32s(
    keras1: Path, tmp_path: Path, dtype: str
) -> None:
    out = tmp_path / "half.safetensors"
    convert_file(str(keras1), str(out), dtype=dtype)
    stored = safetensors.torch.load_file(str(out))
    assert (
        stored["fc6.kernel"].dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    )
    _, tensors = read_all(keras1)
    fc6 = torch.from_numpy(tensors["fc1.kernel"].reshape(7, 7, 16, 32).copy())
    assert torch.equal(
        stored["fc6.kernel"], fc6.to(stored["fc6.kernel"].dtype)
    )  # torch's own rounding
    own = verify_files(str(keras1), str(out))
    assert own.passed and own.precision == dtype and own.atol > 1e-4
    assert not verify_files(str(keras1), str(out), atol=1e-4, rtol=1e-4).passed
    assert inspect_file(str(out)).as_dict()["layers"][0]["dtype"] == (
        "bfloat16" if dtype == "bfloat16" else "float16"
    )


def test_keras3_bfloat16_weights_are_read(tmp_path: Path) -> None:
    """Keras 3 stores bfloat16 as opaque 2-byte values tagged dtype=bfloat16."""
    path = tmp_path / "bf16.weights.h5"
    write_checkpoint(path, "keras3-weights", keras_dtype="bfloat16")
    expected = [
        a.astype(ml_dtypes.bfloat16).astype(np.float32)
        for _, arrays in make_weights(TINY)
        for a in arrays
    ]
    _, tensors = read_all(path)
    got = list(tensors.values())
    assert inspect_file(str(path)).as_dict()["layers"][0]["dtype"] == "bfloat16"
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "fcn.safetensors"
    convert_file(str(path), str(out))
    assert verify_files(str(path), str(out)).passed


def test_float16_input_reads_exactly(keras1: Path, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "f16.h5"
    path.write_bytes(keras1.read_bytes())
    with h5py.File(path, "r+") as f:
        k = f["fc2/fc2_W_1:0"][()]
        del f["fc2/fc2_W_1:0"]
        f["fc2"].create_dataset("fc2_W_1:0", data=k.astype(np.float16))
    _, tensors = read_all(path)
    np.testing.assert_array_equal(tensors["fc2.kernel"], k.astype(np.float16).astype(np.float32))
    out = tmp_path / "o.safetensors"
    convert_file(str(path), str(out))
    assert safetensors.numpy.load_file(str(out))["fc7.kernel"].dtype == np.float32
