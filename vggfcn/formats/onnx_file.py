"""ONNX files: a network vggfcn converted (`onnx_fcn`), or a classifier any exporter wrote
(`onnx_source`), told apart by their producer and metadata."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..fcn import FCN
from ..graph import SourceGraph
from . import fcn_metadata, onnx_proto


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph | FCN]:  # noqa: A001 (the reader contract's name)
    """The network in an ONNX file, its weights mapped lazily from it."""
    with onnx_proto.read(path) as model:
        from . import onnx_fcn

        if model.producer == onnx_fcn.PRODUCER and fcn_metadata.is_ours(model.metadata):
            yield onnx_fcn.read(model)
            return
        from . import onnx_source

        yield onnx_source.read(model)
