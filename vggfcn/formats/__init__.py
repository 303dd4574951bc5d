"""Checkpoint formats: one reader per format, chosen by the file's first bytes.

Every reader keeps one contract: a module with `open(path)`, a context manager giving the network
its file holds — a classifier's `SourceGraph` as the file defines it, or, for files vggfcn wrote,
the `FCN` — with tensors lazy while the file is open. A format is registered once, in `READERS`,
by a test of its first bytes; a reader's module is imported only when its format is seen, so a
safetensors user does not pay h5py's start-up, nor an HDF5 user the zip and pickle machinery.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import AssumptionWarning, FormatError
from ..fcn import FCN
from ..graph import SourceGraph
from ..shapes import assumptions, checked
from . import detect

Network = SourceGraph | FCN


@dataclass(frozen=True)
class Reader:
    """A format: how to recognise it, and the module whose `open(path)` reads it."""

    name: str
    matches: Callable[[detect.Probe], bool]
    module: str


READERS = (
    Reader("Keras HDF5", detect.is_hdf5, "keras_h5"),
    Reader("zip archive (PyTorch .pth, Keras .keras)", detect.is_zip, "archive"),
    Reader("tensorflow-vgg .npy", detect.is_npy, "npy_file"),
    Reader("safetensors", detect.is_safetensors, "safetensors_file"),
    Reader("vggfcn ONNX", detect.is_onnx, "onnx_fcn"),
    Reader("Caffe .caffemodel", detect.is_caffemodel, "caffe"),
)


@contextmanager
def load(path: str, *, input_size: tuple[int, int] | None = None) -> Iterator[Network]:
    """Open any supported file: a classifier's source graph (checked, its input size resolved)
    or a converted network. The file stays open for the `with` block, so tensors can stream.

    Args:
        input_size: (H, W) a classifier was built for, when the file does not say (or says
            wrong); ignored for converted networks.

    Example:
        >>> with load("vgg16_weights_tf_dim_ordering_tf_kernels.h5") as graph:
        ...     print(graph.provenance.label, graph.input.size)
        keras-h5/keras1 (224, 224)

    Warns:
        AssumptionWarning: a classifier whose file does not record its structure and whose
            head is not the stock one: what was assumed (`shapes.assumptions`).

    Raises:
        FormatError, ArchitectureError: the file is not a VGG checkpoint we can read.
    """
    found = detect.probe(path)
    for reader in READERS:
        if reader.matches(found):
            module = importlib.import_module(f".{reader.module}", __name__)
            with module.open(path) as network:
                if isinstance(network, SourceGraph):
                    network = checked(network, input_size)
                    for note in assumptions(network):
                        warnings.warn(note, AssumptionWarning, stacklevel=3)
                yield network
            return
    formats = ", ".join(r.name for r in READERS)
    raise FormatError(
        f"{path}: unknown format (first bytes {found.head[:8]!r}); expected {formats}"
    )
