"""FC -> convolution surgery: canonical classifier weights in, fully-convolutional weights out.

The whole conversion is a table of reshapes (arch.fcn_head_shapes): fc6 (49*C5, F6) with rows in
(H, W, C) order *is* a (7, 7, C5, F6) HWIO kernel element for element, and fc7/fc8 are 1x1
kernels. Because no element moves, the output streams straight from the input file.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import ArchitectureError
from .weights import Layer, Tensor, VGGWeights

FORMAT = "vggfcn-fcn"
FORMAT_VERSION = "1"


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
    norms = [layer.norm for layer in weights.trunk if layer.norm is not None]
    if not norms:
        return replace(weights, head=head, convolutional_head=True)
    trunk = tuple(fold_batch_norm(layer) for layer in weights.trunk)
    eps = ", ".join(sorted({f"{n.eps:g}" for n in norms}))
    source = replace(weights.source, batch_norm=f"folded (eps={eps})")
    return replace(weights, trunk=trunk, head=head, convolutional_head=True, source=source)


def fold_batch_norm(layer: Layer) -> Layer:
    """The convolution with its batch norm folded in (computed in float64, stored float32):

    w' = w * g / sqrt(var + eps),  b' = (b - mean) * g / sqrt(var + eps) + beta.
    """
    if layer.norm is None:
        return layer
    gamma, beta, mean, var = (t.read().astype(np.float64) for t in layer.norm.tensors())
    scale = gamma / np.sqrt(var + layer.norm.eps)
    kernel = (layer.kernel.read() * scale).astype(np.float32)  # HWIO: scale each output channel
    bias = ((layer.bias.read() - mean) * scale + beta).astype(np.float32)
    return Layer(
        layer.name,
        Tensor.wrap(kernel, layer.kernel.where),
        Tensor.wrap(bias, layer.bias.where),
        layer.file_name,
    )


#: Output layouts: HWIO (Keras, TensorFlow, JAX; our canonical form) or OIHW (`nn.Conv2d`).
LAYOUTS = ("hwio", "oihw")
HWIO_TO_OIHW = (3, 2, 0, 1)
#: Output name schemes: ours (`block1_conv1.kernel`, `fc6.bias`), or torch's, loadable with
#: `load_state_dict(strict=True)` into `features` (torchvision's Sequential) plus fc6/fc7/fc8.
NAME_SCHEMES = ("vggfcn", "torch")


def torch_feature_indices(plan: tuple[int, ...]) -> list[int]:
    """Indices of the convs in torchvision's `features` Sequential (each conv is followed by a
    ReLU, each block by a MaxPool): 0, 2, 5, 7, 10, ... for VGG16."""
    indices, i = [], 0
    for convs in plan:
        for _ in range(convs):
            indices.append(i)
            i += 2
        i += 1
    return indices


def tensor_names(fcn: VGGWeights, scheme: str) -> list[tuple[str, str]]:
    """(kernel name, bias name) of every layer, in model order, under a name scheme."""
    if scheme == "torch":
        trunk = [f"features.{i}" for i in torch_feature_indices(fcn.arch.plan)]
        return [(f"{n}.weight", f"{n}.bias") for n in [*trunk, *(h.name for h in fcn.head)]]
    return [(f"{layer.name}.kernel", f"{layer.name}.bias") for layer in fcn.layers]


def named_tensors(
    fcn: VGGWeights, layout: str = "hwio", scheme: str = "vggfcn"
) -> dict[str, Tensor]:
    """Every output tensor under its output name, kernels in the output layout (lazy)."""
    out: dict[str, Tensor] = {}
    for layer, (kernel_name, bias_name) in zip(fcn.layers, tensor_names(fcn, scheme), strict=True):
        kernel = layer.kernel
        if layout == "oihw":
            kernel = kernel.permute(kernel.shape, HWIO_TO_OIHW)
        out[kernel_name] = kernel
        out[bias_name] = layer.bias
    return out


def metadata(
    fcn: VGGWeights,
    source_name: str,
    source_sha256: str,
    layout: str = "hwio",
    scheme: str = "vggfcn",
    dtype: str = "float32",
) -> dict[str, str]:
    """`__metadata__` of a converted file: everything needed to trust and reuse it later.

    Only the source's base name is stored, never an absolute path, so the same input and options
    give the same bytes on any machine.
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": fcn.arch.name,
        "layout": layout.upper(),
        "names": scheme,
        "dtype": dtype,
        "classes": str(fcn.arch.classes),
        "source_format": f"{fcn.source.format}/{fcn.source.generation}",
        "source_file": source_name,
        "source_sha256": source_sha256,
        "source_softmax": fcn.source.softmax_label,
        "source_batch_norm": fcn.source.batch_norm,
    }
