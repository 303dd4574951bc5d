"""Storage precisions of the output: float32, float16, bfloat16 — and reading them back.

NumPy has no bfloat16, and `safetensors.numpy` cannot load one; the format is simple: the top 16
bits of a float32. Encoding rounds to nearest, ties to even (what torch and ml_dtypes do);
decoding shifts the bits back. Everything downstream computes in float32 (`F32`).

`PRECISIONS` is the one table of output precisions: what each is called on the command line,
its safetensors code, how its bytes are stored, and the tolerance `verify` holds it to. The
command line lists the names without importing NumPy (`choices.DTYPES`); a test pins the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatError

#: The dtype every computation and every float32 file uses: little-endian float32.
F32 = np.dtype("<f4")


@dataclass(frozen=True)
class Precision:
    """An output precision.

    Attributes:
        name: as options and metadata spell it ("float16").
        code: the safetensors dtype code ("F16").
        storage: the NumPy dtype of its stored bytes (bfloat16: uint16 bit patterns).
        tolerance: `verify`'s default (atol, rtol) for a file of this precision. float32 sums
            of up to 25 088 products, in another order, drift by ~1e-6 of the logits' scale
            while a wrong flatten order is off by O(1): 1e-4 sits two decades above the first
            and four below the second. Rounding every weight to float16 (relative error
            <= 2^-11) or bfloat16 (<= 2^-8) moves the logits by about that much of the scale,
            so their tolerances sit a few times above what a correct conversion measures.
    """

    name: str
    code: str
    storage: np.dtype[Any]
    tolerance: tuple[float, float]


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("float32", "F32", F32, (1e-4, 1e-4)),
        Precision("float16", "F16", np.dtype("<f2"), (3e-3, 3e-3)),
        Precision("bfloat16", "BF16", np.dtype("<u2"), (2.5e-2, 2.5e-2)),
    )
}


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype="<f4").view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = ((bits >> 16) | np.uint32(0x0040)).astype(np.uint32)  # NaN stays NaN, never Inf
    return np.where(nan, quiet, rounded).astype("<u2")


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: every bfloat16 is a float32), given as
    integers of either byte order or as opaque 2-byte values (Keras' HDF5 storage)."""
    bits = np.asarray(bits)
    words = bits.view("<u2") if bits.dtype.kind == "V" else bits.astype("<u2", copy=False)
    return (words.astype(np.uint32) << np.uint32(16)).view("<f4")


def encode(block: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """A float32 block in the storage dtype `dtype`.

    Raises:
        FormatError: a finite value that overflows float16 (beyond +-65504).
    """
    if dtype == "float32":
        return block
    if dtype == "bfloat16":
        return to_bfloat16_bits(block)
    out = block.astype("<f2")
    if not np.isfinite(out.sum(dtype=np.float32)) and np.isfinite(block).all():
        raise FormatError(f"{where}: values beyond float16's range (+-65504); use float32")
    return out


class BFloat16Source:
    """Float32 view of a sliceable source of bfloat16 bit patterns (uint16 or 2-byte void)."""

    dtype = F32
    storage = "bfloat16"  # what the file holds, for reports

    def __init__(self, bits: Any) -> None:
        self.bits = bits
        self.shape = tuple(bits.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return from_bfloat16_bits(np.ascontiguousarray(self.bits[key]))


def stored(values: np.ndarray, name: str) -> np.ndarray:
    """float32 values as a file of precision `name` holds them, read back as float32 (what a
    converted file's reader gives for the original's values)."""
    values = np.asarray(values, F32)
    if name == "float16":
        return values.astype("<f2").astype(F32)
    if name == "bfloat16":
        return from_bfloat16_bits(to_bfloat16_bits(values))
    return values
