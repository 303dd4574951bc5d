"""The metadata every converted file carries, whatever its format: one vocabulary, both ways.

safetensors stores it as `__metadata__`, ONNX as `metadata_props`, our `.keras` under `"vggfcn"`
in `metadata.json`: the same flat str -> str map (`metadata`), read back the same way (`info`).
It says what the file is (`format`, `format_version`, how it is stored), where the network came
from (the source's format, base name and SHA-256 — never an absolute path, so the same input and
options give the same bytes anywhere), how to feed it (input size, channel order,
preprocessing) and at which output stride it runs, so that a converted file can be trusted and
reused without its source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from .. import reduce
from ..arch import MIN_INPUT
from ..choices import OUTPUT_STRIDES
from ..errors import FormatError
from ..fcn import FCN, FCNInfo, Storage
from ..graph import SOFTMAX_APPLIED, ChannelOrder, OutputActivation, Preprocessing

FORMAT = "vggfcn-fcn"
FORMAT_VERSION = "1"
_ACTIVATIONS: tuple[OutputActivation, ...] = ("softmax", "sigmoid", "linear", "unknown")


@dataclass(frozen=True)
class PendingMetadata:
    """A file's metadata while one of its values, the source's SHA-256, is still being computed
    (it runs beside the conversion: `digest`).

    Attributes:
        draft: the metadata with the digest as zeros, of its final length (a writer whose header
            comes first writes this, then rewrites it in place).
        final: the metadata with the digest; waits for it.
    """

    draft: Mapping[str, str]
    final: Callable[[], Mapping[str, str]]


def metadata(fcn: FCN, source_name: str, source_sha256: str, storage: Storage) -> dict[str, str]:
    """The metadata of `fcn` stored as `storage` (its layout, names and dtype are recorded).

    `output_stride` is recorded when it is 16 or 8 (`atrous`): at 32, the classifier's own, it
    is left out, as every file written before it existed leaves it out, so that a stride-32
    file is the same bytes as it always was.
    """
    info = fcn.info
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": fcn.name,
        "layout": storage.layout,
        "names": storage.names,
        "dtype": storage.dtype,
        "classes": str(fcn.classes),
        "head": info.head,
        "head_activations": ",".join(fcn.head_activations),
        "input_size": f"{info.input_size[0]},{info.input_size[1]}",
        "channel_order": info.channel_order,
        "preprocessing": info.preprocessing,
        "source_format": info.source_format,
        "source_file": source_name,
        "source_sha256": source_sha256,
        "source_softmax": SOFTMAX_APPLIED[info.output_activation],
        "source_output_activation": info.output_activation,
        "source_batch_norm": info.batch_norm,
        **({"output_stride": str(info.output_stride)} if info.output_stride != 32 else {}),
        **(
            {"use_ssd": reduce.SSD, "use_deeplab_largefov": reduce.DEEPLAB_LARGEFOV}
            if info.head == "reduced"
            else {}
        ),
    }


def is_ours(meta: Mapping[str, str]) -> bool:
    """Whether metadata says a file was written by vggfcn."""
    return meta.get("format") == FORMAT


def check_version(path: str, meta: Mapping[str, str]) -> None:
    """Refuse metadata of a version this one cannot read.

    Raises:
        FormatError: not ours, or another format version (a file from a later vggfcn).
    """
    if not is_ours(meta) or meta.get("format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: metadata says format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this version reads {FORMAT} {FORMAT_VERSION} "
            "(not written by vggfcn, or cut short)"
        )


def info(path: str, meta: Mapping[str, str], storage: Storage) -> FCNInfo:
    """What a converted file's metadata says about its network, stored as `storage` (which the
    file's reader has established from the file itself).

    A file written before `input_size` or `source_output_activation` existed has the stock
    224x224 input and says only whether a softmax followed; one without `output_stride` runs
    at 32.

    Raises:
        FormatError: an `input_size` that is not H,W; an `output_stride` other than 32, 16 or
            8, or other than 32 for a reduced head.
    """
    head: Literal["classifier", "reduced"] = (
        "reduced" if meta.get("head") == "reduced" else "classifier"
    )
    return FCNInfo(
        path=path,
        source_format=meta.get("source_format", "unknown"),
        input_size=_size(meta, path),
        output_activation=_output(meta),
        channel_order=_choice(meta, "channel_order", ("rgb", "bgr")),  # type: ignore[arg-type]
        preprocessing=_choice(meta, "preprocessing", ("caffe", "torch")),  # type: ignore[arg-type]
        batch_norm=meta.get("source_batch_norm", "none"),
        storage=storage,
        head=head,
        source_file=meta.get("source_file", ""),
        source_sha256=meta.get("source_sha256", ""),
        output_stride=_output_stride(meta, head, path),
    )


def _size(meta: Mapping[str, str], path: str) -> tuple[int, int]:
    text = meta.get("input_size")
    if text is None:
        return (MIN_INPUT, MIN_INPUT)
    parts = text.split(",")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) < 1 << 20 for p in parts):
        raise FormatError(f"{path}: input_size {text!r} is not H,W")
    return int(parts[0]), int(parts[1])


def _output_stride(meta: Mapping[str, str], head: str, path: str) -> int:
    """The recorded output stride: exactly one `atrous` makes, spelled as `metadata` spells it
    (a reduced head is a dilated construction of its own, at 32 only)."""
    text = meta.get("output_stride", "32")
    strides = OUTPUT_STRIDES if head == "classifier" else (32,)
    if text not in map(str, strides):
        raise FormatError(
            f"{path}: output_stride {text!r}; a {head} head runs at {', '.join(map(str, strides))}"
        )
    return int(text)


def _output(meta: Mapping[str, str]) -> OutputActivation:
    recorded = meta.get("source_output_activation")
    if recorded is not None:
        return next((a for a in _ACTIVATIONS if a == recorded), "unknown")
    softmax = meta.get("source_softmax")  # files from before the activation was recorded
    return "softmax" if softmax == "yes" else "linear" if softmax == "no" else "unknown"


def _choice(
    meta: Mapping[str, str], key: str, values: tuple[str, ...]
) -> ChannelOrder | Preprocessing:
    value = meta.get(key, "unknown")
    return value if value in values else "unknown"  # type: ignore[return-value]
