"""Checks that make a pickle safe to hand to a restricted unpickler, and safe text from it.

Shared by the readers of pickled checkpoints (`torch_zip`, `npy_file`): the allowlist decides
*what* may be built; this pre-scan decides that building it cannot exhaust memory.
"""

from __future__ import annotations

import mmap
import pickle
import pickletools
import struct
from typing import Any

from ..errors import FormatError

#: Opcode byte -> description, for the pre-scan. Protocol 5's out-of-band buffers and the
#: copyreg extension registry (EXT1/2/4) have no place in a checkpoint.
_OPCODES = {
    op.code.encode("latin-1")[0]: op
    for op in pickletools.opcodes
    if op.proto <= 4 and not op.name.startswith("EXT")
}
_MEMO_PUTS = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"})
#: Argument length prefixes: pickletools' marker -> (bytes in the prefix, signed).
_COUNTED = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def scan_pickle(data: bytes | mmap.mmap, start: int, path: str, what: str) -> None:
    """Walk a pickle's opcodes before unpickling it: known opcodes, every length inside `data`.

    Why: CPython's unpickler allocates whatever a length field claims before reading, and grows
    its memo to any index it is given, so a 20-byte pickle can demand gigabytes. Writers number
    memo entries 0, 1, 2...; we refuse an index beyond the next one. Nothing is decoded here.

    Raises:
        FormatError: an unknown, protocol-5 or EXT opcode, an argument running past the end of
        the data, a memo index out of sequence, or no STOP.
    """
    pos, memo, end = start, 0, len(data)
    while pos < end:
        op = _OPCODES.get(data[pos])
        if op is None:
            raise FormatError(
                f"{path}: {what} has an unsupported pickle opcode {data[pos]:#04x} at byte {pos}"
            )
        at, pos = pos, pos + 1
        arg, value = op.arg, b""
        if arg is None:
            pass
        elif arg.n >= 0:
            value, pos = data[pos : pos + arg.n], pos + arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if arg.name == "stringnl_noescape_pair" else 1):
                newline = data.find(b"\n", pos)
                value, pos = data[pos:newline], (newline + 1 if newline >= 0 else end + 1)
        else:
            width, signed = _COUNTED[arg.n]
            count = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width + (count if count >= 0 else end)
        framed = int.from_bytes(value, "little") if op.name == "FRAME" else 0
        if pos + framed > end:
            raise FormatError(
                f"{path}: {what} is truncated ({op.name} at byte {at} runs past its end)"
            )
        if op.name == "STOP":
            return
        if op.name in _MEMO_PUTS:
            index = memo if op.name == "MEMOIZE" else _memo_index(op.name, value)
            if index is None or index > memo:
                raise FormatError(f"{path}: {what} stores memo entry {index} out of sequence")
            memo = max(memo, index + 1)
    raise FormatError(f"{path}: {what} is truncated (no STOP opcode)")


def _memo_index(name: str, value: bytes) -> int | None:
    """The index PUT (a decimal line) or BINPUT/LONG_BINPUT (little-endian) stores under."""
    if name != "PUT":
        return int.from_bytes(value, "little")
    text = value.strip()
    return int(text) if text.isdigit() and len(text) < 20 else None


#: What a corrupt or hostile pickle can make a gated unpickler raise.
PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
    struct.error,
)


def unpickle(unpickler: pickle.Unpickler, path: str, what: str) -> Any:
    """Run a gated unpickler, turning every failure into one FormatError naming `what`."""
    try:
        return unpickler.load()
    except FormatError:
        raise
    except PICKLE_ERRORS as e:
        detail = printable(f"{type(e).__name__}: {e}", 200)
        raise FormatError(f"{path}: {what} is corrupt ({detail})") from None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` hands out only the objects of an allowlist, each one of
    ours: nothing is imported or called for a name off it, and the refusal names the global.

    Subclasses set `allowed` ((module, name) -> object) and `reads` (what they accept, for the
    message) in their `__init__`.
    """

    path: str
    allowed: dict[tuple[str, str], Any]
    reads: str

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise FormatError(
                f"{self.path}: refused to unpickle global {printable(module)}.{printable(name)} "
                f"(only {self.reads}; nothing was executed)"
            )
        return found


def printable(text: str, limit: int = 100) -> str:
    """Text from the file, safe in a one-line message: as is when printable, else its repr."""
    text = text[:limit]
    return text if text.isprintable() else repr(text)


def show(value: object) -> str:
    """A value from the file, described without a repr that could be huge or span lines."""
    if type(value) in (str, bytes):
        return repr(value[:60])  # type: ignore[index]
    return f"a {type(value).__name__}"
