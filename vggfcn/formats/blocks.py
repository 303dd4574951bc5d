"""A tensor's float32 blocks, checked for NaN and Inf on the way out: what every writer streams.

The check costs one cheap pass per block: a float32 sum is finite when no element is NaN or Inf,
so only a block whose sum is not (a NaN, or finite weights whose sum overflows) is counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import FormatError
from ..tensor import Tensor

#: Bytes handed to the OS per write: large enough for full disk speed, small enough for memory.
BLOCK_BYTES = 16 << 20


def checked_blocks(
    tensor: Tensor, allow_nonfinite: bool = False, max_bytes: int = BLOCK_BYTES
) -> Iterator[np.ndarray]:
    """`tensor.blocks(max_bytes)`, refusing NaN/Inf once the tensor is through (so the message
    counts them all) unless `allow_nonfinite`.

    Raises:
        FormatError: the tensor holds NaN or Inf, naming it and the count.
    """
    bad = 0
    for block in tensor.blocks(max_bytes):
        if not allow_nonfinite and not np.isfinite(_sum(block)):
            bad += int(np.count_nonzero(~np.isfinite(block)))
        yield block
    if bad:
        raise FormatError(
            f"{tensor.where}: {bad} NaN/Inf value(s); refusing to convert "
            "(--allow-nonfinite converts them as they are)"
        )


@np.errstate(over="ignore", invalid="ignore")  # the result says it: no RuntimeWarning needed
def _sum(block: np.ndarray) -> float:
    return float(block.sum(dtype=np.float32))
