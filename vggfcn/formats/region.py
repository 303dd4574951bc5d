"""Arrays stored raw and contiguous inside a file, read with positioned reads.

Keras writes weights as contiguous, unfiltered HDF5 datasets: plain C-order bytes at a known
offset. Reading those bytes ourselves (pread) instead of through h5py matters twice: h5py holds
the GIL while it reads, which would stall the source hash running on the other core, and we can
check the declared extent against the real file size before reading anything (a "shape bomb"
claiming gigabytes in a small file is refused up front).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import FormatError


class FileRegion:
    """A C-order array of `shape` and `dtype` at byte `offset` of the file at `path`.

    Sliceable along the first axis like an h5py dataset or an ndarray: `region[()]` reads
    all of it, `region[a:b]` reads rows a..b. Each read opens, reads and closes, so a region
    outlives the HDF5 handle it was found through.
    """

    def __init__(
        self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = os.path.getsize(path)
        if offset < 0 or offset + self.nbytes > size:
            raise FormatError(
                f"{path}: data of shape {shape} needs bytes {offset}..{offset + self.nbytes}, "
                f"but the file has {size} (truncated or corrupt)"
            )

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.shape[0] if self.shape else 1
        if key == ():
            start, stop = 0, rows
        elif isinstance(key, slice) and key.step in (None, 1) and self.shape:
            start, stop, _ = key.indices(rows)
            stop = max(start, stop)
        else:
            raise TypeError(f"FileRegion supports [()] and [a:b], not [{key!r}]")
        row_bytes = self.nbytes // rows if rows else 0
        out = np.empty((stop - start, *self.shape[1:]) if self.shape else (), dtype=self.dtype)
        self._read_into(out.data.cast("B"), self.offset + start * row_bytes)
        return out

    def _read_into(self, buffer: memoryview, position: int) -> None:
        with open(self.path, "rb", buffering=0) as f:
            done = 0
            while done < len(buffer):
                n = os.preadv(f.fileno(), [buffer[done:]], position + done)
                if n == 0:
                    raise FormatError(f"{self.path}: file ended while reading (truncated)")
                done += n
