"""NumPy's own OpenBLAS, for the one routine NumPy does not expose: `somatcopy`, a 2-D transpose.

Why: moving fc6's axes is most of what converting a Caffe or PyTorch VGG costs. NumPy copies a
transposed view element by element (411 MB of fc6 in 0.22-0.33 s here, however it is tiled);
OpenBLAS's `somatcopy` transposes with vector shuffles at memory speed (0.055 s, measured side by
side). NumPy's PyPI wheels ship that OpenBLAS with the routine exported, so nothing is installed
or built: we look it up in the library NumPy has already loaded. Where it is not there (a NumPy
built against MKL or Accelerate, another wheel layout) or `VGGFCN_NO_OPENBLAS` is set,
`transpose` moves the same bytes with NumPy tiles, only slower.

The routine is trusted only after it has transposed a small strided matrix exactly as NumPy does.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .precision import F32

#: Exported names of `cblas_somatcopy` in the ILP64 builds NumPy wheels ship (64-bit integer
#: arguments): NumPy 2's scipy-openblas64, then NumPy 1.22-1.26's openblas64_.
_SYMBOLS = ("scipy_cblas_somatcopy64_", "cblas_somatcopy64_")
#: Where wheels put their bundled libraries: Linux and Windows beside the package, macOS inside.
_LIBRARIES = ("../numpy.libs/*openblas*", ".dylibs/*openblas*")
_ROW_MAJOR, _TRANS = 101, 112  # CBLAS_ORDER.CblasRowMajor, CBLAS_TRANSPOSE.CblasTrans
_ARGS = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_float]
_ARGS += [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]


def transpose(a: np.ndarray, out: np.ndarray) -> bool:
    """out[...] = a.T through OpenBLAS, when it is there and both arrays suit it.

    Both must be 2-D float32 with contiguous, 4-byte aligned rows (any row stride): ctypes
    releases the GIL for the call, so this runs beside the source hash. Returns False, having
    done nothing, when the caller must transpose another way.
    """
    kernel = _kernel()
    if kernel is None or not (_suits(a) and _suits(out)) or out.shape != a.shape[::-1]:
        return False
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if a.size:
        rows, cols = a.shape
        lda, ldb = a.strides[0] // 4, out.strides[0] // 4
        lda, ldb = max(lda, cols), max(ldb, rows)  # a single row's stride is free
        kernel(_ROW_MAJOR, _TRANS, rows, cols, 1.0, a.ctypes.data, lda, out.ctypes.data, ldb)
    return True


def available() -> bool:
    """Whether OpenBLAS's transpose is in use (`make bench` says which transposes it measured)."""
    return _kernel() is not None


def _suits(x: np.ndarray) -> bool:
    return (
        x.ndim == 2
        and x.dtype == F32
        and x.strides[1] == 4
        and x.strides[0] % 4 == 0
        and (x.strides[0] >= x.shape[1] * 4 or x.shape[0] <= 1)  # no broadcast or overlap
        and x.ctypes.data % 4 == 0
    )


@functools.cache
def _kernel() -> Callable[..., None] | None:
    if os.environ.get("VGGFCN_NO_OPENBLAS"):
        return None
    root = Path(np.__file__).parent
    for path in sorted(p for pattern in _LIBRARIES for p in root.glob(pattern)):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        for name in _SYMBOLS:
            function = getattr(library, name, None)
            if function is None:
                continue
            function.restype, function.argtypes = None, _ARGS
            if _works(function):
                return function  # type: ignore[no-any-return]
    return None


def _works(function: Callable[..., None]) -> bool:
    """Transpose a 3x5 block of a 4x7 matrix into a 5x3 block of a 6x4 one, as NumPy would."""
    a = np.arange(28, dtype=F32).reshape(4, 7)
    out = np.full((6, 4), -1, F32)
    function(_ROW_MAJOR, _TRANS, 3, 5, 1.0, a.ctypes.data, 7, out.ctypes.data, 4)
    want = np.full((6, 4), -1, F32)
    want[:5, :3] = a[:3, :5].T
    return bool(np.array_equal(out, want))
