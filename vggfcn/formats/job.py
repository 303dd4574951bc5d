"""What a writer is given, and what every writer provides: the contract of `formats.outputs`.

Its own module so that the writers (`safetensors_fcn`, `onnx_fcn`, `keras_fcn`) depend on the
contract and not on the registry that names them, which imports the readers' side to tell
checkpoints apart (`outputs.check_replaceable`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..fcn import FCN, Storage
from .fcn_metadata import PendingMetadata


@dataclass(frozen=True)
class Job:
    """Everything a writer needs to write one file.

    Attributes:
        fcn: the network.
        storage: what to write (validated by `Output.storage`).
        metadata: the file's metadata; `final()` waits for the source's digest, so a writer
            asks for it only once its weights are out.
        progress: called with the number of float32 weight bytes after each block.
        allow_nonfinite: write NaN/Inf weights instead of refusing them.
    """

    fcn: FCN
    storage: Storage
    metadata: PendingMetadata
    progress: Callable[[int], object] = lambda _n: None
    allow_nonfinite: bool = False


class Writer(Protocol):
    """What every output module provides."""

    def write(self, f: BinaryIO, job: Job) -> None:
        """Stream `job.fcn` into `f` as `job.storage` says, one weight block at a time.

        Args:
            f: a binary file on disk, open for writing at 0, seekable (`atomic_write` gives one).

        Raises:
            FormatError: a weight holds NaN or Inf (unless allowed), naming it and the count.
            OutputError: the network does not fit the format.
        """
