"""Checkpoint formats: detection by content, one reader per format, our safetensors writer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import FormatError
from ..weights import VGGWeights
from . import fcn_file, keras_h5
from .detect import sniff


@contextmanager
def load(path: str) -> Iterator[VGGWeights]:
    """Open any supported checkpoint as canonical weights; tensors are lazy until read.

    The file stays open for the `with` block, so tensors can stream from it.

    Example:
        >>> with load("vgg16_weights_tf_dim_ordering_tf_kernels.h5") as w:
        ...     print(w.arch.name, w.arch.classes)
        vgg16 1000

    Raises:
        FormatError, ArchitectureError: the file is not a VGG checkpoint we can read.
    """
    kind = sniff(path)
    if kind == "hdf5":
        with keras_h5.open_file(path) as f:
            yield keras_h5.read(f, path)
    elif kind == "safetensors":
        yield fcn_file.read(path)
    else:
        raise FormatError(f"{path}: {kind} checkpoints are not supported yet (Keras HDF5 only)")
