"""Reader for our own output: a vggfcn fully-convolutional safetensors file."""

from __future__ import annotations

import re

from ..convert import FORMAT, FORMAT_VERSION, LAYOUT, tensor_name
from ..errors import ArchitectureError, FormatError
from ..weights import RawLayer, SourceInfo, Tensor, VGGWeights, assemble
from .safetensors_io import open_tensors

_CONV = re.compile(r"block(\d+)_conv(\d+)")
_HEAD = ("fc6", "fc7", "fc8")


def read(path: str) -> VGGWeights:
    """Canonical (convolutional-head) weights of a file written by `vggfcn convert`.

    Raises:
        FormatError: not a vggfcn file, or a format version/layout this version cannot read.
        ArchitectureError: missing or unexpected tensors (all of them listed).
    """
    tensors, meta = open_tensors(path)
    if meta.get("format") != FORMAT:
        raise FormatError(
            f"{path}: safetensors file without vggfcn metadata (format={meta.get('format')!r}); "
            "reading PyTorch state dicts is not supported yet"
        )
    if meta.get("format_version") != FORMAT_VERSION or meta.get("layout") != LAYOUT:
        raise FormatError(
            f"{path}: vggfcn format {meta.get('format_version')} layout {meta.get('layout')}; "
            f"this version reads format {FORMAT_VERSION} layout {LAYOUT}"
        )
    convs = sorted(
        {
            m.group(0): (int(m.group(1)), int(m.group(2))) for n in tensors if (m := _CONV.match(n))
        }.items(),
        key=lambda item: item[1],
    )
    layer_names = [name for name, _ in convs] + list(_HEAD)
    expected = {tensor_name(n, p) for n in layer_names for p in ("kernel", "bias")}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unexpected {', '.join(extra)}"] if extra else []
        )
        raise ArchitectureError(f"{path}: " + "; ".join(parts))
    raws = [_raw(tensors, n) for n in layer_names]
    softmax = {"yes": True, "no": False}.get(meta.get("source_softmax", ""))
    source = SourceInfo(path, "vggfcn-safetensors", f"v{FORMAT_VERSION}", softmax, "HWC")
    return assemble(raws[: len(convs)], raws[len(convs) :], source, convolutional_head=True)


def _raw(tensors: dict[str, Tensor], layer: str) -> RawLayer:
    return RawLayer(
        layer, tensors[tensor_name(layer, "kernel")], tensors[tensor_name(layer, "bias")]
    )
