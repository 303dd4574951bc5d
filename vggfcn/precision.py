"""Storage precisions of the output: float32, float16, bfloat16 — and reading them back.

NumPy has no bfloat16, and `safetensors.numpy` cannot load one; the format is simple: the top 16
bits of a float32. Encoding rounds to nearest, ties to even (what torch and ml_dtypes do);
decoding shifts the bits back. Everything downstream computes in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FormatError

#: Output dtype name -> (safetensors dtype code, NumPy storage dtype).
DTYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "float32": ("F32", np.dtype("<f4")),
    "float16": ("F16", np.dtype("<f2")),
    "bfloat16": ("BF16", np.dtype("<u2")),
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

    dtype = np.dtype("<f4")
    storage = "bfloat16"  # what the file holds, for reports

    def __init__(self, bits: Any) -> None:
        self.bits = bits
        self.shape = tuple(bits.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return from_bfloat16_bits(np.ascontiguousarray(self.bits[key]))
