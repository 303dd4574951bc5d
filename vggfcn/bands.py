"""A tensor whose outer axes swap, moved one band of its middle axis at a time and written where
each piece belongs.

fc6 from Caffe or PyTorch, OIHW (4096, 512, 49) once merged, becomes HWIO (49, 512, 4096): the
outer axes swap and the channels stay in the middle. Written in output order within a memory
bound, each chunk of output rows needs a sliver of every source row, so `Tensor.blocks` passes
over the whole source again and again (10 times for Caffe's fc6, mapping all 411 MB each time).
A band of channels c0..c1 is instead one run in every source row and one run in every output
row: it is read with one `pread` per source row, transposed in memory (one OpenBLAS 2-D
transpose per batch of rows), and written with one positioned write per output row. Every byte
is read once and written once; the writer only has to seek. (Keras's HWIO fc6 to ONNX's OIHW is
the same swap, but there a band's output rows are 11 KB: too short, see `_MIN_RUN`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .precision import F32
from .sources import RunReadable, Source
from .transpose import merge_axes, transpose_into

#: The band's table (the output rows being built) is at most this many `max_bytes`: 48 MiB for
#: 16 MiB writes, so Caffe's fc6 moves in 9 bands and peak RSS stays under 100 MiB.
_TABLE_PARTS = 3
#: Bytes an output row of a band must have: fewer and the positioned writes cost more than the
#: passes they save (Keras's HWIO fc6 to ONNX's OIHW, 11 KB rows: 0.79 s against 0.51 s).
_MIN_RUN = 64 << 10
#: The source rows read per batch (before each transpose into the table), as a fraction of
#: `max_bytes`.
_READ_PARTS = 4


@dataclass(frozen=True)
class Bands:
    """The plan for one tensor: its source, the merged (a, c, b) view, and the batch sizes.

    The output is (b, c, a): element [i, k, j] is source element [j, k, i].
    """

    source: np.ndarray | RunReadable  # float32 in C order, in memory or read by runs
    view: tuple[int, int, int]
    band: int  # channels (view axis 1) per band
    rows: int  # source rows (view axis 0) read per batch

    @classmethod
    def plan(
        cls,
        source: Source,
        order: tuple[tuple[int, ...], tuple[int, ...]] | None,
        max_bytes: int,
    ) -> Bands | None:
        """How to move the elements of `source` permuted by `order` (a tensor's `(view,
        axes)`) in bands, or None when the order is not an outer-axes swap, the source cannot
        be read by runs or the output rows would be short (then `Tensor.blocks` streams it in
        order)."""
        if order is None or not _runs_readable(source):
            return None
        view, axes = merge_axes(*order)
        if axes != (2, 1, 0):
            return None
        a, c, b = view
        per_channel = a * b * F32.itemsize  # table bytes per channel of a band
        bands = -(-c // max(1, _TABLE_PARTS * max_bytes // per_channel))
        band = -(-c // bands)  # as even as the count allows: the least memory
        if band * a * F32.itemsize < _MIN_RUN:
            return None
        run = band * b * F32.itemsize  # bytes of one source row in a band
        rows = max(1, min(a, max_bytes // _READ_PARTS // run))
        return cls(source, (a, c, b), band, rows)  # type: ignore[arg-type]

    def pieces(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(offsets, rows) per band: `rows[n]`, in C order, is the output's elements from
        `offsets[n]` on.

        `rows` is a float32 (b, band, a) view of a table laid out (band, b, a), so that a batch
        of source rows goes into it as one 2-D transpose; a row of it is `band` runs of `a`
        elements, written with one `pwritev`. The table is reused for the next band: write
        `rows` before asking for the next.
        """
        a, c, b = self.view
        table_memory = np.empty(self.band * b * a, F32)
        batch_memory = np.empty(self.rows * self.band * b, F32)
        for c0 in range(0, c, self.band):
            width = min(self.band, c - c0)
            table = table_memory[: width * b * a].reshape(width * b, a)
            for r0 in range(0, a, self.rows):
                count = min(self.rows, a - r0)
                batch = batch_memory[: count * width * b].reshape(count, width * b)
                self._read(r0, c0, batch)
                transpose_into(batch, (1, 0), table[:, r0 : r0 + count])
            offsets = (np.arange(b, dtype=np.int64) * c + c0) * a
            yield offsets, table.reshape(width, b, a).transpose(1, 0, 2)

    def _read(self, r0: int, c0: int, out: np.ndarray) -> None:
        """Source rows r0.. (as many as `out` has), channels c0.. (all of `b` for each), into
        the rows of `out`."""
        count, run = out.shape
        _, c, b = self.view
        if isinstance(self.source, np.ndarray):
            band = self.source.reshape(self.view)[r0 : r0 + count, c0 : c0 + run // b]
            out.reshape(band.shape)[...] = band
            return
        starts = ((np.arange(r0, r0 + count, dtype=np.int64) * c + c0) * b) * F32.itemsize
        self.source.read_runs(starts, out.view(np.uint8))


def _runs_readable(source: Source) -> bool:
    """Whether `Bands` can read `source` by runs: float32, contiguous in memory or in a file
    region."""
    in_memory = isinstance(source, np.ndarray) and source.flags.c_contiguous
    return (in_memory or isinstance(source, RunReadable)) and np.dtype(source.dtype) == F32
