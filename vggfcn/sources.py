"""What a lazy tensor (`tensor.Tensor`) can be a view of: any array-like a reader hands out.

Readers produce many kinds (an h5py dataset, an ndarray, a memory-mapped `FileRegion`, a
`BFloat16Source`, compile's folded and averaged kernels): each is an array of `shape` and `dtype`
that gives NumPy arrays when sliced along its first axis. Some can also gather runs of their
bytes straight from their file (`RunReadable`), which lets `bands` move fc6 reading every
byte once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


class Source(Protocol):
    """Sliceable along its first axis like an h5py dataset: `source[()]` is all of it,
    `source[a:b]` rows a..b, both as NumPy arrays of `dtype`."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, key: Any) -> np.ndarray: ...


@runtime_checkable
class RunReadable(Protocol):
    """A source in a file that can read runs of its bytes into rows of an array (`pread`s)."""

    def read_runs(self, starts: np.ndarray, out: np.ndarray) -> None: ...
