"""safetensors files: a network vggfcn converted, or a PyTorch state dict, told apart by the
metadata in their header (ours says `format: vggfcn-fcn`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..fcn import FCN
from ..graph import SourceGraph
from . import fcn_metadata
from .safetensors_io import open_tensors


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph | FCN]:  # noqa: A001 (the reader contract's name)
    """The network in a safetensors file, its tensors mapped lazily from it."""
    tensors, meta = open_tensors(path)
    if fcn_metadata.is_ours(meta):
        from . import safetensors_fcn

        yield safetensors_fcn.read(path, tensors, meta)
        return
    from . import state_dict

    yield state_dict.from_torch(tensors, path, "safetensors")
