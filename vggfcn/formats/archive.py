"""Zip archives: a PyTorch `.pth` (`torch.save`) or a Keras 3 `.keras` model, told apart by their
members (`<archive>/data.pkl`, or `config.json` beside `model.weights.h5`)."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator

from ..fcn import FCN
from ..graph import SourceGraph
from ..tensor import Tensor
from .zip_io import ZIP_ERRORS

KERAS_MEMBERS = {"config.json", "model.weights.h5"}


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph | FCN]:  # noqa: A001 (the reader contract's name)
    """The network in a zip archive, open for the `with` block."""
    if is_keras(path):
        from . import keras_archive

        with keras_archive.open(path) as network:
            yield network
        return
    from . import state_dict, torch_zip

    arrays = torch_zip.read_state_dict(path)
    # Tensors over the state dict's arrays, dtype unchecked here: the layout reader drops
    # integer bookkeeping first, then checks the dtype of each tensor it uses.
    tensors = {name: Tensor(a, tuple(a.shape), f"{path}:{name}") for name, a in arrays.items()}
    yield state_dict.from_torch(tensors, path, "pytorch-zip")


def is_keras(path: str) -> bool:
    """Whether the central directory names a Keras archive's member (the Keras reader says
    which one is missing; a corrupt archive is left for the PyTorch reader to describe)."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(KERAS_MEMBERS & set(z.namelist()))
    except ZIP_ERRORS:
        return False
