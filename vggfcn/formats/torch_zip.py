"""PyTorch zip checkpoints (`torch.save`, torch >= 1.6), read without torch and running nothing.

Why not `torch.load`: it unpickles, and a pickle can call any function it names; torch's own
`weights_only=True` guard needs torch at run time, a multi-GB dependency we refuse. The container
is simple enough to own: a zip holding `<archive>/data.pkl` (a protocol-2 pickle that describes
the tensors), `<archive>/data/<key>` (raw storages, stored uncompressed and 64-byte aligned) and
`<archive>/byteorder` ("little" when absent). The pickle goes through an allowlist: each global a
plain tensor state dict needs maps to a small object of ours, anything else is refused before it
is looked up, so nothing from the file is ever executed. Before that, `scan_pickle` walks the
opcodes so that no length field or memo index can make the unpickler allocate more than the
file holds. Tensors become read-only views of a memory map of the file: no weight is copied.

Decisions:
- Wrapper dicts: `{"state_dict": sd, ...}` (Lightning), `{"model": sd, ...}`,
  `{"model_state_dict": sd, ...}`, `{"net": sd, ...}` (training scripts) yield `sd`; the
  wrapper's other entries (epoch, hyper-parameters, optimizer state...) are read as data through
  the same allowlist, and ignored.
- Values of the state dict that are not tensors (plain ints, strings) are skipped. Integer and
  bool tensors (`num_batches_tracked`) are returned with their own dtype; the caller decides.
- bfloat16 tensors come back as float32 views of their bits (`precision.BFloat16Source`): NumPy
  has no bfloat16, and raw uint16 bits must never be read as numbers.
- Compressed storage members are refused (torch never writes them, and a memory map needs the
  raw bytes); a compressed `data.pkl` is read, bounded by its declared size.
- The legacy pre-1.6 format (a bare pickle stream) is refused with a hint to re-save the file.
- Also refused, by global name: `_rebuild_tensor` (pre-1.0 pickles, never inside a zip),
  `_rebuild_tensor_v3` (uint16/float8 and other post-2.0 dtypes), complex and quantized storages,
  `torch.storage._load_from_bytes`, and whole pickled modules.
- Storage bytes are bounds-checked but not CRC-checked: that would read every weight.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from ..errors import FormatError
from ..precision import BFloat16Source
from .detect import ZIP_MAGIC
from .pickle_scan import RestrictedUnpickler, scan_pickle, unpickle
from .pickle_scan import printable as _printable
from .pickle_scan import show as _show
from .region import FileRegion
from .zip_io import ZIP_ERRORS, data_start, read_member, vetted_members

#: The pickle of a state dict is a few bytes per tensor; anything larger is not a state dict.
PICKLE_MAX_BYTES = 100_000_000
#: What `torch.save(..., _use_new_zipfile_serialization=False)` writes first (pickled magic number).
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_MAX_DIMS = 32


class _StorageType(NamedTuple):
    """What `torch.FloatStorage` & co. stand for: an element type (immutable, like all we give)."""

    name: str
    dtype: np.dtype[Any]  # for bfloat16, the uint16 of its bit patterns
    itemsize: int
    bfloat16: bool = False


_STORAGE_TYPES = {
    t.name: t
    for t in (
        _StorageType("FloatStorage", np.dtype("f4"), 4),
        _StorageType("DoubleStorage", np.dtype("f8"), 8),
        _StorageType("HalfStorage", np.dtype("f2"), 2),
        _StorageType("BFloat16Storage", np.dtype("u2"), 2, bfloat16=True),
        _StorageType("LongStorage", np.dtype("i8"), 8),
        _StorageType("IntStorage", np.dtype("i4"), 4),
        _StorageType("ShortStorage", np.dtype("i2"), 2),
        _StorageType("CharStorage", np.dtype("i1"), 1),
        _StorageType("ByteStorage", np.dtype("u1"), 1),
        _StorageType("BoolStorage", np.dtype("?"), 1),
    )
}


class _Storage(NamedTuple):
    """One storage member, located in the file and checked to hold `numel` elements."""

    member: str
    start: int  # file offset of its first byte
    numel: int
    type: _StorageType


#: A tensor as this reader hands it out.
Stored = np.ndarray | FileRegion | BFloat16Source


class _Unreadable(NamedTuple):
    """A tensor we will not hand out; refused, naming it, if it is in the returned state dict."""

    reason: str


def read_state_dict(path: str) -> dict[str, Stored]:
    """Read a `torch.save` checkpoint's tensors as memory-mapped arrays, executing nothing.

    Args:
        path: a zip checkpoint written by `torch.save` (torch >= 1.6), e.g. `vgg16-397923af.pth`.
    Returns:
        tensor name -> the tensor: a region of the file mapped when read (`FileRegion`; a
        strided view of a storage: an array over a map of it), in file
        order, with the tensor's dtype, shape and strides (OIHW conv kernels stay OIHW).
    Raises:
        FormatError: not a torch zip checkpoint, the legacy format, a corrupt or truncated
        archive, a pickle global outside the allowlist, a compressed storage,
        a tensor reaching outside its storage, or no tensors at all.

    Example:
        >>> sd = read_state_dict("vgg16-397923af.pth")
        >>> sd["features.0.weight"].shape
        (64, 3, 3, 3)
    """
    _check_magic(path)
    archive, pickled = _open_archive(path)
    scan_pickle(pickled, 0, path, "data.pkl")
    top = unpickle(_Unpickler(pickled, archive), path, "data.pkl")
    return _tensors(path, _state_dict(path, top))


@dataclass(frozen=True)
class _Archive:
    """The zip's members: what storage references resolve to."""

    path: str
    members: dict[str, zipfile.ZipInfo]
    prefix: str  # "<archive>/"
    byteorder: Literal["<", ">"]
    size: int

    def storage(self, key: str, stype: _StorageType, numel: int) -> _Storage:
        """Locate `<archive>/data/<key>` and check it holds `numel` elements of `stype`."""
        name = f"{self.prefix}data/{key}"
        info, shown = self.members.get(name), _printable(name)
        if info is None:
            raise FormatError(
                f"{self.path}: storage member {_show(name)} is missing from the archive"
            )
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise FormatError(
                f"{self.path}: member {shown} is compressed; storages must be stored as "
                "torch.save writes them (re-save the checkpoint with torch.save)"
            )
        need = numel * stype.itemsize
        if info.file_size < need:
            raise FormatError(
                f"{self.path}: member {shown} holds {info.file_size} bytes, but its {numel} "
                f"{stype.name} elements need {need}"
            )
        start = data_start(self.path, info, self._read, self.size)
        return _Storage(shown, start, numel, stype)

    def _read(self, offset: int, count: int) -> bytes:
        """`count` bytes at `offset` of the archive (a local header, its name)."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(count)

    def view(
        self,
        storage: _Storage,
        element: np.dtype[Any],
        offset: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...],
    ) -> np.ndarray | FileRegion:
        """The tensor, after checking it stays inside its storage: a region of the file mapped
        when read (a tensor is its storage's bytes in C order, as state dicts hold them), or,
        for a strided view of its storage, a view of a map of just that storage."""
        if 0 in shape:
            last, fits = offset, offset <= storage.numel
        else:
            last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
            fits = last < storage.numel
        if not fits:
            raise FormatError(
                f"{self.path}: a tensor of shape {shape} at element offset {offset} reaches "
                f"element {last} of member {storage.member}, which holds {storage.numel}"
            )
        dtype = element.newbyteorder(self.byteorder)
        contiguous = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(len(shape)))
        if tuple(strides) == contiguous or 0 in shape:
            return FileRegion(self.path, storage.start + offset * dtype.itemsize, shape, dtype)
        nbytes = storage.numel * dtype.itemsize
        whole = FileRegion(self.path, storage.start, (nbytes,), np.dtype(np.uint8))[()]
        return np.ndarray(
            shape,
            dtype,
            buffer=whole,
            offset=offset * dtype.itemsize,
            strides=tuple(s * dtype.itemsize for s in strides),
        )


class _Unpickler(RestrictedUnpickler):
    """Unpickles a tensor state dict through an allowlist; every allowed global is ours.

    Allowed globals are bound methods and immutable tuples, so a hostile pickle cannot alter
    them (BUILD on them fails) and nothing it does outlives this one load.
    """

    def __init__(self, data: bytes, archive: _Archive) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self.path = self._path = archive.path
        self._storages: dict[str, _Storage] = {}
        self.reads = "plain tensor state dicts are read"
        self.allowed = {
            ("collections", "OrderedDict"): self._ordered_dict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
        }

    def persistent_load(self, pid: Any) -> _Storage:
        """Resolve torch's `('storage', type, key, location, numel)` to a checked member."""
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError(f"{self._path}: data.pkl refers to an unknown object ({_show(pid)})")
        _, stype, key, _location, numel = pid
        if not (isinstance(stype, _StorageType) and type(key) is str and _is_count(numel)):
            raise FormatError(f"{self._path}: data.pkl has a malformed storage reference")
        known = self._storages.get(key)
        if known is None:
            known = self._storages[key] = self._archive.storage(key, stype, numel)
        elif known.type != stype or known.numel != numel:
            raise FormatError(
                f"{self._path}: storage {_show(key)} is described in two different ways"
            )
        return known

    def _ordered_dict(self, *args: Any) -> OrderedDict[Any, Any]:
        return OrderedDict(*args)

    def _rebuild_tensor_v2(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any = False,
        backward_hooks: Any = None,
        metadata: Any = None,
    ) -> Stored | _Unreadable:
        """torch's tensor constructor, as a view of the file; grad flags and hooks are dropped."""
        shape, strides = _dims(size), _dims(stride)
        if not (
            isinstance(storage, _Storage)
            and _is_count(storage_offset)
            and shape is not None
            and strides is not None
            and len(shape) == len(strides)
        ):
            raise FormatError(f"{self._path}: data.pkl describes a tensor with invalid arguments")
        if metadata:
            return _Unreadable(
                "has its conj/neg bit set, so its stored bytes are not its values; "
                "re-save it after .resolve_conj().resolve_neg()"
            )
        view = self._archive.view(storage, storage.type.dtype, storage_offset, shape, strides)
        return BFloat16Source(view) if storage.type.bfloat16 else view

    def _rebuild_parameter(self, data: Any, *_flags: Any) -> Stored | _Unreadable:
        """nn.Parameter: the tensor itself (requires_grad and hooks do not matter here)."""
        if not isinstance(data, Stored | _Unreadable):
            raise FormatError(f"{self._path}: data.pkl wraps a non-tensor in a Parameter")
        return data


def _check_magic(path: str) -> None:
    """Refuse, by content, anything that is not a zip, naming the legacy format when we see it."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None
    if head.startswith(LEGACY_MAGIC):
        raise FormatError(
            f"{path}: legacy PyTorch format (torch < 1.6), which is not read; "
            "re-save with torch >= 1.6: torch.save(torch.load(old), new)"
        )
    if not head.startswith(ZIP_MAGIC):
        raise FormatError(
            f"{path}: not a zip archive (first bytes {head[:8]!r}); "
            "expected a torch.save checkpoint"
        )


def _open_archive(path: str) -> tuple[_Archive, bytes]:
    """Read the zip's directory, vet every member's declared size, and read data.pkl."""
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            members = vetted_members(path, infos, size)
            prefix = _prefix(path, members)
            pickled = read_member(path, z, members[prefix + "data.pkl"], PICKLE_MAX_BYTES)
            order = members.get(prefix + "byteorder")
            byteorder = read_member(path, z, order, PICKLE_MAX_BYTES) if order else b"little"
    except FormatError:
        raise
    except ZIP_ERRORS as e:
        raise FormatError(f"{path}: corrupt zip archive ({_printable(str(e), 200)})") from None
    if byteorder not in (b"little", b"big"):
        raise FormatError(
            f"{path}: member {prefix}byteorder says {byteorder[:20]!r}, expected little or big"
        )
    return _Archive(path, members, prefix, "<" if byteorder == b"little" else ">", size), pickled


def _prefix(path: str, members: dict[str, zipfile.ZipInfo]) -> str:
    """The `<archive>/` directory holding data.pkl; exactly one must exist."""
    found = [
        n[: -len("data.pkl")] for n in members if n.endswith("/data.pkl") and n.count("/") == 1
    ]
    if len(found) != 1:
        names = ", ".join(list(members)[:5]) or "none"
        what = "no <archive>/data.pkl member" if not found else f"{len(found)} data.pkl members"
        raise FormatError(
            f"{path}: not a PyTorch checkpoint: {what} (members: {_printable(names)})"
        )
    return found[0]


def _state_dict(path: str, top: Any) -> dict[Any, Any]:
    """The state dict itself, or the one a training checkpoint wraps under "state_dict"/"model"."""
    if not isinstance(top, dict):
        single = isinstance(top, np.ndarray | FileRegion | BFloat16Source)
        what = "a single tensor" if single else f"a {type(top).__name__}"
        raise FormatError(f"{path}: the checkpoint holds {what}, expected a state dict")
    for key in ("state_dict", "model_state_dict", "model", "net"):
        inner = top.get(key)
        if isinstance(inner, dict):
            return inner
    return top


def _tensors(path: str, state: dict[Any, Any]) -> dict[str, Stored]:
    """Name -> array for every tensor value; other values are skipped, unreadable ones refused."""
    arrays: dict[str, Stored] = {}
    for name, value in state.items():
        if not isinstance(value, Stored | _Unreadable):
            continue
        if type(name) is not str:
            raise FormatError(f"{path}: a tensor is stored under {_show(name)}, not a string name")
        if isinstance(value, _Unreadable):
            raise FormatError(f"{path}: tensor {_printable(name)} {value.reason}")
        arrays[name] = value
    if not arrays:
        keys = ", ".join(_show(k) for k in list(state)[:8]) or "none"
        raise FormatError(f"{path}: no tensors found in the state dict (keys: {keys})")
    return arrays


def _dims(value: Any) -> tuple[int, ...] | None:
    """A shape or stride tuple of non-negative ints, or None when it is anything else."""
    if type(value) is not tuple or len(value) > _MAX_DIMS or not all(map(_is_count, value)):
        return None
    return value


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0
