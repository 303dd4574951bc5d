"""A tensor's float32 data, checked for NaN and Inf on the way out: what every writer streams.

The check costs one cheap pass per block: a float32 sum is finite when no element is NaN or Inf,
so only a block whose sum is not (a NaN, or finite weights whose sum overflows) is counted.
Writers that can seek take the tensor as `pieces` (`write_tensor`), which lets fc6 move between
OIHW and HWIO reading every byte once; the others take it in order, as `blocks`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

import numpy as np

from ..errors import FormatError
from ..precision import PRECISIONS, encode
from ..tensor import Tensor

#: Bytes handed to the OS per write: large enough for full disk speed, small enough for memory.
BLOCK_BYTES = 16 << 20

#: Buffers one `pwritev` takes (POSIX's IOV_MAX on Linux).
_IOV_MAX = 1024

_Item = TypeVar("_Item")


def checked_blocks(
    tensor: Tensor, allow_nonfinite: bool = False, max_bytes: int = BLOCK_BYTES
) -> Iterator[np.ndarray]:
    """`tensor.blocks(max_bytes)`, refusing NaN/Inf once the tensor is through (so the message
    counts them all) unless `allow_nonfinite`.

    Raises:
        FormatError: the tensor holds NaN or Inf, naming it and the count.
    """
    for _, block in _checked(
        tensor, ((None, b) for b in tensor.blocks(max_bytes)), allow_nonfinite
    ):
        yield block


def write_tensor(
    f: BinaryIO,
    tensor: Tensor,
    allow_nonfinite: bool = False,
    progress: Callable[[int], object] = lambda _n: None,
    dtype: str = "float32",
) -> None:
    """Write `tensor` as `dtype` at `f`'s position, each piece where it belongs (`os.pwritev`),
    and leave `f` just after it.

    Args:
        f: a binary file open for writing, on disk (it needs a file descriptor) and seekable.
        progress: called with the number of float32 bytes after each piece.

    Raises:
        FormatError: the tensor holds NaN or Inf (unless allowed), naming it and the count.
    """
    itemsize = PRECISIONS[dtype].storage.itemsize
    start = f.tell()
    f.flush()  # what the buffer holds goes before the positioned writes
    fd = f.fileno()
    for offsets, rows in _checked(tensor, tensor.pieces(BLOCK_BYTES), allow_nonfinite):
        for offset, row in zip(offsets.tolist(), rows, strict=True):
            # encoded row by row: a float16 copy of a whole band would cost 24 MiB more
            _write_at(fd, encode(row, dtype, tensor.where), start + offset * itemsize)
        progress(rows.nbytes)
    f.seek(start + tensor.size * itemsize)


def _checked(
    tensor: Tensor, pieces: Iterator[tuple[_Item, np.ndarray]], allow_nonfinite: bool
) -> Iterator[tuple[_Item, np.ndarray]]:
    bad = 0
    for where, data in pieces:
        if not allow_nonfinite and not np.isfinite(_sum(data)):
            bad += int(np.count_nonzero(~np.isfinite(data)))
        yield where, data
    if bad:
        raise FormatError(
            f"{tensor.where}: {bad} NaN/Inf value(s); refusing to convert "
            "(--allow-nonfinite converts them as they are)"
        )


def _write_at(fd: int, row: np.ndarray, position: int) -> None:
    """All of `row`'s elements, in C order, at `position`: its contiguous runs (one, or a band's
    runs of one output row) in one `pwritev`; a short write is carried on, not lost."""
    runs = [row] if row.flags.c_contiguous else list(row.reshape(-1, row.shape[-1]))
    buffers = [run.data.cast("B") for run in runs]
    while buffers:
        done = os.pwritev(fd, buffers[:_IOV_MAX], position)
        position += done
        while done and done >= len(buffers[0]):
            done -= len(buffers.pop(0))
        if done:
            buffers[0] = buffers[0][done:]


@np.errstate(over="ignore", invalid="ignore")  # the result says it: no RuntimeWarning needed
def _sum(block: np.ndarray) -> float:
    return float(block.sum(dtype=np.float32))
