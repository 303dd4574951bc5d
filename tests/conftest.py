"""Shared fixtures: tiny generated checkpoints in every Keras generation, written once per run.

Keras 3 files are written by real Keras (torch backend), Keras 1/2 layouts with h5py; see
fixtures/generate.py. Nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fixtures.generate import GENERATIONS, TINY, write_checkpoint  # noqa: E402
from vggfcn.formats import load  # noqa: E402
from vggfcn.weights import VGGWeights  # noqa: E402

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


def read_all(path: Path) -> tuple[VGGWeights, dict[str, object]]:
    """Load a checkpoint and read every tensor (while the file is open)."""
    with load(str(path)) as w:
        return w, {
            f"{layer.name}.{p}": getattr(layer, p).read()
            for layer in w.layers
            for p in ("kernel", "bias")
        }
