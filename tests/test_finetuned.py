"""Every VGG classifier people actually have: fine-tuned heads written by real Keras 3 and real
torch convert, verify, and rebuilt in their own framework equal that framework's own logits — at
the size the model was built for, and cell by cell on the windows of a larger input."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fixtures.finetuned import (
    KERAS_HEADS,
    keras_finetuned,
    keras_head_on,
    keras_logits,
    keras_pool5,
    torch_finetuned,
)
from fixtures.torch_vgg import classifier
from vggfcn.api import inspect_file
from vggfcn.cli import main
from vggfcn.verify import sample_images

logging.getLogger("absl").setLevel(logging.ERROR)  # Keras 3 warns that .h5 is legacy


def convert_and_verify(source: Path, *options: str) -> Path:
    """The user's two commands; both must succeed, quietly."""
    out = source.parent / f"{source.name}.fcn.safetensors"
    converted = CliRunner().invoke(main, ["convert", *options, str(source), str(out)])
    assert converted.exit_code == 0, converted.stderr
    verified = CliRunner().invoke(main, ["verify", str(source), str(out)])
    assert verified.exit_code == 0, (verified.stdout, verified.stderr)
    assert verified.stdout.splitlines()[-1] == "PASS"
    return out


def metadata(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta: dict[str, str] = json.loads(f.read(n))["__metadata__"]
    return meta


# ------------------------------------------------------------ Keras 3


def keras_fcn(path: Path) -> Any:
    """The converted file as a real Keras model: Conv2D trunk and head, weights set from it."""
    import keras

    tensors = safetensors.numpy.load_file(str(path))
    meta = metadata(path)
    activations = meta["head_activations"].split(",")
    inputs = keras.Input((None, None, 3))
    x = inputs
    block = 1
    while f"block{block}_conv1.kernel" in tensors:
        index = 1
        while (name := f"block{block}_conv{index}") + ".kernel" in tensors:
            layer = keras.layers.Conv2D(
                tensors[f"{name}.kernel"].shape[-1], 3, padding="same", activation="relu"
            )
            x = layer(x)
            layer.set_weights([tensors[f"{name}.kernel"], tensors[f"{name}.bias"]])
            index += 1
        x = keras.layers.MaxPooling2D(2)(x)
        block += 1
    for i, activation in enumerate(activations):
        kernel, bias = tensors[f"fc{6 + i}.kernel"], tensors[f"fc{6 + i}.bias"]
        layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], activation=activation)
        x = layer(x)
        layer.set_weights([kernel, bias])
    return keras.Model(inputs, x)


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(theirs).max()))


def check_against_keras(model: Any, out: Path, size: int) -> None:
    """Native size: the FCN's one cell is Keras' own logits. Two pool5 blocks larger: each cell
    of the 3x3 map is Keras' own head on that pool5 window."""
    fcn = keras_fcn(out)
    x = sample_images(2, seed=7, size=size)
    native = fcn.predict(x, verbose=0)
    assert native.shape[1:3] == (1, 1)
    assert_close(native[:, 0, 0], keras_logits(model, x))
    big = sample_images(1, seed=8, size=size + 64)
    cells = fcn.predict(big, verbose=0)[0]
    pool5 = keras_pool5(model, big)
    p = pool5.shape[1] - cells.shape[0] + 1
    assert cells.shape[:2] == (3, 3)
    for i in range(3):
        for j in range(3):
            assert_close(cells[i, j], keras_head_on(model, pool5[:, i : i + p, j : j + p])[0])


KERAS_CASES = [
    ("flatten", 150, False, ".keras"),
    ("flatten", 150, True, ".h5"),
    ("gap", 224, True, ".keras"),
    ("gap", 224, False, ".h5"),
    ("bn-before-relu", 224, False, ".keras"),
    ("bn-after-relu", 224, True, ".keras"),
    ("bn-after-relu", 224, False, ".h5"),
]


@pytest.mark.parametrize(("head", "size", "functional", "suffix"), KERAS_CASES)
def test_keras_finetuned_model_converts_verifies_and_equals_keras(
    tmp_path: Path, head: str, size: int, functional: bool, suffix: str
) -> None:
    model = keras_finetuned(head, size, functional=functional)
    source = tmp_path / f"model{suffix}"
    model.save(str(source))
    out = convert_and_verify(source)
    meta = metadata(out)
    assert meta["input_size"] == f"{size},{size}"
    dense = [kwargs for kind, kwargs in KERAS_HEADS[head] if kind == "Dense"]
    assert meta["source_output_activation"] == dense[-1]["activation"]
    assert meta["head_activations"].split(",")[-1] == "linear"
    check_against_keras(model, out, size)


def test_150_pixel_model_has_a_4x4_first_head_kernel(tmp_path: Path) -> None:
    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.keras"
    model.save(str(source))
    out = convert_and_verify(source)
    tensors = safetensors.numpy.load_file(str(out))
    assert tensors["fc6.kernel"].shape == (4, 4, 16, 24)  # reads the 8192 (here 256) values
    assert tensors["fc7.kernel"].shape == (1, 1, 24, 5)
    info = inspect_file(str(source)).as_dict()
    assert info["input_size"] == [150, 150] and info["input_size_from"] == "file"
    report = json.loads(
        CliRunner().invoke(main, ["verify", "--json", str(source), str(out)]).stdout
    )
    assert report["input_size"] == [150, 150]
    assert [c["map_shape"] for c in report["spatial"]] == [[3, 3]]  # (4 + 2) * 32 = 192


def test_gap_head_taps_are_the_dense_kernel_over_the_window(tmp_path: Path) -> None:
    """GlobalAveragePooling2D -> Dense(W): a 7x7 convolution with every tap W / 49."""
    model = keras_finetuned("gap", 224)
    source = tmp_path / "gap.keras"
    model.save(str(source))
    out = convert_and_verify(source)
    kernel = safetensors.numpy.load_file(str(out))["fc6.kernel"]
    dense = np.asarray(model.layers[-1].kernel)
    assert kernel.shape == (7, 7, *dense.shape)
    np.testing.assert_allclose(kernel, np.broadcast_to(dense / 49, kernel.shape), rtol=1e-6)


def test_weights_only_files_of_finetuned_models(tmp_path: Path) -> None:
    """`.weights.h5` holds no config: the head's kind comes from its group names, the input
    size from the first dense layer's inputs; batch norms cannot be placed and are refused."""
    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.weights.h5"
    model.save_weights(str(source))
    out = convert_and_verify(source)
    assert metadata(out)["input_size"] == "128,128"  # 4x4 pool5: any 128..159 input
    assert metadata(out)["source_output_activation"] == "unknown"
    gap = keras_finetuned("gap", 224)
    gap.save_weights(str(tmp_path / "gap.weights.h5"))
    assert safetensors.numpy.load_file(str(convert_and_verify(tmp_path / "gap.weights.h5")))[
        "fc6.kernel"
    ].shape == (7, 7, 16, 10)
    bn = keras_finetuned("bn-after-relu", 224)
    bn.save_weights(str(tmp_path / "bn.weights.h5"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "bn.weights.h5")])
    assert result.exit_code == 2 and "no model config" in result.stderr


def test_keras_applications_vgg16_base_nested_in_a_sequential(tmp_path: Path) -> None:
    """The real keras.applications VGG16 (full widths, weights=None) as the nested base."""
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    model = keras_finetuned("flatten", 64, base=base)
    for suffix in (".keras", ".h5"):
        source = tmp_path / f"vgg16-finetuned{suffix}"
        model.save(str(source))
        out = convert_and_verify(source)
        assert safetensors.numpy.load_file(str(out))["fc6.kernel"].shape == (2, 2, 512, 24)
    check_against_keras(model, out, 64)


def test_inspect_shows_the_source_graph(tmp_path: Path) -> None:
    model = keras_finetuned("bn-before-relu", 224, functional=True)
    source = tmp_path / "m.keras"
    model.save(str(source))
    info = inspect_file(str(source)).as_dict()
    assert (info["format"], info["generation"]) == ("keras-archive", "keras3")
    classes = [row["class"] for row in info["layers"]]  # type: ignore[attr-defined]
    assert classes[-5:] == ["Flatten", "Dense", "BatchNorm", "Activation", "Dense"]
    assert info["output_activation"] == "sigmoid"
    text = CliRunner().invoke(main, ["inspect", str(source)]).stdout
    assert "BatchNorm" in text and "eps 0.001" in text and "input 224x224 (file)" in text


# ------------------------------------------------------------ PyTorch


def torch_fcn(path: Path) -> nn.Module:
    """The converted file (`--layout oihw --names torch`) as a torch module, loaded strictly."""
    tensors = safetensors.torch.load_file(str(path))
    activations = metadata(path)["head_activations"].split(",")
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


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def check_against_torch(model: nn.Module, out: Path) -> None:
    fcn = torch_fcn(out)
    x = _nchw(sample_images(2, seed=3))
    big = _nchw(sample_images(1, seed=4, size=288))
    with torch.no_grad():
        assert_close(fcn(x)[:, :, 0, 0].numpy(), model(x).numpy())
        cells, pool5 = fcn(big)[0], model.features(big)
        for i in range(3):
            for j in range(3):
                window = model.classifier(torch.flatten(pool5[:, :, i : i + 7, j : j + 7], 1))
                assert_close(cells[:, i, j].numpy(), window[0].numpy())


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
    out = convert_and_verify(source, "--layout", "oihw", "--names", "torch")
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
    out = convert_and_verify(source, "--layout", "oihw", "--names", "torch")
    check_against_torch(model, out)
    assert metadata(out)["head_activations"] == ",".join(["relu"] * len(hidden) + ["linear"])


def test_vgg16_bn_safetensors_with_int64_bookkeeping(tmp_path: Path) -> None:
    """safetensors.torch writes num_batches_tracked as I64: bookkeeping, skipped."""
    model = classifier((4, 8, 8, 16, 16), 32, 10, batch_norm=True)
    source = tmp_path / "vgg16_bn.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(source))
    out = convert_and_verify(source, "--layout", "oihw", "--names", "torch")
    x = _nchw(sample_images(1, seed=5))
    with torch.no_grad():
        assert_close(torch_fcn(out)(x)[:, :, 0, 0].numpy(), model(x).numpy())


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


# ------------------------------------------------------------ predict and heatmap


def test_predict_and_heatmap_with_labels_on_a_finetuned_model(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    model = keras_finetuned("flatten", 150)
    source = tmp_path / "m.keras"
    model.save(str(source))
    out = convert_and_verify(source)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\nhorse\n")
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 224, 3), np.uint8)).save(image)
    result = CliRunner().invoke(
        main, ["predict", str(out), str(image), "--labels", str(labels), "--top", "5"]
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "-> 5x4 map of 5 classes" in lines[0]  # (256//32 - 3) x (224//32 - 3)
    assert lines[1].startswith("  [0] cell (0,0) window y 0-150 x 0-150: ")
    assert all(name in lines[1] for name in ("cat", "dog", "bird", "fish", "horse"))
    png = tmp_path / "dog.png"
    result = CliRunner().invoke(
        main,
        [
            "heatmap",
            str(out),
            str(image),
            "--class",
            "dog",
            "--labels",
            str(labels),
            "-o",
            str(png),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["class_index"], report["class_name"], report["cells"]) == (1, "dog", [5, 4])
    assert Image.open(png).size == (224, 256)
    bad = CliRunner().invoke(
        main, ["predict", str(out), str(image), "--labels", str(tmp_path / "m.keras")]
    )
    assert bad.exit_code == 2 and "label" in bad.stderr
