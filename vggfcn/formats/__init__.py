"""Checkpoint formats: detection by content, one reader per format, our safetensors writer.

A run reads one format, so `load` imports only its reader: a safetensors or `.pth` user does
not pay h5py's start-up, nor an HDF5 user the zip and pickle machinery.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..convert import FORMAT
from ..weights import Tensor, VGGWeights
from . import safetensors_io
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
        from . import keras_h5

        with keras_h5.open_file(path) as f:
            yield keras_h5.read(f, path)
    elif kind == "safetensors":
        tensors, meta = safetensors_io.open_tensors(path)
        if meta.get("format") == FORMAT:
            from . import fcn_file

            yield fcn_file.read(path, tensors, meta)
        else:
            from . import state_dict

            yield state_dict.from_torch(tensors, path, "safetensors")
    elif kind == "zip":
        from . import state_dict, torch_zip

        arrays = torch_zip.read_state_dict(path)
        yield state_dict.from_torch(_wrap(arrays, path), path, "pytorch-zip")
    else:
        from . import npy_file, state_dict

        layers = npy_file.read_layer_dict(path)
        wrapped = {
            name: [Tensor.wrap(a, f"{path}:{name}[{i}]") for i, a in enumerate(arrays)]
            for name, arrays in layers.items()
        }
        yield state_dict.from_tensorflow_vgg(wrapped, path)


def _wrap(arrays: dict[str, np.ndarray], path: str) -> dict[str, Tensor]:
    """Tensors over a state dict's arrays, dtype unchecked here: the layout reader checks the
    names first, then the dtype of each tensor it uses (so a `_bn` file's integer
    `num_batches_tracked`, which nothing uses, is no error)."""
    return {name: Tensor(a, tuple(a.shape), f"{path}:{name}") for name, a in arrays.items()}
