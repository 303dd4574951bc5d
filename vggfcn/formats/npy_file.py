"""tensorflow-vgg's `vgg16.npy`: a pickled dict of layer name -> [W, b], read without running it.

Why not `np.load(path, allow_pickle=True)`: the payload is a pickle, and a pickle can call any
function it names. The container is small enough to own: `\\x93NUMPY`, a version (1.0, 2.0 or
3.0), a 2- or 4-byte little-endian header length, a Python-literal header such as
`{'descr': '|O', 'fortran_order': False, 'shape': ()}`, then the pickled 0-d object array.

What the pickle may name, checked by experiment and in the numpy sources:
- numpy 2 (`np.save`, protocol 4): `numpy._core.multiarray._reconstruct`, `numpy.ndarray`,
  `numpy.dtype`; each array is `_reconstruct(ndarray, (0,), b'b')` then BUILD with the state
  `(1, shape, dtype, is_fortran, raw bytes)`; the object array's raw data is a list.
- numpy 1 / Python 2 (the original tensorflow-vgg file, protocol 2): the same under
  `numpy.core.multiarray`, with byte strings we decode as latin-1, exactly like
  `np.load(..., encoding='latin1')`. Python 3 protocol-2 pickles spell bytes as
  `_codecs.encode(text, 'latin1')`, which we allow for that one encoding.
Each maps to a small object of ours; the arrays are built by us from the validated state, so no
numpy constructor ever sees the file's arguments. Anything else is refused before lookup, and
the opcodes are pre-scanned (`pickle_scan.scan_pickle`) so no length field can make the
unpickler allocate more than the file holds.

Arrays are read into memory (the pickle interleaves them with its opcodes). Layers stored as
caffe-tensorflow's `{'weights': W, 'biases': b}` are returned as `[W, b]` too.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import math
import mmap
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

import numpy as np

from ..errors import FormatError
from ..graph import SourceGraph
from ..tensor import Tensor
from .detect import NPY_MAGIC
from .pickle_scan import RestrictedUnpickler, scan_pickle, unpickle
from .pickle_scan import show as _show

#: numpy itself refuses headers above 10000 bytes unless told otherwise; so do we.
HEADER_MAX_BYTES = 10_000
_VERSIONS = {1: "<H", 2: "<I", 3: "<I"}
#: Element types a layer dict may use, as `dtype.__reduce__` spells them ("O8": the dict holder).
_DTYPE_SPECS = frozenset(
    {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "O4", "O8"}
)
#: Byte orders a dtype state may name; "=" and "|" (native, not applicable) change nothing.
_ENDIANS: dict[str, Literal["<", ">"] | None] = {"<": "<", ">": ">", "=": None, "|": None}
#: Stands for `numpy.ndarray`; a bare object() cannot be called, changed or built upon.
_NDARRAY = object()


@contextlib.contextmanager
def open(path: str) -> Iterator[SourceGraph]:  # noqa: A001 (the reader contract's name)
    """The classifier in a tensorflow-vgg `.npy` (its arrays are in memory: nothing stays open)."""
    from .state_dict import from_tensorflow_vgg

    layers = {
        name: [Tensor.wrap(a, f"{path}:{name}[{i}]") for i, a in enumerate(arrays)]
        for name, arrays in read_layer_dict(path).items()
    }
    yield from_tensorflow_vgg(layers, path)


def read_layer_dict(path: str) -> dict[str, list[np.ndarray]]:
    """Read a tensorflow-vgg style `.npy` ({layer: [W, b]}) without executing its pickle.

    Args:
        path: a `.npy` file written by `np.save(path, {"conv1_1": [W, b], ...})`.
    Returns:
        layer name -> its arrays in file order (conv W HWIO, fc W (in, out), then b), as stored.
    Raises:
        FormatError: not a .npy file, a plain (non-object) array, a pickle global outside the
        allowlist, a corrupt or truncated payload, or a payload that is not such a dict.

    Example:
        >>> layers = read_layer_dict("vgg16.npy")
        >>> [a.shape for a in layers["conv1_1"]]
        [(3, 3, 3, 64), (64,)]
    """
    try:
        with builtins.open(path, "rb") as f:
            _check_header(path, _read_header(path, f))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                scan_pickle(view, f.tell(), path, "the pickled payload")
            top = unpickle(_Unpickler(f, path), path, "the pickled payload")
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    return _layers(path, top)


class _PendingDtype:
    """`numpy.dtype(spec)` as the pickle builds it; BUILD may only set the byte order."""

    __slots__ = ("_path", "_spec", "_endian")

    def __init__(self, path: str, spec: str) -> None:
        self._path, self._spec = path, spec
        self._endian: Literal["<", ">"] | None = None

    def __setstate__(self, state: Any) -> None:
        if not (type(state) is tuple and len(state) in (8, 9) and state[1] in _ENDIANS):
            raise FormatError(f"{self._path}: the pickle describes a dtype with an invalid state")
        self._endian = _ENDIANS[state[1]]

    def resolve(self) -> np.dtype[Any]:
        dtype = np.dtype(self._spec)
        return dtype if self._endian is None else dtype.newbyteorder(self._endian)


class _PendingArray:
    """An array as the pickle builds it: `_reconstruct(...)`, then BUILD with its state."""

    __slots__ = ("_path", "value")

    def __init__(self, path: str) -> None:
        self._path = path
        self.value: np.ndarray | list[Any] | None = None

    def __setstate__(self, state: Any) -> None:
        self.value = _array_from_state(self._path, state)


class _Unpickler(RestrictedUnpickler):
    """Unpickles a dict of numeric arrays through an allowlist; every allowed global is ours."""

    def __init__(self, file: BinaryIO, path: str) -> None:
        super().__init__(file, encoding="latin1")
        self.path = self._path = path
        self.reads = "a dict of NumPy arrays is read"
        self.allowed = {
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): self._dtype,
            ("_codecs", "encode"): self._encode,
        }

    def persistent_load(self, pid: Any) -> Any:
        raise FormatError(f"{self._path}: the pickle refers to an external object ({_show(pid)})")

    def _reconstruct(self, cls: Any, _shape: Any, _typecode: Any) -> _PendingArray:
        if cls is not _NDARRAY:
            raise FormatError(f"{self._path}: the pickle rebuilds something other than an ndarray")
        return _PendingArray(self._path)

    def _dtype(self, spec: Any, _align: Any = False, _copy: Any = False) -> _PendingDtype:
        if type(spec) is not str or spec not in _DTYPE_SPECS:
            raise FormatError(f"{self._path}: refused dtype {_show(spec)} in the pickle")
        return _PendingDtype(self._path, spec)

    def _encode(self, text: Any, encoding: Any) -> bytes:
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise FormatError(
                f"{self._path}: refused _codecs.encode with encoding {_show(encoding)}"
            )
        return text.encode("latin-1")


def _read_header(path: str, f: BinaryIO) -> Any:
    """The header literal; reading stops where the pickle begins."""
    lead = f.read(len(NPY_MAGIC) + 2)
    if len(lead) < len(NPY_MAGIC) + 2 or not lead.startswith(NPY_MAGIC):
        raise FormatError(f"{path}: not a .npy file (first bytes {lead[:8]!r})")
    major, minor = lead[-2], lead[-1]
    if major not in _VERSIONS or minor != 0:
        raise FormatError(f"{path}: .npy format version {major}.{minor} is not supported")
    length_format = _VERSIONS[major]
    raw = f.read(struct.calcsize(length_format))
    if len(raw) < struct.calcsize(length_format):
        raise FormatError(f"{path}: truncated .npy header")
    (length,) = struct.unpack(length_format, raw)
    if length > HEADER_MAX_BYTES:
        raise FormatError(f"{path}: .npy header of {length} bytes exceeds {HEADER_MAX_BYTES}")
    text = f.read(length)
    if len(text) < length:
        raise FormatError(f"{path}: truncated .npy header")
    try:
        return ast.literal_eval(text.decode("utf-8" if major == 3 else "latin-1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise FormatError(f"{path}: invalid .npy header {text[:60]!r}") from None


def _check_header(path: str, header: Any) -> None:
    """Accept only a 0-d object array: the one shape a pickled dict takes."""
    if not (isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"}):
        raise FormatError(f"{path}: invalid .npy header {header!r:.80}")
    descr, shape = header["descr"], header["shape"]
    if descr != "|O":
        raise FormatError(
            f"{path}: holds a plain {_show(descr)} array of shape {shape!r:.40}, not a "
            "pickled {layer: [weights, biases]} dict as in tensorflow-vgg's vgg16.npy"
        )
    if shape != ():
        raise FormatError(
            f"{path}: holds an object array of shape {shape!r:.40}; expected a single "
            "pickled {layer: [weights, biases]} dict"
        )


def _array_from_state(path: str, state: Any) -> np.ndarray | list[Any]:
    """An ndarray from `ndarray.__reduce__`'s state, after checking it describes itself honestly.

    Object arrays keep their items as a list: only the outer holder of the dict is one.
    """
    if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
        raise FormatError(f"{path}: the pickle describes an array with an invalid state")
    _, shape, pending, fortran, data = state
    if not (
        type(shape) is tuple
        and all(type(d) is int and d >= 0 for d in shape)
        and isinstance(pending, _PendingDtype)
        and type(fortran) is bool
    ):
        raise FormatError(f"{path}: the pickle describes an array with an invalid state")
    dtype = pending.resolve()
    count = math.prod(shape)
    if dtype.kind == "O":
        if type(data) is not list or len(data) != count:
            raise FormatError(f"{path}: an object array's items do not match its shape {shape}")
        return data
    if type(data) is str:  # a Python 2 byte string, decoded as latin-1 by the unpickler
        data = data.encode("latin-1")
    if type(data) is not bytes or len(data) != count * dtype.itemsize:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise FormatError(
            f"{path}: an array of shape {shape} and dtype {dtype} needs "
            f"{count * dtype.itemsize} bytes, the pickle holds {size}"
        )
    array = np.frombuffer(data, dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def _layers(path: str, top: Any) -> dict[str, list[np.ndarray]]:
    """Layer name -> [arrays], checking the payload is a dict of lists of numeric arrays."""
    holder = top.value if isinstance(top, _PendingArray) else None
    if not (isinstance(holder, list) and len(holder) == 1 and isinstance(holder[0], dict)):
        raise FormatError(
            f"{path}: the pickled object is not a dict; expected tensorflow-vgg's "
            "{layer: [weights, biases]}"
        )
    layers: dict[str, list[np.ndarray]] = {}
    for name, params in holder[0].items():
        if type(name) is not str:
            raise FormatError(f"{path}: layer key {_show(name)} is not a string")
        layers[name] = _params(path, name, params)
    if not layers:
        raise FormatError(f"{path}: the layer dict is empty")
    return layers


def _params(path: str, name: str, params: Any) -> list[np.ndarray]:
    """A layer's arrays: a [W, b] list, or caffe-tensorflow's {'weights': W, 'biases': b}."""
    if type(params) is dict and set(params) == {"weights", "biases"}:
        params = [params["weights"], params["biases"]]
    if type(params) not in (list, tuple):
        raise FormatError(
            f"{path}: layer {name} holds a {type(params).__name__}, expected [weights, biases]"
        )
    arrays = []
    for i, item in enumerate(params):
        value = item.value if isinstance(item, _PendingArray) else None
        if not isinstance(value, np.ndarray):
            raise FormatError(f"{path}: layer {name} item {i} is not a numeric array")
        arrays.append(value)
    return arrays
