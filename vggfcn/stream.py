"""A permuted tensor streamed in output order within a memory bound, one block ahead.

`Tensor.blocks` hands a permuted tensor to a writer that takes its bytes in order (a zip member
is checksummed in order; a writer that can seek takes fc6 in `bands` instead). Moving a 400 MB
fc6's axes whole would cost 400 MB; `Stream` produces it block by block from slabs of the
source (memory-mapped, so a slab costs nothing until read), and `ahead` computes each block on
a worker thread while the caller writes the one before.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .precision import F32
from .sources import Source
from .transpose import merge_axes, permuted_shape, transpose_into

#: Blocks alive at once: the one the caller is writing, the next that `_ahead` holds for it
#: and the one the worker fills.
_IN_FLIGHT = 3
#: Streamed blocks are at most a quarter of `max_bytes` (4 MiB writes still run at full disk
#: speed), so the three in flight cost less than one `max_bytes`.
_BLOCK_PARTS = 4
#: Source bytes read (mapped) at once, as a fraction of `max_bytes`: 8 MiB slabs mapped fc6
#: 10% faster than 4 MiB ones.
_SLAB_PARTS = 2
#: All a stream holds (table, slab, blocks in flight), as a multiple of `max_bytes`: 64 MiB
#: for 16 MiB blocks. When the output's first axis is inside the source's rows, each pass over
#: the source fills the table with one chunk of output rows and maps all of the source again,
#: at 3 to 25 ms per 400 MB (see bench/transpose.py), so the fewer passes the better: fc6
#: streamed in 0.38 s through a 44 MiB table (9 passes), 0.65 s through a 12 MiB one (34).
_WORK_BLOCKS = 4
#: Elements (64 bytes, a cache line) a slab must span of the output's innermost axis for a
#: chunk to be gathered straight into output order. A table gathered the other way, with the
#: output rows innermost, has rows a multiple of this long and blocks of a multiple of this
#: many output rows, so each block transposes columns that start on a cache line (fc6 Keras ->
#: OIHW streamed in 0.22 s, against 0.24 s with 41-row blocks from a 456-row table).
_RUN = 16


@dataclass(frozen=True)
class Stream:
    """A permuted tensor in output order, block by block, reading its source a slab at a time.

    With the order's unit axes dropped and axes that stay neighbours merged (`merge_axes`), the
    output's first axis is view axis `j = axes[0]` and each block is a range of it ("output
    rows"). The source is read in slabs: runs of contiguous elements, a range of view axis
    `depth` (0 unless one index of axis 0 is too large to read at once) under fixed indices of
    the axes before it.

    - j == 0 (the output's first axis is the source's, e.g. OIHW -> OHWI): each block is a run
      of the source, transposed on its own; one pass over the source.
    - j > 0 (e.g. HWIO -> OIHW, where an output row is a column of the whole source): each
      chunk of output rows needs part of every slab, so takes a full pass over the source and
      is gathered into a table that is reused pass after pass; blocks are cut from it. When
      the output's innermost axis is the source's (CHW rows -> HWIO), the table is in output
      order and a block is a copy of its rows. Otherwise (HWIO -> OIHW, (out, in) -> (in,
      out)), gathering straight into output order would scatter 4-byte writes across the
      whole table; the table instead has the chunk's axis innermost (so each source row
      lands as one run) and each block is a tiled 2-D transpose of some of its columns.

    Streams any order whose source row and output row each fit in `max_bytes` (all of VGG's
    kernels, fc6 included); `plan` gives None for the rest.
    """

    source: Source
    fetch: Callable[[slice], np.ndarray]  # source rows, read (errors made ours: `Tensor.fetch`)
    view: tuple[int, ...]
    axes: tuple[int, ...]
    block_rows: int  # output rows per block
    block_size: int  # elements per block cut from an output-order table
    chunk_rows: int  # output rows gathered per pass over the source
    depth: int  # the view axis a slab is a range of
    span: int  # indices of that axis per slab
    layout: tuple[int, ...]  # view axes in the order a chunk is gathered

    @classmethod
    def plan(
        cls,
        source: Source,
        fetch: Callable[[slice], np.ndarray],
        view: tuple[int, ...],
        axes: tuple[int, ...],
        max_bytes: int,
    ) -> Stream | None:
        """How to stream the elements of `source` ordered as `view`, `axes`, or None when it
        cannot be bounded by `max_bytes`."""
        view, axes = merge_axes(view, axes)
        rows = int(source.shape[0]) if len(source.shape) else 0
        size = _prod(view)
        j = axes[0]
        row = size // view[j] * F32.itemsize  # bytes
        if rows == 0 or max(row, size // rows * F32.itemsize) > max_bytes:
            return None
        block = max_bytes // _BLOCK_PARTS  # bytes
        block_rows = max(1, block // row)
        slab = max_bytes // _SLAB_PARTS // F32.itemsize  # elements
        depth = 0
        while _prod(view[depth + 1 :]) > slab:
            depth += 1
        span = max(1, slab // _prod(view[depth + 1 :]))
        if j == 0:
            return cls(source, fetch, view, axes, block_rows, 0, block_rows, depth, span, axes)
        # Gather in output order when each output run is long: the output's innermost axis is
        # the source's (CHW rows -> HWIO), or the one a slab spans many indices of (OIHW ->
        # HWIO, where a slab is many whole output columns).
        in_order = axes[-1] == len(view) - 1 or (axes[-1] == depth and span >= _RUN)
        layout = axes if in_order else (*axes[1:], j)
        # An output-order table is cut into blocks anywhere, so its blocks stay small even
        # when its rows do not (an 8 MiB HWIO fc6 row from OIHW): more of it is table.
        block_size = min(block, block_rows * row) // F32.itemsize
        aligned = not in_order and block_rows >= _RUN  # blocks are table columns: see _RUN
        if aligned:
            block_rows -= block_rows % _RUN
        flight = _IN_FLIGHT * (block_size * F32.itemsize if in_order else block_rows * row)
        held = span * _prod(view[depth + 1 :]) * F32.itemsize + flight
        passes = -(-view[j] // max(block_rows, (_WORK_BLOCKS * max_bytes - held) // row))
        chunk_rows = -(-view[j] // passes)  # as even as the passes allow: the least memory
        if aligned:
            chunk_rows = -(-chunk_rows // block_rows) * block_rows
        return cls(
            source, fetch, view, axes, block_rows, block_size, chunk_rows, depth, span, layout
        )

    def blocks(self) -> Generator[np.ndarray, None, None]:
        """The tensor's blocks in order, each a fresh array (a caller may keep it)."""
        j = self.axes[0]
        buffer: np.ndarray | None = None  # the table's memory, reused pass after pass
        for a in range(0, self.view[j], self.chunk_rows):
            b = min(a + self.chunk_rows, self.view[j])
            shape = permuted_shape((*self.view[:j], b - a, *self.view[j + 1 :]), self.layout)
            if j == 0:  # a run of the source, in output order: the block itself
                block = np.empty(shape, F32)
                self._gather(a, b, block)
                yield block
                continue
            if buffer is None:
                buffer = np.empty(_prod(shape), F32)
            table = buffer[: _prod(shape)].reshape(shape)
            self._gather(a, b, table)
            if self.layout == self.axes:
                flat = table.reshape(-1)
                for o in range(0, flat.size, self.block_size):
                    yield flat[o : o + self.block_size].copy()
                continue
            columns = table.reshape(-1, b - a)
            for o in range(0, b - a, self.block_rows):
                block = np.empty((min(self.block_rows, b - a - o), columns.shape[0]), F32)
                transpose_into(columns[:, o : o + self.block_rows], (1, 0), block)
                yield block

    def _gather(self, a: int, b: int, out: np.ndarray) -> None:
        """Output rows a..b (view axis `axes[0]`), laid out as `layout`, into `out`."""
        j, depth = self.axes[0], self.depth
        where = {axis: p for p, axis in enumerate(self.layout)}  # view axis -> axis of `out`
        # `out` indexed by the prefix loses those axes: the slab's axes land in this order
        axes = [axis - depth for axis in self.layout if axis >= depth]
        first, last = (a, b) if j == depth else (0, self.view[depth])
        for prefix in np.ndindex(*self.view[:depth]):
            if j < depth and not a <= prefix[j] < b:
                continue  # holds none of these output rows
            index: list[int | slice] = [slice(None)] * len(self.layout)
            for axis, i in enumerate(prefix):
                index[where[axis]] = i - a if axis == j else i
            for h in range(first, last, self.span):
                end = min(h + self.span, last)
                slab = self._slab(prefix, h, end)
                if j > depth:
                    slab = slab[(slice(None),) * (j - depth) + (slice(a, b),)]
                index[where[depth]] = slice(h - first, end - first)
                transpose_into(slab, axes, out[tuple(index)])
                del slab  # unmap it before the next one is mapped

    def _slab(self, prefix: tuple[int, ...], start: int, stop: int) -> np.ndarray:
        """Indices start..stop of view axis `depth` under `prefix`: the source rows that hold
        them, trimmed to shape (stop - start, *view[depth + 1:])."""
        inner = self.view[self.depth + 1 :]
        head = int(np.ravel_multi_index(prefix, self.view[: self.depth])) if prefix else 0
        begin = (head * self.view[self.depth] + start) * _prod(inner)
        count = (stop - start) * _prod(inner)
        per_row = _prod(self.view) // int(self.source.shape[0])
        first = begin // per_row
        data = self.fetch(slice(first, -(-(begin + count) // per_row))).reshape(-1)
        begin -= first * per_row
        return data[begin : begin + count].reshape((stop - start, *inner))


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def ahead(blocks: Generator[np.ndarray, None, None]) -> Iterator[np.ndarray]:
    """`blocks`, each computed on a worker thread while the caller writes the one before.

    NumPy copies and file writes both release the GIL, so on two cores the caller's writes
    (and checks) cost no time beside the moving of axes: fc6 as OIHW streams to a file in
    0.38 s rather than 0.47 s. The worker runs one block ahead, never more.
    """
    worker = ThreadPoolExecutor(1, thread_name_prefix="vggfcn-blocks")
    pending = worker.submit(next, blocks, None)
    try:
        while (block := pending.result()) is not None:
            pending = worker.submit(next, blocks, None)
            yield block
    finally:
        worker.shutdown()  # let the block in flight finish: a running generator cannot close
        blocks.close()  # free its slab and table now, not when garbage collected
