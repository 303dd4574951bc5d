"""The protobuf wire format, both ways: just enough for the files we read and write without a
protobuf library (ONNX models, Caffe's `.caffemodel`).

A message is a sequence of fields, each a varint key `number << 3 | wire type`, then a varint
(type 0), 8 or 4 fixed bytes (types 1 and 5), or a varint length and that many bytes (type 2:
strings, bytes, sub-messages, packed arrays); groups (types 3 and 4) are used by neither format
and are refused. A message is parsed into its fields by number — varint values, and the (start,
end) of every other field — without decoding anything else, so packed float payloads stay bytes
of the file (mapped, never turned into Python floats). Every length is checked against the
message holding it. Nesting is bounded by the readers: each descends only into the messages it
knows, stepping over any other field by its wire type, so no file can make them recurse.

Writing is the same format the other way (`varint`, `key`, `int_field`, `bytes_field`): a
writer that knows every length before the data (ONNX's) emits a message front to back.
"""

from __future__ import annotations

import mmap
from collections import defaultdict
from dataclasses import dataclass, field

from ..errors import FormatError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


@dataclass
class Message:
    """One message's fields by number: varint values, and (start, end) of the others
    (length-delimited payloads and fixed-width values alike)."""

    what: str  # "layer #3", "GraphProto": what error messages call it
    ints: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    spans: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))

    def has(self, number: int) -> bool:
        return bool(self.ints.get(number) or self.spans.get(number))

    def last(self, number: int, default: int = 0) -> int:
        """An optional scalar: its last value, as protobuf says."""
        return self.ints.get(number, [default])[-1]


class Wire:
    """A file's bytes (a map of them), parsed one message at a time; errors name the file."""

    def __init__(self, path: str, data: mmap.mmap) -> None:
        self.path, self.data = path, data

    def error(self, text: str) -> FormatError:
        return FormatError(f"{self.path}: {text}")

    def varint(self, start: int, end: int) -> tuple[int, int]:
        """(value, position after it) of the varint at `start`, which must end before `end`."""
        value = 0
        for pos in range(start, min(start + 10, end)):
            value |= (self.data[pos] & 0x7F) << 7 * (pos - start)
            if self.data[pos] < 0x80:
                return value, pos + 1
        if end - start < 10:
            raise self.error(
                f"varint at byte {start} runs past its end {end} (truncated or corrupt)"
            )
        raise self.error(f"bad varint at byte {start} (more than 10 bytes)")

    def message(self, spans: list[tuple[int, int]], what: str) -> Message:
        """The fields of a message, merged over all its occurrences (protobuf's rule).

        Raises:
            FormatError: a bad key or wire type, or a field running past the message's end.
        """
        out = Message(what)
        for pos, end in spans:
            while pos < end:
                key, at = self.varint(pos, end)
                number, wire = key >> 3, key & 7
                if wire == VARINT:
                    value, pos = self.varint(at, end)
                    out.ints[number].append(value)
                    continue
                if wire == LEN:
                    length, at = self.varint(at, end)
                elif wire in (FIXED64, FIXED32):
                    length = 8 if wire == FIXED64 else 4
                else:
                    raise self.error(
                        f"{what}: field {number} at byte {pos} has wire type {wire} "
                        "(a group or invalid); expected 0, 1, 2 or 5"
                    )
                if number == 0 or length > end - at:
                    raise self.error(
                        f"{what}: field {number} at byte {pos} needs {length} bytes, "
                        f"{end - at} remain before its end (truncated or corrupt)"
                    )
                out.spans[number].append((at, at + length))
                pos = at + length
        return out

    def one(self, message: Message, number: int, what: str) -> Message:
        """The sub-message in field `number`, which must occur once."""
        spans = message.spans.get(number, [])
        if len(spans) != 1:
            raise self.error(
                f"{message.what} has {len(spans)} {what}s in field {number}, expected 1"
            )
        return self.message(spans, what)

    def string(self, message: Message, number: int) -> str:
        """An optional string field: its last value, as protobuf says, or ""."""
        return (self.strings(message, number) or [""])[-1]

    def strings(self, message: Message, number: int) -> list[str]:
        try:
            return [self.data[a:b].decode("utf-8") for a, b in message.spans.get(number, [])]
        except UnicodeDecodeError:
            raise self.error(f"{message.what}: field {number} is not UTF-8 text") from None

    def ints(self, message: Message, number: int) -> list[int]:
        """A repeated integer field, unpacked or packed (both are valid protobuf)."""
        values = list(message.ints.get(number, []))
        for pos, end in message.spans.get(number, []):
            while pos < end:
                value, pos = self.varint(pos, end)
                values.append(value)
        return values


def varint(n: int) -> bytes:
    """The base-128 varint of a non-negative integer, low bits first."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(number: int, wire: int) -> bytes:
    """A field's key: its number and wire type."""
    return varint(number << 3 | wire)


def int_field(number: int, value: int) -> bytes:
    """A varint field (int32, int64, enums, bools)."""
    return key(number, VARINT) + varint(value)


def bytes_field(number: int, data: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return key(number, LEN) + varint(len(data)) + data
