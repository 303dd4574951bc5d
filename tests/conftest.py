"""Shared fixtures: tiny generated checkpoints in every Keras generation, written once per run.

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
import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from fixtures.generate import GENERATIONS, TINY, make_weights, write_checkpoint  # noqa: E402
from fixtures.torch_vgg import classifier  # noqa: E402
from vggfcn import api  # noqa: E402
from vggfcn.arch import Arch  # noqa: E402
from vggfcn.formats import load  # noqa: E402
from vggfcn.graph import Conv, Dense, SourceGraph  # noqa: E402
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


def read_all(path: Path) -> tuple[SourceGraph, dict[str, np.ndarray]]:
    """Load a classifier and read every tensor of its layers as stored, under
    "<layer as the file names it>.kernel|bias" (while the file is open)."""
    with load(str(path)) as graph:
        assert isinstance(graph, SourceGraph)
        return graph, {
            f"{op.name}.{part}": tensor.read()
            for op in graph.ops
            if isinstance(op, Conv | Dense)
            for part, tensor in (("kernel", op.kernel), ("bias", op.bias))
            if tensor is not None
        }


TF_NAMES = {f"block{b}_conv{i}": f"conv{b}_{i}" for b in range(1, 6) for i in range(1, 4)}


@pytest.fixture(scope="session")
def state() -> dict[str, torch.Tensor]:
    """A TINY torchvision VGG16 state dict (same widths as the Keras fixtures)."""
    model = classifier(TINY.convs, TINY.fc[0], TINY.classes, seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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


def tiny_arch() -> Arch:
    """The TINY fixtures' widths as an `Arch` (for `random_layers`)."""
    return Arch.from_blocks("vgg16", TINY.convs, TINY.fc, TINY.classes)


def fc6_bytes(kind: str, state: dict[str, torch.Tensor], fcn: Path) -> bytes:
    """The bytes of the largest tensor (fc6's kernel) as the file of `kind` stores them."""
    if kind.startswith("keras") or kind == "tensorflow-vgg.npy":
        return dict(make_weights(TINY))["fc1"][0].tobytes()
    if kind.startswith("torchvision"):
        return state["classifier.0.weight"].numpy().tobytes()
    return safetensors.numpy.load_file(str(fcn))["fc6.kernel"].tobytes()


def header_cut(kind: str, data: bytes) -> int:
    """A length that ends the file inside its header."""
    if kind.endswith(".safetensors"):
        return 8 + int.from_bytes(data[:8], "little") // 2
    return {"keras1": 64, "keras3-weights": 64, "torchvision.pth": 20}.get(kind, 30)
