"""FC -> convolution surgery: canonical classifier weights in, fully-convolutional weights out.

The whole conversion is a table of reshapes (arch.fcn_head_shapes): fc6 (49*C5, F6) with rows in
(H, W, C) order *is* a (7, 7, C5, F6) HWIO kernel element for element, and fc7/fc8 are 1x1
kernels. Because no element moves, the output streams straight from the input file.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import ArchitectureError
from .weights import Layer, Tensor, VGGWeights

FORMAT = "vggfcn-fcn"
FORMAT_VERSION = "1"
LAYOUT = "HWIO"


def to_fcn(weights: VGGWeights) -> VGGWeights:
    """The fully-convolutional twin of a classifier (lazy: no tensor is read).

    Example:
        >>> fcn = to_fcn(classifier)        # fcn.head[0].kernel.shape == (7, 7, 512, 4096)

    Raises:
        ArchitectureError: the network is already fully convolutional.
    """
    if weights.convolutional_head:
        raise ArchitectureError(f"{weights.source.path}: is already fully convolutional")
    head = tuple(
        Layer(layer.name, layer.kernel.reshape(shape), layer.bias, layer.file_name)
        for layer, shape in zip(weights.head, weights.arch.fcn_head_shapes(), strict=True)
    )
    return replace(weights, head=head, convolutional_head=True)


def tensor_name(layer: str, part: str) -> str:
    """Output naming scheme: `<layer>.<kernel|bias>`, e.g. `block1_conv1.kernel`, `fc6.bias`."""
    return f"{layer}.{part}"


def named_tensors(fcn: VGGWeights) -> dict[str, Tensor]:
    """Every output tensor under its output name."""
    out: dict[str, Tensor] = {}
    for layer in fcn.layers:
        out[tensor_name(layer.name, "kernel")] = layer.kernel
        out[tensor_name(layer.name, "bias")] = layer.bias
    return out


def metadata(fcn: VGGWeights, source_name: str, source_sha256: str) -> dict[str, str]:
    """`__metadata__` of a converted file: everything needed to trust and reuse it later.

    Only the source's base name is stored, never an absolute path, so the same input and options
    give the same bytes on any machine.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": fcn.arch.name,
        "layout": LAYOUT,
        "classes": str(fcn.arch.classes),
        "source_format": f"{fcn.source.format}/{fcn.source.generation}",
        "source_file": source_name,
        "source_sha256": source_sha256,
        "source_softmax": fcn.source.softmax_label,
    }
