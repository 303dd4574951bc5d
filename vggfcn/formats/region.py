"""Arrays stored raw and contiguous inside a file, read by memory-mapping just their bytes.

Keras writes weights as contiguous, unfiltered HDF5 datasets, safetensors stores raw tensors and
a `.caffemodel` packed floats: plain C-order bytes at a known offset. Mapping those bytes
ourselves instead of reading them through h5py or into fresh arrays matters three ways:

- no copy: the array *is* the page cache, so a 400 MB fc6 costs no allocation and no memcpy
  (first-touching fresh anonymous memory is what dominated a read, more on a VM);
- the map lives exactly as long as the array that views it (NumPy holds the map, the map
  unmaps when freed), so memory is returned as soon as a layer is done with its weights;
- h5py holds the GIL while it reads, which would stall the source hash on the other core.

The declared extent is checked against the real file size first, so a "shape bomb" claiming
gigabytes in a small file is refused before anything is mapped. As with any memory map
(safetensors' own loader included), truncating the file *while* it is being read kills the
process with SIGBUS rather than raising.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from ..errors import FormatError

#: Populate the whole map in one call: faulting 4 KiB pages in one by one as they are touched
#: made streaming a file through a map several times slower than reading it.
_FLAGS = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
#: The page cache's largest folio (a PMD, 2 MiB on x86-64 and arm64 with 4 KiB pages): a file
#: cached by read() is held in folios up to this size, aligned in the file. A map whose ends
#: are on these boundaries maps each folio with one page-table entry; ragged ends are mapped
#: 4 KiB at a time (512 entries per end). Measured on fc6 streamed Keras -> OIHW, 459 maps of
#: 8 MiB: 0.054 s with ends where the rows fall, 0.012 s with ends rounded out to 2 MiB.
FOLIO = 2 << 20


class FileRegion:
    """A C-order array of `shape` and `dtype` at byte `offset` of the file at `path`.

    Sliceable along the first axis like an h5py dataset or an ndarray: `region[()]` gives all
    of it, `region[a:b]` rows a..b, each as a read-only array over a fresh map of those bytes
    (see `_map` for the one exception).
    No handle stays open between reads (a map holds its own until its array goes), so a region
    outlives the HDF5 file object it was found through.
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
        shape = (stop - start, *self.shape[1:]) if self.shape else ()
        length = (stop - start) * row_bytes
        if length == 0:
            return np.empty(shape, dtype=self.dtype)
        position = self.offset + start * row_bytes
        if key == () and position % self.dtype.itemsize:
            data = self._read(position, length)
        else:
            data = self._map(position, length)
        return data.view(self.dtype).reshape(shape)

    def read_runs(self, starts: np.ndarray, out: np.ndarray) -> None:
        """Fill row n of `out` (uint8, C order) with the bytes from `starts[n]` (counted from
        the region's start): a strided gather, one `pread` per row, into aligned memory.

        For `bands`, which needs a tenth of every fc6 row per band: mapping the whole tensor
        once per band cost twice what copying just those runs does (measured on Caffe's fc6).
        """
        length = out.shape[1] if out.ndim == 2 else 0
        if len(starts) and (int(starts.min()) < 0 or int(starts.max()) + length > self.nbytes):
            raise ValueError(
                f"runs of {length} bytes at {starts.min()}..{starts.max()} leave the region"
            )
        try:
            with open(self.path, "rb", buffering=0) as f:
                for start, row in zip(starts.tolist(), out, strict=True):
                    if os.preadv(f.fileno(), [row], self.offset + start) != length:
                        raise OSError("unexpected end of file")
        except OSError as e:  # the file shrank or vanished since it was opened
            raise FormatError(f"{self.path}: cannot read data ({e})") from None

    def _map(self, position: int, length: int) -> np.ndarray:
        """`length` bytes at `position`, as read-only uint8 viewing a private map.

        Weights at an offset that is not a multiple of their size (a `.keras` archive puts its
        HDF5 member wherever the config before it ends; a Caffe blob wherever its protobuf
        field does) are mapped all the same when asked for by rows: those are streamed through
        a copy or a transpose straight away, which reads unaligned memory at full speed. Only a
        whole-tensor read (`[()]`), which is what a forward pass computes with, is read into an
        aligned array by `_read` instead: unaligned operands would put BLAS on a slow path,
        and one copy beats a map *and* a copy of a 400 MB tensor.

        A read of at least `FOLIO` bytes is mapped from the `FOLIO` boundary before it to the
        one after it (or the file's end): up to 4 MiB more mapped, the neighbouring weights'
        pages, which a cached file holds already (see `FOLIO`).
        """
        base = position - position % mmap.ALLOCATIONGRANULARITY
        end = position + length
        try:
            with open(self.path, "rb") as f:
                if length >= FOLIO:
                    size = os.fstat(f.fileno()).st_size
                    base = position - position % FOLIO
                    end = max(end, min(-(-end // FOLIO) * FOLIO, size))
                view = mmap.mmap(
                    f.fileno(), end - base, offset=base, flags=_FLAGS, prot=mmap.PROT_READ
                )
        except (OSError, ValueError) as e:  # the file shrank or vanished since it was opened
            raise FormatError(
                f"{self.path}: cannot map {length} bytes at {position} ({e})"
            ) from None
        return np.frombuffer(view, np.uint8, count=length, offset=position - base)

    def _read(self, position: int, length: int) -> np.ndarray:
        """`length` bytes at `position`, read into a fresh (aligned) array."""
        out = np.empty(length, np.uint8)
        try:
            with open(self.path, "rb", buffering=0) as f:
                done = 0
                while done < length:
                    count = os.preadv(f.fileno(), [out.data[done:]], position + done)
                    if count == 0:
                        raise OSError("unexpected end of file")
                    done += count
        except OSError as e:
            raise FormatError(
                f"{self.path}: cannot read {length} bytes at {position} ({e})"
            ) from None
        out.flags.writeable = False  # as a map's view would be: weights are not ours to edit
        return out
