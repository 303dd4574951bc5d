"""Shared fixtures: tiny generated checkpoints in every Keras generation and every other
supported format, written once per run (shared helper functions are in helpers.py).

Keras 3 files are written by real Keras (torch backend), Keras 1/2 layouts with h5py; see
fixtures/generate.py. Nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from fixtures.finetuned import keras_finetuned  # noqa: E402
from fixtures.generate import FULL, GENERATIONS, TINY, write_checkpoint  # noqa: E402
from fixtures.torch_vgg import classifier  # noqa: E402
from tests.helpers import TF_NAMES, tiny_arch  # noqa: E402
from vggfcn import api  # noqa: E402
from vggfcn.synthetic import random_layers  # noqa: E402

SUFFIX = {"keras3-weights": ".weights.h5"}


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """generation -> a TINY VGG16-topology checkpoint (seed 0), shared read-only by all tests."""
    folder = tmp_path_factory.mktemp("tiny")
    files = {}
    for generation in GENERATIONS:
        path = folder / f"vgg16_{generation}{SUFFIX.get(generation, '.h5')}"
        write_checkpoint(path, generation, TINY, seed=0)
        files[generation] = path
    return files


@pytest.fixture
def keras1(tiny_files: dict[str, Path]) -> Path:
    return tiny_files["keras1"]


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny checkpoint with options (generation, seed, top, chunking) into tmp_path."""

    def make(generation: str = "keras1", name: str = "model.h5", **options: object) -> Path:
        path = tmp_path / name
        write_checkpoint(path, generation, TINY, **options)  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture(scope="session")
def torch_model() -> torch.nn.Module:
    """A TINY torchvision VGG16 (seed 0, same widths as the Keras fixtures), shared read-only."""
    return classifier(TINY.convs, TINY.fc[0], TINY.classes, seed=0)


@pytest.fixture(scope="session")
def state(torch_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`torch_model`'s state dict, copied."""
    return {k: v.detach().clone() for k, v in torch_model.state_dict().items()}


@pytest.fixture(scope="session")
def sources(
    tiny_files: dict[str, Path], state: dict[str, torch.Tensor], tmp_path_factory: Any
) -> dict[str, Path]:
    """One valid TINY checkpoint per supported format, plus our own converted output."""
    folder = tmp_path_factory.mktemp("sources")
    files = {
        "keras1": tiny_files["keras1"],
        "keras3-weights": tiny_files["keras3-weights"],
        "torchvision.pth": folder / "vgg16.pth",
        "torchvision.safetensors": folder / "vgg16.safetensors",
        "tensorflow-vgg.npy": folder / "vgg16.npy",
        "fcn.safetensors": folder / "vgg16.fcn.safetensors",
    }
    torch.save(state, files["torchvision.pth"])
    safetensors.torch.save_file(state, str(files["torchvision.safetensors"]))
    layers = {TF_NAMES.get(n, n): [k, b] for n, k, b in random_layers(tiny_arch(), seed=0)}
    np.save(files["tensorflow-vgg.npy"], np.array(layers, dtype=object), allow_pickle=True)
    api.convert_file(str(files["keras1"]), str(files["fcn.safetensors"]))
    return files


@pytest.fixture
def fcn_file(keras1: Path, tmp_path: Path) -> Path:
    """`keras1` converted to an FCN (.safetensors), for the commands that read one."""
    out = tmp_path / "fcn.safetensors"
    api.convert_file(str(keras1), str(out))
    return out


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned Keras 3 `.keras` archive (flatten head, 150x150), shared read-only."""
    path = tmp_path_factory.mktemp("keras") / "finetuned.keras"
    keras_finetuned("flatten", 150).save(str(path))
    return path


@pytest.fixture(scope="session")
def full_keras1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size VGG16 (138 M parameters, 553 MB) in the Keras 1 release layout (seed 0)."""
    path = tmp_path_factory.mktemp("full") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_checkpoint(path, "keras1", FULL, seed=0)
    return path
