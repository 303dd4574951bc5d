"""Reader for our own output: a vggfcn fully-convolutional safetensors file, any layout/names."""

from __future__ import annotations

import re

from ..convert import FORMAT, FORMAT_VERSION, LAYOUTS, NAME_SCHEMES
from ..errors import FormatError
from ..weights import RawLayer, SourceInfo, Tensor, VGGWeights, assemble, check_names
from .state_dict import OIHW_TO_HWIO

#: How each name scheme spells trunk layers (the sort key is model order) and the head.
_TRUNK = {
    "vggfcn": re.compile(r"(block(\d+)_conv(\d+))\.kernel"),
    "torch": re.compile(r"(features\.(\d+))\.weight"),
}
_PARTS = {"vggfcn": ("kernel", "bias"), "torch": ("weight", "bias")}
_HEAD = ("fc6", "fc7", "fc8")


def read(path: str, tensors: dict[str, Tensor], meta: dict[str, str]) -> VGGWeights:
    """Canonical (convolutional-head, HWIO) weights of a file written by `vggfcn convert`.

    Raises:
        FormatError: a format version, layout or name scheme this version cannot read.
        ArchitectureError: missing or unexpected tensors (all of them listed).
    """
    if meta.get("format") != FORMAT:
        raise FormatError(f"{path}: not a vggfcn file (format={meta.get('format')!r})")
    layout, scheme = meta.get("layout", "").lower(), meta.get("names", "vggfcn")
    if (
        meta.get("format_version") != FORMAT_VERSION
        or layout not in LAYOUTS
        or scheme not in NAME_SCHEMES
    ):
        raise FormatError(
            f"{path}: vggfcn format {meta.get('format_version')} layout {meta.get('layout')} "
            f"names {scheme}; this version reads format {FORMAT_VERSION}, layouts "
            f"{'/'.join(LAYOUTS)}, names {'/'.join(NAME_SCHEMES)}"
        )
    pattern, (k, b) = _TRUNK[scheme], _PARTS[scheme]
    found = sorted(
        (tuple(int(g) for g in m.groups()[1:]), m.group(1))
        for name in tensors
        if (m := pattern.fullmatch(name))
    )
    layer_names = [name for _, name in found] + list(_HEAD)
    expected = {f"{n}.{part}" for n in layer_names for part in (k, b)}
    check_names(path, set(tensors), expected)
    raws = []
    for name in layer_names:
        kernel = tensors[f"{name}.{k}"]
        if layout == "oihw" and len(kernel.shape) == 4:
            kernel = kernel.permute(kernel.shape, OIHW_TO_HWIO)
        raws.append(RawLayer(name, kernel, tensors[f"{name}.{b}"]))
    softmax = {"yes": True, "no": False}.get(meta.get("source_softmax", ""))
    precision = meta.get("dtype", "float32")
    source = SourceInfo(
        path,
        "vggfcn-safetensors",
        f"v{FORMAT_VERSION} {layout} {scheme} {precision}",
        softmax,
        "HWC",
        meta.get("source_batch_norm", "none"),
        precision,
    )
    return assemble(raws[: len(found)], raws[len(found) :], source, convolutional_head=True)
