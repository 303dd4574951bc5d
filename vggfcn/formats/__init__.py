"""Checkpoint formats: one reader per format, chosen by the file's first bytes.

Every reader keeps one contract: a module with `open(path)`, a context manager giving the network
its file holds — a classifier's `SourceGraph` as the file defines it, or, for files vggfcn wrote,
the `FCN` — with tensors lazy while the file is open. A format is registered once, in `READERS`,
by a test of its first bytes; a reader's module is imported only when its format is seen, so a
safetensors user does not pay h5py's start-up, nor an HDF5 user the zip and pickle machinery.
"""

from __future__ import annotations

import importlib
import os
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
    """A format: how to recognise it, and the module whose `open(path)` reads it.

    `output` names the output format (`outputs.OUTPUTS`) a file of this kind may be, when we
    write that kind: a file of another kind is never replaced by an output of ours.
    """

    name: str
    matches: Callable[[detect.Probe], bool]
    module: str
    output: str | None = None


READERS = (
    Reader("Keras HDF5", detect.is_hdf5, "keras_h5"),
    Reader("zip archive (PyTorch .pth, Keras .keras)", detect.is_zip, "archive", "keras"),
    Reader("tensorflow-vgg .npy", detect.is_npy, "npy_file"),
    Reader("safetensors", detect.is_safetensors, "safetensors_file", "safetensors"),
    Reader("ONNX", detect.is_onnx, "onnx_file", "onnx"),
    Reader("Caffe .caffemodel", detect.is_caffemodel, "caffe"),
)


def check_exists(path: str) -> None:
    """Fail at once, before any other work, when `path` is no file we could read (missing,
    empty, a directory that is no KerasHub preset...): the content is judged later, by `load`.

    Raises:
        FormatError: naming what is wrong.
    """
    if os.path.isdir(path):
        from . import keras_hub

        if keras_hub.is_preset(path):
            return
    detect.probe(path)


def reader_of(path: str) -> Reader | None:
    """The reader whose format a file holds, by its first bytes; None for a file that is no
    checkpoint we know (or cannot be read)."""
    try:
        found = detect.probe(path)
    except FormatError:
        return None
    return next((reader for reader in READERS if reader.matches(found)), None)


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
    if os.path.isdir(path):
        from . import keras_hub

        if keras_hub.is_preset(path):
            with keras_hub.open_preset(path) as graph:
                yield _checked(graph, input_size)
            return
    found = detect.probe(path)
    for reader in READERS:
        if reader.matches(found):
            module = importlib.import_module(f".{reader.module}", __name__)
            with module.open(path) as network:
                yield _checked(network, input_size) if isinstance(network, SourceGraph) else network
            return
    formats = ", ".join([r.name for r in READERS] + ["a KerasHub preset directory"])
    raise FormatError(
        f"{path}: unknown format (first bytes {found.head[:8]!r}); expected {formats}"
    )


def _checked(graph: SourceGraph, input_size: tuple[int, int] | None) -> SourceGraph:
    """A classifier checked, its input size resolved, what was assumed about it warned of."""
    graph = checked(graph, input_size)
    for note in assumptions(graph):
        warnings.warn(note, AssumptionWarning, stacklevel=4)
    return graph
