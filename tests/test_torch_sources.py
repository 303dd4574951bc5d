"""PyTorch and tensorflow-vgg sources: convert, verify exact, and agree with real torch."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from fixtures.torch_vgg import VGGFCN, classifier, timm_state_dict
from tests.helpers import Evil
from vggfcn import forward, referee
from vggfcn.api import convert_file, inspect_file, verify_files
from vggfcn.arch import Arch
from vggfcn.cli import main
from vggfcn.errors import ArchitectureError
from vggfcn.formats import load
from vggfcn.synthetic import random_layers
from vggfcn.verify import sample_images

WIDTHS, FC, CLASSES = (4, 8, 8, 16, 16), 32, 10


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return classifier(WIDTHS, FC, CLASSES, seed=0)


@pytest.fixture(scope="module")
def sources(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same network as torchvision and timm state dicts, in .pth and .safetensors."""
    folder = tmp_path_factory.mktemp("torch")
    tv = {k: v.detach().clone() for k, v in model.state_dict().items()}
    files = {}
    for layout, sd in (("torchvision", tv), ("timm", timm_state_dict(tv))):
        files[f"{layout}.pth"] = folder / f"{layout}.pth"
        torch.save(sd, files[f"{layout}.pth"])
        files[f"{layout}.safetensors"] = folder / f"{layout}.safetensors"
        safetensors.torch.save_file(sd, str(files[f"{layout}.safetensors"]))
    return files


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize(
    "source", ["torchvision.pth", "torchvision.safetensors", "timm.pth", "timm.safetensors"]
)
@pytest.mark.parametrize("layout", ["hwio", "oihw"])
def test_convert_then_verify_passes(
    sources: dict[str, Path], tmp_path: Path, source: str, layout: str
) -> None:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(sources[source]), str(out), layout=layout)
    report = verify_files(str(sources[source]), str(out), sizes=(288,))
    assert report.passed and report.max_scaled_error < 1e-5


@pytest.mark.parametrize("source", ["torchvision.pth", "timm.safetensors"])
def test_our_reading_of_the_file_matches_torch_itself(
    model: torch.nn.Module, sources: dict[str, Path], source: str
) -> None:
    """The referee on the file as it stands vs torch's own module: (C, H, W) columns, OIHW
    kernels and (out, in) matrices are run in torch's conventions."""
    x = sample_images(2, seed=3)
    with load(str(sources[source])) as graph, torch.no_grad():
        ours = referee.head(graph, referee.pool5(graph, x, forward.Scratch()))
        theirs = model(_nchw(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_torch_fcn_loads_our_output_strictly_and_matches_torch_classifier(
    model: torch.nn.Module, sources: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "fcn.safetensors"
    convert_file(str(sources["torchvision.pth"]), str(out), layout="oihw", names="torch")
    fcn = VGGFCN(WIDTHS, FC, CLASSES).eval()
    fcn.load_state_dict(safetensors.torch.load_file(str(out)), strict=True)
    x = _nchw(sample_images(2, seed=4))
    with torch.no_grad():
        scores = fcn(x)
        logits = model(x)
    assert scores.shape == (2, CLASSES, 1, 1)
    torch.testing.assert_close(scores[:, :, 0, 0], logits, rtol=1e-4, atol=1e-4)
    x288 = _nchw(sample_images(1, seed=5, size=288))
    with torch.no_grad():  # at 288 the map is 3x3; cell (2, 1) is the classifier on that window
        big = fcn(x288)
        pool5 = model.features(x288)
        window = model.classifier(torch.flatten(pool5[:, :, 2:9, 1:8], 1))
    assert big.shape == (1, CLASSES, 3, 3)
    torch.testing.assert_close(big[:, :, 2, 1], window, rtol=1e-4, atol=1e-4)


def test_oihw_output_of_a_torch_source_is_its_own_bytes(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """OIHW in, OIHW out: the permutations compose to nothing, so the kernels are copied as is."""
    out = tmp_path / "fcn.safetensors"
    convert_file(str(sources["timm.safetensors"]), str(out), layout="oihw", names="torch")
    ours = safetensors.torch.load_file(str(out))
    theirs = safetensors.torch.load_file(str(sources["timm.safetensors"]))
    assert torch.equal(ours["features.0.weight"], theirs["features.0.weight"])
    assert torch.equal(ours["fc6.weight"], theirs["pre_logits.fc1.weight"])
    assert torch.equal(ours["fc8.weight"][:, :, 0, 0], theirs["head.fc.weight"])


def test_inspect_reports_layout_and_flatten_order(sources: dict[str, Path]) -> None:
    info = inspect_file(str(sources["torchvision.pth"])).as_dict()
    assert (info["format"], info["generation"], info["flatten_order"]) == (
        "pytorch-zip",
        "torchvision",
        "CHW",
    )
    info = inspect_file(str(sources["timm.safetensors"])).as_dict()
    assert (info["format"], info["generation"]) == ("safetensors", "timm")
    assert info["softmax"] == "no"


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


def test_missing_head_tensors_are_all_listed(model: torch.nn.Module, tmp_path: Path) -> None:
    """Linear layers with biases beside one without: the missing bias is named with its shape,
    as is the weight missing beside a bias."""
    sd = {k: v for k, v in model.state_dict().items() if k != "classifier.6.bias"}
    sd["classifier.9.bias"] = torch.zeros(10)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(
        ArchitectureError,
        match=r"missing classifier.6.bias \(10,\), classifier.9.weight \(10, 10\)",
    ):
        with load(str(tmp_path / "partial.pth")):
            pass


def test_malicious_pth_is_refused_from_the_cli_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"features.0.weight": Evil(marker)}, protocol=2))
        z.writestr("evil/version", "3\n")
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(main, ["convert", str(path), str(out)])
    assert result.exit_code == 2
    assert "refused to unpickle global" in result.stderr and "system" in result.stderr
    assert not marker.exists() and not out.exists()


def test_whole_pickled_module_is_refused(model: torch.nn.Module, tmp_path: Path) -> None:
    torch.save(model, tmp_path / "module.pth")
    result = CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "module.pth")])
    assert result.exit_code == 2 and "refused to unpickle global" in result.stderr


def test_convert_json_reports_the_output_layout(sources: dict[str, Path], tmp_path: Path) -> None:
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
            str(sources["timm.pth"]),
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["fc6_shape"] == [FC, 16, 7, 7]
