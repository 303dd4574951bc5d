"""State dicts as source graphs (`formats/state_dict.py`): torchvision and timm layouts (`_bn`
variants, fine-tuned classifiers of any depth, any common prefix, bookkeeping skipped) and
tensorflow-vgg `.npy` layer dicts convert, verify exact, and agree with real torch; what is
missing is listed at once, and two networks in one file are refused.

Reading the containers is tested in test_torch_zip.py and test_npy_file.py; batch norms folded
in test_fold.py, across the whole VGG family in test_family.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fixtures.finetuned import torch_finetuned
from fixtures.torch_vgg import VGGFCN, classifier, timm_state_dict
from tests.helpers import (
    CLASSES,
    FC,
    TF_NAMES,
    WIDTHS,
    assert_logits_close,
    nchw,
    refuse_everywhere,
    safetensors_metadata,
    tiny_arch,
    verified_conversion,
)
from vggfcn import forward, referee
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.arch import Arch
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError
from vggfcn.formats import load
from vggfcn.synthetic import random_layers
from vggfcn.verify import sample_images


@pytest.fixture(scope="module")
def torch_files(
    torch_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """`torch_model` as torchvision and timm state dicts, in .pth and .safetensors."""
    folder = tmp_path_factory.mktemp("torch")
    tv = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    files = {}
    for layout, sd in (("torchvision", tv), ("timm", timm_state_dict(tv))):
        files[f"{layout}.pth"] = folder / f"{layout}.pth"
        torch.save(sd, files[f"{layout}.pth"])
        files[f"{layout}.safetensors"] = folder / f"{layout}.safetensors"
        safetensors.torch.save_file(sd, str(files[f"{layout}.safetensors"]))
    return files


# ------------------------------------------------------------ torchvision and timm


@pytest.mark.parametrize(
    "source", ["torchvision.pth", "torchvision.safetensors", "timm.pth", "timm.safetensors"]
)
@pytest.mark.parametrize("layout", ["hwio", "oihw"])
def test_convert_then_verify_passes(
    torch_files: dict[str, Path], tmp_path: Path, source: str, layout: str
) -> None:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(torch_files[source]), str(out), layout=layout)
    report = verify_files(str(torch_files[source]), str(out), sizes=(288,))
    assert report.passed and report.max_scaled_error < 1e-5


@pytest.mark.parametrize("source", ["torchvision.pth", "timm.safetensors"])
def test_our_reading_of_the_file_matches_torch_itself(
    torch_model: torch.nn.Module, torch_files: dict[str, Path], source: str
) -> None:
    """The referee on the file as it stands vs torch's own module: (C, H, W) columns, OIHW
    kernels and (out, in) matrices are run in torch's conventions."""
    x = sample_images(2, seed=3)
    with load(str(torch_files[source])) as graph, torch.no_grad():
        ours = referee.head(graph, referee.pool5(graph, x, forward.Scratch()))
        theirs = torch_model(nchw(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_torch_fcn_loads_our_output_strictly_and_matches_torch_classifier(
    torch_model: torch.nn.Module, torch_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(torch_files["torchvision.pth"]), str(out), layout="oihw", names="torch")
    fcn = VGGFCN(WIDTHS, FC, CLASSES).eval()
    fcn.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    x = nchw(sample_images(2, seed=4))
    with torch.no_grad():
        scores = fcn(x)
        logits = torch_model(x)
    assert scores.shape == (2, CLASSES, 1, 1)
    torch.testing.assert_close(scores[:, :, 0, 0], logits, rtol=1e-4, atol=1e-4)
    x288 = nchw(sample_images(1, seed=5, size=288))
    with torch.no_grad():  # at 288 the map is 3x3; cell (2, 1) is the classifier on that window
        big = fcn(x288)
        pool5 = torch_model.features(x288)
        window = torch_model.classifier(torch.flatten(pool5[:, :, 2:9, 1:8], 1))
    assert big.shape == (1, CLASSES, 3, 3)
    torch.testing.assert_close(big[:, :, 2, 1], window, rtol=1e-4, atol=1e-4)


def test_oihw_output_of_a_torch_source_is_its_own_bytes(
    torch_files: dict[str, Path], tmp_path: Path
) -> None:
    """OIHW in, OIHW out: the permutations compose to nothing, so the kernels are copied as is."""
    out = tmp_path / "fcn.safetensors"
    convert_file(str(torch_files["timm.safetensors"]), str(out), layout="oihw", names="torch")
    ours = safetensors.torch.load_file(str(out))
    theirs = safetensors.torch.load_file(str(torch_files["timm.safetensors"]))
    assert torch.equal(ours["features.0.weight"], theirs["features.0.weight"])
    assert torch.equal(ours["fc6.weight"], theirs["pre_logits.fc1.weight"])
    assert torch.equal(ours["fc8.weight"][:, :, 0, 0], theirs["head.fc.weight"])


def test_inspect_reports_layout_and_flatten_order(torch_files: dict[str, Path]) -> None:
    info = inspect_file(str(torch_files["torchvision.pth"])).as_dict()
    assert (info["format"], info["generation"], info["flatten_order"]) == (
        "pytorch-zip",
        "torchvision",
        "CHW",
    )
    info = inspect_file(str(torch_files["timm.safetensors"])).as_dict()
    assert (info["format"], info["generation"]) == ("safetensors", "timm")
    assert info["softmax"] == "no"


def test_convert_json_reports_the_output_layout(
    torch_files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o.safetensors"
    result = CliRunner().invoke(
        main,
        [
            "convert",
            "--json",
            "--layout",
            "oihw",
            "--names",
            "torch",
            str(torch_files["timm.pth"]),
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["fc6_shape"] == [FC, 16, 7, 7]


# ------------------------------------------------------------ fine-tuned, wrapped, prefixed


def torch_fcn(path: Path) -> nn.Module:
    """The converted file (`--layout oihw --names torch`) as a torch module, loaded strictly."""
    tensors = safetensors.torch.load_file(str(path))
    activations = safetensors_metadata(path)["head_activations"].split(",")
    features = [
        int(k.split(".")[1]) for k in tensors if k.startswith("features.") and "weight" in k
    ]

    class FCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for index in range(max(features) + 2):
                key = f"features.{index}.weight"
                if key in tensors:
                    w = tensors[key]
                    layers.append(nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1))
                elif layers and isinstance(layers[-1], nn.Conv2d):
                    layers.append(nn.ReLU())
                else:
                    layers.append(nn.MaxPool2d(2))
            layers.append(nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)
            for i, _ in enumerate(activations):
                w = tensors[f"fc{6 + i}.weight"]
                setattr(self, f"fc{6 + i}", nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            for i, activation in enumerate(activations):
                x = getattr(self, f"fc{6 + i}")(x)
                x = F.relu(x) if activation == "relu" else x
            return x

    module = FCN().eval()
    module.load_state_dict(tensors, strict=True)
    return module


def check_against_torch(model: nn.Module, out: Path) -> None:
    fcn = torch_fcn(out)
    x = nchw(sample_images(2, seed=3))
    big = nchw(sample_images(1, seed=4, size=288))
    with torch.no_grad():
        assert_logits_close(fcn(x)[:, :, 0, 0].numpy(), model(x).numpy())
        cells, pool5 = fcn(big)[0], model.features(big)
        for i in range(3):
            for j in range(3):
                window = model.classifier(torch.flatten(pool5[:, :, i : i + 7, j : j + 7], 1))
                assert_logits_close(cells[:, i, j].numpy(), window[0].numpy())


def _lightning(model: nn.Module) -> dict[str, Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 224, 224)).sum().backward()  # optimizer state holds tensors too
    optimizer.step()
    model.zero_grad()
    return {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "epoch": 3,
        "global_step": 120,
        "hyper_parameters": {"lr": 0.1, "backbone": "vgg16", "layers": [64]},
        "optimizer_states": [optimizer.state_dict()],
    }


TORCH_CASES = {
    "DataParallel": lambda m: nn.DataParallel(m).state_dict(),
    "Lightning": _lightning,
    "training loop": lambda m: {"model_state_dict": m.state_dict(), "epoch": 2, "loss": 0.3},
    "bfloat16": lambda m: {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()},
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_wrapped_state_dicts_convert_and_equal_torch(tmp_path: Path, case: str) -> None:
    model = torch_finetuned((64,), 5)
    source = tmp_path / "model.pth"
    torch.save(TORCH_CASES[case](model), source)
    if case == "bfloat16":
        model = model.to(torch.bfloat16).float()  # the function the file holds
    out = verified_conversion(source, "--layout", "oihw", "--names", "torch")
    check_against_torch(model, out)


@pytest.mark.parametrize(
    ("hidden", "batch_norm"), [((), False), ((64,), False), ((32, 16), False), ((32,), True)]
)
def test_torchvision_classifier_replaced_by_any_linear_stack(
    tmp_path: Path, hidden: tuple[int, ...], batch_norm: bool
) -> None:
    model = torch_finetuned(hidden, 4, batch_norm=batch_norm)
    source = tmp_path / "model.pth"
    torch.save(model.state_dict(), source)
    out = verified_conversion(source, "--layout", "oihw", "--names", "torch")
    check_against_torch(model, out)
    assert safetensors_metadata(out)["head_activations"] == ",".join(
        ["relu"] * len(hidden) + ["linear"]
    )


def test_vgg16_bn_safetensors_with_int64_bookkeeping(tmp_path: Path) -> None:
    """safetensors.torch writes num_batches_tracked as I64: bookkeeping, skipped."""
    model = classifier((4, 8, 8, 16, 16), 32, 10, batch_norm=True)
    source = tmp_path / "vgg16_bn.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(source))
    out = verified_conversion(source, "--layout", "oihw", "--names", "torch")
    x = nchw(sample_images(1, seed=5))
    with torch.no_grad():
        assert_logits_close(torch_fcn(out)(x)[:, :, 0, 0].numpy(), model(x).numpy())


def test_two_vgg_trunks_under_two_prefixes_are_ambiguous(tmp_path: Path) -> None:
    state = torch_finetuned().state_dict()
    both = {
        **{f"student.{k}": v for k, v in state.items()},
        **{f"teacher.{k}": v for k, v in state.items()},
    }
    source = tmp_path / "distill.pth"
    torch.save(both, source)
    result = CliRunner().invoke(main, ["inspect", str(source)])
    assert result.exit_code == 2
    assert "several prefixes" in result.stderr and "'student.'" in result.stderr


# ------------------------------------------------------------ missing tensors, listed at once


def test_missing_head_tensors_are_all_listed(torch_model: torch.nn.Module, tmp_path: Path) -> None:
    """Linear layers with biases beside one without: the missing bias is named with its shape,
    as is the weight missing beside a bias."""
    sd = {k: v for k, v in torch_model.state_dict().items() if k != "classifier.6.bias"}
    sd["classifier.9.bias"] = torch.zeros(10)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(
        ArchitectureError,
        match=r"missing classifier.6.bias \(10,\), classifier.9.weight \(10, 10\)",
    ):
        with load(str(tmp_path / "partial.pth")):
            pass


def test_missing_torch_tensors_are_listed_at_once_with_expected_shapes(
    state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    missing = {"features.0.bias": "(4,)", "classifier.3.weight": "(32, 32)"}
    missing["classifier.6.bias"] = "(10,)"
    source = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k not in missing}, source)
    refuse_everywhere(source, *(re.escape(n) for n in missing), *map(re.escape, missing.values()))


def test_missing_tensorflow_vgg_layers_are_listed_at_once(tmp_path: Path) -> None:
    layers = {TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(tiny_arch(), seed=0)}
    del layers["conv1_2"], layers["fc7"]
    source = tmp_path / "partial.npy"
    np.save(source, np.array(layers, dtype=object), allow_pickle=True)
    refuse_everywhere(source, "conv1_2", "fc7")


# ------------------------------------------------------------ tensorflow-vgg .npy


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_tensorflow_vgg_npy(tmp_path: Path, arch: str) -> None:
    names = {f"block{b}_conv{i}": f"conv{b}_{i}" for b in range(1, 6) for i in range(1, 5)}
    tiny = Arch.from_blocks(arch, (4, 8, 8, 16, 16), (32, 32), 10)
    layers = {names.get(n, n): [k, b] for n, k, b in random_layers(tiny, seed=2)}
    path = tmp_path / f"{arch}.npy"
    np.save(path, layers, allow_pickle=True)
    out = tmp_path / "fcn.safetensors"
    convert_file(str(path), str(out))
    assert verify_files(str(path), str(out)).passed
    info = inspect_file(str(path)).as_dict()
    assert (info["generation"], info["flatten_order"], info["softmax"]) == (
        "tensorflow-vgg",
        "HWC",
        "yes",
    )
